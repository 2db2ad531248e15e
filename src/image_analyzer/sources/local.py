"""Photos in local folders laid out `<images dir>/<property_id>/<category>/<image>`.

Read-only. Exactly three levels are looked at; everything that does not fit the layout (stray files,
deeper folders, other extensions, symlinks leading out of the images dir, sockets...) is reported as a
`SkippedFile` with its reason rather than silently ignored. Hidden entries (names starting with `.`,
such as `.DS_Store` or macOS `._photo.jpg` resource forks) are not photos and are passed over quietly.
Directory scans and reads run in worker threads so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from image_analyzer.domain import (
    IMAGE_SUFFIXES,
    CategoryListing,
    ImageRef,
    ImageSource,
    PropertyListing,
    SkippedFile,
)
from image_analyzer.errors import SourceError

EntryKind = Literal["dir", "file", "skip"]


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    path: Path
    kind: EntryKind
    reason: str = ""
    size: int | None = None


@dataclass(slots=True)
class _Scan:
    entries: list[_Entry] = field(default_factory=list)
    error: str | None = None


def _display(path: Path) -> str:
    """The path as printable text, even when a name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "replace")


def _is_plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and not any(char in name for char in "/\\\0")


class LocalSource(ImageSource):
    """`ImageSource` over a local folder tree."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = Path(images_dir)
        self._root_skipped: tuple[SkippedFile, ...] = ()

    def describe(self) -> str:
        return f"local:{self.images_dir}"

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    async def property_ids(self) -> AsyncIterator[str]:
        ids, skipped = await asyncio.to_thread(self._scan_root)
        self._root_skipped = skipped
        for property_id in ids:
            yield property_id

    def root_skipped(self) -> tuple[SkippedFile, ...]:
        """What the last `property_ids` pass found directly under the images dir and left out."""
        return self._root_skipped

    async def list_property(self, property_id: str) -> PropertyListing:
        return await asyncio.to_thread(self._list_property, property_id)

    async def read(self, ref: ImageRef) -> bytes:
        try:
            return await asyncio.to_thread(Path(ref.locator).read_bytes)
        except OSError as exc:
            raise SourceError(f"cannot read {ref.locator}: {exc.strerror or exc}") from exc

    async def aclose(self) -> None:
        return None

    # --- synchronous work, run in threads --------------------------------------------------------------

    def _check(self) -> None:
        self._scan_root_folder()

    def _scan_root_folder(self) -> _Scan:
        path = self.images_dir
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise SourceError(f"images dir not found: {path} (set --images-dir)") from None
        except OSError as exc:
            raise SourceError(f"images dir unreadable: {path}: {exc.strerror or exc}") from exc
        if not stat.S_ISDIR(mode):
            raise SourceError(f"images dir is not a directory: {path} (set --images-dir)")
        scan = self._scan(path)
        if scan.error:
            raise SourceError(f"images dir unreadable: {path}: {scan.error}")
        return scan

    def _root_real(self) -> Path:
        return self.images_dir.resolve()

    def _scan_root(self) -> tuple[list[str], tuple[SkippedFile, ...]]:
        ids: list[str] = []
        skipped: list[SkippedFile] = []
        for entry in self._scan_root_folder().entries:
            if entry.kind == "dir":
                ids.append(entry.name)
            else:
                reason = entry.reason if entry.kind == "skip" else "not inside a property folder"
                skipped.append(SkippedFile(location=_display(entry.path), reason=reason))
        return ids, tuple(skipped)

    def _scan(self, folder: Path) -> _Scan:
        """The visible entries of `folder`, sorted by name and classified; hidden ones are left out."""
        root = self._root_real()
        try:
            with os.scandir(folder) as iterator:
                names = sorted(entry.name for entry in iterator if not entry.name.startswith("."))
        except OSError as exc:
            return _Scan(error=str(exc.strerror or exc))
        return _Scan(entries=[_classify(folder / name, name, root) for name in names])

    def _list_property(self, property_id: str) -> PropertyListing:
        folder = self.images_dir / property_id
        if not _is_plain_name(property_id) or not os.path.lexists(folder):
            return _empty(property_id, folder, f"no folder for property {property_id}")
        entry = _classify(folder, property_id, self._root_real())
        if entry.kind != "dir":
            return _empty(property_id, folder, entry.reason or f"no folder for property {property_id}")
        scan = self._scan(folder)
        if scan.error:
            return _empty(property_id, folder, f"unreadable folder: {scan.error}")
        skipped: list[SkippedFile] = []
        categories: list[CategoryListing] = []
        for item in scan.entries:
            if item.kind == "dir":
                listing = self._list_category(property_id, item, skipped)
                if listing is not None:
                    categories.append(listing)
            else:
                reason = item.reason if item.kind == "skip" else "not inside a category folder"
                skipped.append(SkippedFile(_display(item.path), reason, property_id))
        if not categories:
            skipped.append(SkippedFile(_display(folder), "no category folder with images", property_id))
        return PropertyListing(property_id, tuple(categories), tuple(skipped))

    def _list_category(
        self, property_id: str, category: _Entry, skipped: list[SkippedFile]
    ) -> CategoryListing | None:
        scan = self._scan(category.path)

        def skip(path: Path, reason: str) -> None:
            skipped.append(SkippedFile(_display(path), reason, property_id, category.name))

        if scan.error:
            skip(category.path, f"unreadable folder: {scan.error}")
            return None
        images: list[ImageRef] = []
        for item in scan.entries:
            if item.kind == "dir":
                skip(item.path, "nested folder ignored")
            elif item.kind == "skip":
                skip(item.path, item.reason)
            elif item.path.suffix.lower() not in IMAGE_SUFFIXES:
                skip(item.path, f"not an image extension ({item.path.suffix.lower() or 'none'})")
            elif not os.access(item.path, os.R_OK):
                skip(item.path, "unreadable file (permission denied)")
            else:
                images.append(ImageRef(property_id, category.name, item.name, str(item.path), item.size))
        if not images:
            reason = "no images in category folder" if scan.entries else "empty category folder"
            skip(category.path, reason)
            return None
        return CategoryListing(property_id, category.name, tuple(images))


def _empty(property_id: str, folder: Path, reason: str) -> PropertyListing:
    return PropertyListing(property_id, (), (SkippedFile(_display(folder), reason, property_id),))


def _classify(path: Path, name: str, root: Path) -> _Entry:
    """What `path` is, following a symlink only when it stays inside the images dir."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: symlink loop on Python < 3.13
            return _Entry(name, path, "skip", "broken symlink")
        if not target.is_relative_to(root):
            return _Entry(name, path, "skip", "symlink leads outside the images dir")
    try:
        info = path.stat()
    except FileNotFoundError:
        return _Entry(name, path, "skip", "disappeared while listing")
    except OSError as exc:
        return _Entry(name, path, "skip", f"unreadable: {exc.strerror or exc}")
    if stat.S_ISDIR(info.st_mode):
        return _Entry(name, path, "dir")
    if stat.S_ISREG(info.st_mode):
        return _Entry(name, path, "file", size=info.st_size)
    return _Entry(name, path, "skip", "not a regular file")
