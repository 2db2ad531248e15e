"""Where results go: the output tree, written atomically, local or (see `s3_store`) in a bucket.

Layout under the output root:

    <property_id>/...            one Elephant "Photo Metadata" folder per property (only data files)
    _runs/<run_id>.json          run summaries (per-category cost, skipped files, failures)
    _state/manifest.jsonl        append-only record of every answered batch (resume)
    _state/lock                  the pid of the run that owns this output dir

Run metadata lives outside the property folders so Elephant validation sees no unused data file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from image_analyzer.errors import ConfigError, OutputError

RUNS_DIR = "_runs"
STATE_DIR = "_state"
MANIFEST_NAME = f"{STATE_DIR}/manifest.jsonl"


class OutputStore(Protocol):
    """A tree of files addressed by relative POSIX paths. Every write replaces the file whole."""

    def describe(self) -> str: ...

    async def check(self) -> None:
        """Fail fast with a one-line error when the destination cannot be written at all."""
        ...

    async def write_bytes(self, relpath: str, data: bytes) -> None: ...

    async def read_bytes(self, relpath: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        ...

    async def delete(self, relpath: str) -> None:
        """Remove one file if it exists (stale output from an earlier run)."""
        ...

    async def list_files(self, relpath: str) -> list[str]:
        """Relative paths of the files directly under `relpath`."""
        ...

    async def aclose(self) -> None: ...


def safe_relpath(relpath: str) -> PurePosixPath:
    """Refuse anything that could escape the output root (absolute paths, `..`, empty parts)."""
    path = PurePosixPath(relpath)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise ConfigError(f"refusing unsafe output path {relpath!r}")
    return path


def atomic_write(target: Path, data: bytes) -> None:
    """Write `data` to `target` via a temp file in the same folder, fsync, then rename over it.

    A reader (or a rerun after `kill -9`) sees either the old file or the new one, never half of it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def describe_os_error(exc: OSError, where: Path | str) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"disk full while writing {where} ({exc.strerror}): free space and rerun (finished work is kept)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: permission denied or read-only file system"
    return f"cannot write {where}: {exc.strerror or exc}"


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    async def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"--output-dir {self.root} is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--output-dir: {describe_os_error(exc, self.root)}") from exc

    def _path(self, relpath: str) -> Path:
        return self.root.joinpath(*safe_relpath(relpath).parts)

    async def write_bytes(self, relpath: str, data: bytes) -> None:
        target = self._path(relpath)
        try:
            # In a worker thread: fsync on a slow or network disk must not hold up the event loop.
            await asyncio.to_thread(atomic_write, target, data)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, target)) from exc

    async def read_bytes(self, relpath: str) -> bytes | None:
        try:
            return self._path(relpath).read_bytes()
        except FileNotFoundError:
            return None

    async def delete(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(relpath).unlink()

    async def list_files(self, relpath: str) -> list[str]:
        folder = self._path(relpath)
        if not folder.is_dir():
            return []
        return sorted(f"{relpath}/{child.name}" for child in folder.iterdir() if child.is_file())

    async def aclose(self) -> None:
        return None
