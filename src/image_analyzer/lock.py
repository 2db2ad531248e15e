"""One run per output dir: a lock file holding the owner's pid; a lock left by a dead process is stale."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from image_analyzer.errors import OutputError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._break_if_stale():
                    continue
                raise OutputError(self._busy_message()) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()} {socket.gethostname()}\n")
            self._held = True
            return
        raise OutputError(self._busy_message())

    def _owner(self) -> tuple[int | None, str]:
        try:
            text = self.path.read_text().split()
        except OSError:
            return None, ""
        pid = int(text[0]) if text and text[0].isdigit() else None
        host = text[1] if len(text) > 1 else ""
        return pid, host

    def _break_if_stale(self) -> bool:
        pid, host = self._owner()
        same_host = host in ("", socket.gethostname())
        if pid is not None and same_host and _pid_alive(pid):
            return False
        if pid is not None and not same_host:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return True

    def _busy_message(self) -> str:
        pid, host = self._owner()
        owner = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        return (
            f"another run ({owner}) is using this output dir (lock {self.path}); "
            "wait for it to finish or use another --output-dir"
        )

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._held = False
