"""Folders full of junk, end to end: every bad file is a named skip, every bad input file a one-line
error, never a traceback or a hang, and the exit code says which it was."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.fakeopenai import FakeOpenAIServer
from tests.helpers import invoke, jpeg_bytes, make_tree, property_json_files, run_installed
from tests.test_reliability import KEY, assert_every_json_parses, batch_requests, one_line_error, validate_ok

SEED_HEADER = "parcel_id,Address,method,headers,url,multiValueQueryString,body,json,source_identifier,County"


def run_args(server: FakeOpenAIServer, *extra: str) -> list[str]:
    return ["run", "--all-properties", "--base-url", server.base_url, "--api-key", KEY, "--json", *extra]


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with a few bytes of data: decoding it
    would allocate gigabytes, so it must be refused from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def png_bytes(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def skipped_reasons(summary: dict[str, object]) -> dict[str, str]:
    return {Path(s["location"]).name: s["reason"] for s in summary["skipped_images"]}  # type: ignore[attr-defined]


def junk_kitchen(root: Path) -> Path:
    """One good photo among every kind of bad file."""
    make_tree(root / "images", {"p1": {"kitchen": 1}})
    kitchen = root / "images" / "p1" / "kitchen"
    (kitchen / "corrupt.jpg").write_bytes(bytes(range(256)) * 8)
    (kitchen / "truncated.jpg").write_bytes(jpeg_bytes(5, (256, 256))[:300])
    (kitchen / "zero.jpg").write_bytes(b"")
    (kitchen / "photo.txt").write_bytes(jpeg_bytes(6))
    (kitchen / "doc.pdf").write_bytes(b"%PDF-1.4 not a photo")
    (kitchen / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (kitchen / "really_a_png.jpg").write_bytes(png_bytes())
    outside = root / "private.jpg"
    outside.write_bytes(jpeg_bytes(7))
    (kitchen / "escape.jpg").symlink_to(outside)
    return kitchen


JUNK_REASONS = {
    "corrupt.jpg": "not an image",
    "truncated.jpg": "truncated or corrupt",
    "zero.jpg": "zero-byte",
    "photo.txt": "not an image extension (.txt)",
    "doc.pdf": "not an image extension (.pdf)",
    "bomb.png": "decompression bomb",
    "escape.jpg": "symlink leads outside the images dir",
}


def test_every_kind_of_bad_file_is_a_named_skip_and_the_good_ones_go_through(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    junk_kitchen(workdir)
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    reasons = skipped_reasons(result.summary())
    assert set(reasons) == set(JUNK_REASONS)
    for name, words in JUNK_REASONS.items():
        assert words in reasons[name], (name, reasons[name])
    (request,) = batch_requests(fake_openai)
    assert sorted(f or "?" for f in request.image_formats) == ["JPEG", "PNG"], (
        "a PNG named .jpg is sent as what it is"
    )
    assert "--max-image-pixels" in reasons["bomb.png"]
    validate_ok()


def test_the_installed_command_meets_the_junk_without_a_traceback(
    tmp_path: Path, fake_openai: FakeOpenAIServer
) -> None:
    junk_kitchen(tmp_path)
    proc = run_installed(
        ["run", "--all-properties", "--base-url", fake_openai.base_url, "--no-dashboard"],
        cwd=tmp_path,
        env={"OPENAI_API_KEY": KEY},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for name in JUNK_REASONS:
        assert f"Skipped images/p1/kitchen/{name}" in proc.stdout


def test_the_pixel_cap_is_configurable(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    (workdir / "images" / "p1" / "kitchen" / "big.png").write_bytes(png_bytes((300, 200)))
    result = invoke(run_args(fake_openai, "--max-image-pixels", "10000"))
    assert result.exit_code == 0, result.stderr
    assert "decompression bomb" in skipped_reasons(result.summary())["big.png"]
    assert [r.image_count for r in batch_requests(fake_openai)] == [1]


def test_special_files_and_odd_names_neither_hang_nor_break_the_output(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    kitchen = workdir / "images" / "prop 7 ü" / "living room ✓"
    kitchen.mkdir(parents=True)
    (kitchen / "Küche 1 (copy).jpg").write_bytes(jpeg_bytes(1))
    (kitchen / "new\nline.jpg").write_bytes(jpeg_bytes(2))
    with open(os.fsencode(kitchen) + b"/caf\xe9.jpg", "wb") as handle:  # not UTF-8
        handle.write(jpeg_bytes(3))
    os.mkfifo(kitchen / "pipe.jpg")  # reading it would block forever
    (kitchen / "folder.jpg").mkdir()
    (kitchen / "loop.jpg").symlink_to("loop.jpg")
    (kitchen / "dangling.jpg").symlink_to("missing.jpg")
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    reasons = skipped_reasons(result.summary())
    assert reasons == {
        "pipe.jpg": "not a regular file",
        "folder.jpg": "nested folder ignored",
        "loop.jpg": "broken symlink",
        "dangling.jpg": "broken symlink",
    }
    (request,) = batch_requests(fake_openai)
    assert request.image_count == 3
    assert_every_json_parses(workdir / "output")
    (folder,) = [p for p in (workdir / "output").iterdir() if not p.name.startswith("_")]
    files = property_json_files(folder)
    assert sum(1 for name in files if name.startswith("file_")) == 3
    validate_ok()


def test_empty_folders_are_named_skips(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    (workdir / "images" / "p1" / "attic").mkdir()
    (workdir / "images" / "p2").mkdir()
    (workdir / "images" / "p2" / "notes.txt").write_text("no categories here")
    (workdir / "images" / "p3" / "garage").mkdir(parents=True)
    (workdir / "images" / "stray.jpg").write_bytes(jpeg_bytes(4))
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    skipped = {s["location"]: s["reason"] for s in result.summary()["skipped_images"]}
    assert skipped == {
        "images/p1/attic": "empty category folder",
        "images/p2/notes.txt": "not inside a category folder",
        "images/p2": "no category folder with images",
        "images/p3/garage": "empty category folder",
        "images/p3": "no category folder with images",
        "images/stray.jpg": "not inside a property folder",
    }
    assert len(batch_requests(fake_openai)) == 1
    assert sorted(p.name for p in (workdir / "output").iterdir()) == ["_runs", "_state", "p1"]


# --- seed.csv ---------------------------------------------------------------------------------------------


def test_a_seed_with_bom_crlf_and_a_duplicate_id_is_read_and_the_duplicate_named(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"0012": {"kitchen": 1}})
    rows = [
        SEED_HEADER,
        "0012,1 Main St,GET,,https://county.example.com/first,,,,SRC-FIRST,Palm",
        "0012,1 Main St,GET,,https://county.example.com/second,,,,SRC-SECOND,Palm",
    ]
    (workdir / "seed.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    assert "seed.csv line 3: duplicate parcel_id 0012 ignored (first on line 2)" in result.stderr
    layouts = [
        v for k, v in property_json_files(workdir / "output" / "0012").items() if k.startswith("layout_")
    ]
    assert layouts and all(v["request_identifier"] == "SRC-FIRST" for v in layouts)


def test_a_seeded_id_without_a_folder_is_named(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    (workdir / "seed.csv").write_text(
        f"{SEED_HEADER}\np1,,GET,,https://a.example.com/p1,,,,,\nghost,,GET,,https://a.example.com/g,,,,,\n"
    )
    result = invoke(run_args(fake_openai, "--only-seeded"))
    assert result.exit_code == 0, result.stderr
    assert "seed.csv lists ghost but it has no folder" in result.stderr
    assert len(batch_requests(fake_openai)) == 1


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"parcel,url\n1,https://x.example.com\n", "missing column(s) parcel_id, method"),
        (b"parcel_id,method,url\n\xff\xfe,GET,https://x.example.com\n", "not UTF-8"),
        (b"parcel_id,method,url\np1,FETCH,https://x.example.com\n", "line 2, column method"),
        (b"", "empty file"),
    ],
    ids=["missing columns", "not utf-8", "bad method", "empty"],
)
def test_a_broken_seed_is_one_line_exit_2_and_sends_nothing(
    content: bytes, words: str, workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    (workdir / "seed.csv").write_bytes(content)
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "seed.csv" in line and words in line
    assert fake_openai.requests == []
    assert not (workdir / "output").exists()


# --- known gap --------------------------------------------------------------------------------------------


def test_two_property_ids_never_share_an_output_folder(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"a b": {"kitchen": 1}, "a_b": {"bedroom": 1}})
    assert invoke(run_args(fake_openai)).exit_code == 0
    folders = [p for p in (workdir / "output").iterdir() if not p.name.startswith("_")]
    assert len(folders) == 2
