"""One run per output dir: an OS-level lock on a file that also holds the owner's pid for messages.

The lock is `flock` on `<state>/lock`, so the kernel drops it the moment its process dies (even by
`kill -9`): a lock left behind by a dead run is stale by construction, and a recycled pid can never
make it look alive. The pid and host written inside only name the owner in the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from image_analyzer.errors import OutputError
from image_analyzer.store import describe_os_error


class RunLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._locked_fd()
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path)) from exc
        if fd is None:
            raise OutputError(self._busy_message())
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def _locked_fd(self) -> int | None:
        """An fd holding the lock on the file currently at `path`, or None when another process has it."""
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            # The previous owner may have unlinked the file between our open and our flock: then we
            # locked an orphan inode and must try again on the file now at `path`.
            if _same_file(fd, self.path):
                return fd
            os.close(fd)

    def _owner(self) -> str:
        try:
            text = self.path.read_text().split()
        except OSError:
            return "another process"
        pid = text[0] if text and text[0].isdigit() else None
        host = text[1] if len(text) > 1 else ""
        if pid is None:
            return "another process"
        return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")

    def _busy_message(self) -> str:
        return (
            f"another run ({self._owner()}) is using this output dir (lock {self.path}); "
            "wait for it to finish or use another --output-dir"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so nobody can lock this inode after we let go.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
