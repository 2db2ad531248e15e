from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from image_analyzer.domain import ImageRef, ImageSource, SkippedFile
from image_analyzer.errors import SourceError
from image_analyzer.sources.local import LocalSource


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reasons(skipped: tuple[SkippedFile, ...], root: Path) -> dict[str, str]:
    return {str(Path(s.location).relative_to(root)): s.reason for s in skipped}


async def all_ids(source: LocalSource) -> list[str]:
    return [property_id async for property_id in source.property_ids()]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    touch(root / "200" / "kitchen" / "b.JPG", b"bb")
    touch(root / "200" / "kitchen" / "a.png", b"a")
    touch(root / "200" / "kitchen" / "notes.txt")
    touch(root / "200" / "kitchen" / "README")
    touch(root / "200" / "kitchen" / ".DS_Store")
    touch(root / "200" / "kitchen" / "._a.png")
    touch(root / "200" / "kitchen" / "deeper" / "c.jpg")
    touch(root / "200" / "bedroom" / "x.webp")
    touch(root / "200" / "cover.jpg")
    (root / "200" / "garage").mkdir()
    touch(root / "200" / "attic" / "plan.pdf")
    touch(root / "0100" / "exterior" / "front.gif")
    touch(root / "0100" / "exterior" / "side.jpeg")
    (root / "0300").mkdir()
    (root / ".cache" / "kitchen").mkdir(parents=True)
    touch(root / "stray.jpg")
    return root


def test_local_source_satisfies_the_protocol(tree: Path) -> None:
    source: ImageSource = LocalSource(tree)
    assert source.describe() == f"local:{tree}"


@pytest.mark.anyio
async def test_property_ids_are_sorted_folders_and_root_files_are_skipped(tree: Path) -> None:
    source = LocalSource(tree)
    await source.check()
    assert await all_ids(source) == ["0100", "0300", "200"]
    assert reasons(source.root_skipped(), tree) == {"stray.jpg": "not inside a property folder"}


@pytest.mark.anyio
async def test_list_property_sorts_and_reports_every_skip(tree: Path) -> None:
    listing = await LocalSource(tree).list_property("200")
    assert [c.category for c in listing.categories] == ["bedroom", "kitchen"]
    kitchen = listing.categories[1]
    assert [i.name for i in kitchen.images] == ["a.png", "b.JPG"]
    assert kitchen.images[1] == ImageRef(
        "200", "kitchen", "b.JPG", str(tree / "200" / "kitchen" / "b.JPG"), 2
    )
    assert listing.image_count == 3
    assert reasons(listing.skipped, tree) == {
        "200/attic/plan.pdf": "not an image extension (.pdf)",
        "200/attic": "no images in category folder",
        "200/cover.jpg": "not inside a category folder",
        "200/garage": "empty category folder",
        "200/kitchen/README": "not an image extension (none)",
        "200/kitchen/deeper": "nested folder ignored",
        "200/kitchen/notes.txt": "not an image extension (.txt)",
    }
    attic = next(s for s in listing.skipped if s.location.endswith("plan.pdf"))
    assert (attic.property_id, attic.category) == ("200", "attic")


@pytest.mark.anyio
async def test_property_without_categories_or_folder(tree: Path) -> None:
    source = LocalSource(tree)
    empty = await source.list_property("0300")
    assert empty.categories == ()
    assert reasons(empty.skipped, tree) == {"0300": "no category folder with images"}
    for missing in ("9999", "..", "200/kitchen", ""):
        listing = await source.list_property(missing)
        assert listing.categories == ()
        assert [s.reason for s in listing.skipped] == [f"no folder for property {missing}"]


@pytest.mark.anyio
async def test_symlinks_inside_are_followed_and_escapes_are_skipped(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "secret.jpg")
    kitchen = tree / "200" / "kitchen"
    (kitchen / "escape.jpg").symlink_to(outside / "secret.jpg")
    (kitchen / "alias.jpg").symlink_to(kitchen / "a.png")
    (kitchen / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tree / "200" / "outside-room").symlink_to(outside, target_is_directory=True)
    (tree / "400").symlink_to(outside, target_is_directory=True)
    (tree / "500").symlink_to(tree / "0100", target_is_directory=True)
    source = LocalSource(tree)
    assert await all_ids(source) == ["0100", "0300", "200", "500"]
    assert reasons(source.root_skipped(), tree)["400"] == "symlink leads outside the images dir"
    listing = await source.list_property("200")
    kitchen_images = [i.name for i in listing.categories[1].images]
    assert kitchen_images == ["a.png", "alias.jpg", "b.JPG"]
    found = reasons(listing.skipped, tree)
    assert found["200/kitchen/escape.jpg"] == "symlink leads outside the images dir"
    assert found["200/kitchen/dangling.jpg"] == "broken symlink"
    assert found["200/outside-room"] == "symlink leads outside the images dir"
    escaped = await source.list_property("400")
    assert [s.reason for s in escaped.skipped] == ["symlink leads outside the images dir"]
    assert (await source.list_property("500")).image_count == 2


@pytest.mark.anyio
async def test_sockets_are_not_regular_files(tmp_path: Path) -> None:
    root = tmp_path / "i"
    touch(root / "p" / "kitchen" / "ok.jpg")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(root / "p" / "kitchen" / "pipe.jpg"))
        listing = await LocalSource(root).list_property("p")
    finally:
        server.close()
    assert reasons(listing.skipped, root) == {"p/kitchen/pipe.jpg": "not a regular file"}
    assert [i.name for i in listing.categories[0].images] == ["ok.jpg"]


@pytest.mark.anyio
async def test_unicode_and_spaces_in_names(tmp_path: Path) -> None:
    root = tmp_path / "fotos mit ümlaut"
    touch(root / "Haus 7 ü" / "Küche & Bad" / "Bild 1 – Süd.JPEG", b"data")
    source = LocalSource(root)
    assert await all_ids(source) == ["Haus 7 ü"]
    listing = await source.list_property("Haus 7 ü")
    (category,) = listing.categories
    assert category.category == "Küche & Bad"
    assert await source.read(category.images[0]) == b"data"


@pytest.mark.anyio
async def test_read_returns_bytes_and_errors_name_the_file(tree: Path) -> None:
    source = LocalSource(tree)
    listing = await source.list_property("0100")
    front = listing.categories[0].images[0]
    assert await source.read(front) == b"x"
    os.remove(front.locator)
    with pytest.raises(SourceError, match=r"cannot read .*front\.gif: No such file"):
        await source.read(front)
    await source.aclose()


@pytest.mark.anyio
async def test_check_reports_missing_and_non_directory_images_dir(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"images dir not found: .*nope \(set --images-dir\)$"):
        await LocalSource(tmp_path / "nope").check()
    file_path = touch(tmp_path / "file")
    with pytest.raises(SourceError, match="images dir is not a directory"):
        await LocalSource(file_path).check()
    with pytest.raises(SourceError, match="images dir not found"):
        await all_ids(LocalSource(tmp_path / "nope"))


@pytest.mark.anyio
@pytest.mark.skipif(os.geteuid() == 0, reason="root can read everything")
async def test_unreadable_files_and_folders(tree: Path) -> None:
    kitchen = tree / "200" / "kitchen"
    (kitchen / "a.png").chmod(0)
    (tree / "200" / "bedroom").chmod(0)
    try:
        listing = await LocalSource(tree).list_property("200")
        tree.chmod(0)
        with pytest.raises(SourceError, match="images dir unreadable"):
            await LocalSource(tree).check()
    finally:
        tree.chmod(0o755)
        (tree / "200" / "bedroom").chmod(0o755)
        (kitchen / "a.png").chmod(0o644)
    found = reasons(listing.skipped, tree)
    assert found["200/kitchen/a.png"] == "unreadable file (permission denied)"
    assert found["200/bedroom"].startswith("unreadable folder: ")


def test_light_modules_import_nothing_heavy() -> None:
    code = (
        "import sys, image_analyzer.sources, image_analyzer.sources.local, image_analyzer.seed, "
        "image_analyzer.naming, image_analyzer.images\n"
        "heavy = {'PIL', 'aioboto3', 'botocore', 'jsonschema', 'openai'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.anyio
async def test_shipped_examples_list_cleanly() -> None:
    examples = Path(__file__).resolve().parents[1] / "examples" / "images"
    source = LocalSource(examples)
    assert await all_ids(source) == ["0512345678", "30434108090030050"]
    assert source.root_skipped() == ()
    listing = await source.list_property("30434108090030050")
    assert [c.category for c in listing.categories] == ["bedroom", "exterior", "kitchen"]
    assert listing.skipped == ()
    assert listing.image_count == 5
