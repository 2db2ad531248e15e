"""Stopping a run on purpose: Ctrl-C, SIGTERM, the budget cap, or a fatal API error.

The first stop request lets in-flight requests finish (within a grace period) while no new request
starts; a second Ctrl-C stops at once. Everything answered is saved either way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


@dataclass(frozen=True, slots=True)
class StopRequest:
    reason: str
    exit_code: int
    immediate: bool = False


class StopController:
    def __init__(self) -> None:
        self._request: StopRequest | None = None
        self._stopping = asyncio.Event()
        self._immediate = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._request is not None

    @property
    def request(self) -> StopRequest | None:
        return self._request

    def stop(self, reason: str, exit_code: int = 1) -> None:
        """Stop starting new work; the first reason given is the one reported."""
        if self._request is None:
            self._request = StopRequest(reason, exit_code)
            self._stopping.set()

    def interrupt(self, reason: str, exit_code: int) -> None:
        """A signal: the first one asks for a graceful stop, the second for an immediate one."""
        if self._request is None:
            self.stop(reason, exit_code)
        else:
            self._immediate.set()

    async def wait_stopping(self) -> None:
        await self._stopping.wait()

    async def wait_immediate(self) -> None:
        await self._immediate.wait()
