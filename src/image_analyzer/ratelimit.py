"""Request and token budgets (RPM/TPM) shared by every worker.

One `RateLimiter` per run. Every model request calls `acquire(estimated_tokens)` before it is sent and
gets a `Reservation`; when the answer (or the failure) comes back the request calls `settle`,
`release_unused`, `observe_headers` and, for a 429, `pause_for`.

How it paces, and why:

* Limits in force are `--rpm`/`--tpm` when given, otherwise the server's `x-ratelimit-limit-*` headers
  (the latest value wins, so a limit that changes mid-run is followed).
* Starts are spaced evenly at `headroom` (95%) of the limit, as a leaky bucket (GCRA): 600 RPM is one
  start every ~0.105 s, never the minute's budget at once. Servers may enforce "per minute" in windows as
  short as a second, and a request arriving exactly at a window's edge counts in the next window, so
  the burst allowance is half of one second's headroom: however the starts fall, any one-second window
  holds at most `limit / 60` of them, and the other half of the headroom is margin for network jitter.
* Tokens are paced the same way. A request is admitted when the token bucket is (nearly) empty and then
  charged its estimate, so a request larger than the whole budget still goes, alone. `settle` trues the
  charge up to the usage the server reported.
* `x-ratelimit-remaining-*` with `x-ratelimit-reset-*` are read as "at most this many more until then";
  the requests we started after the one that carried them are subtracted. That is the safe reading for
  both fixed windows and OpenAI's refilling buckets: never more room than the server says is left.
* A 429 pauses every new start until its retry-after, then the rate ramps from `ramp_floor` of the limit
  back to the full limit over `ramp_seconds`, so the queue of waiting workers does not stampede.
* Before any limit is known (no flags, no headers yet) starts are capped at a probe rate: a burst of
  `probe_burst` (2), then `probe_rpm` (450 RPM, under the 500 RPM of OpenAI's first paid tier for its
  vision models). It lasts one response latency: the first response's headers replace it (a 429's
  arrive at once and carry them too). A server that answers without any rate-limit headers is not
  capped at all; concurrency bounds it, and its 429s still pause and ramp.

Waiting is first come, first served, and a task cancelled while it waits leaves nothing reserved.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from image_analyzer.errors import ConfigError

__all__ = ["RateLimiter", "Reservation", "parse_duration"]

# Seconds added after a server-reported window end: a start landing exactly on the edge counts in the
# window we are waiting out, not the next one.
WINDOW_EDGE_MARGIN = 0.05

# Waits shorter than this are float rounding, not pacing: sleeping them would spin on the same instant.
_NEGLIGIBLE_WAIT = 1e-6

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a reset header: Go-style durations ("1s", "6m0s", "120ms", "1m30.5s") or a bare number
    of seconds. None when absent or unreadable (an unreadable header is ignored, not fatal)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def _parse_count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(float(text.strip()))
    except ValueError:
        return None
    return value if value >= 0 else None


class Reservation:
    """One admitted request: when it started and the tokens currently charged for it."""

    __slots__ = ("_index", "_open", "_tokens", "_tokens_total_at_start", "estimated_tokens", "started_at")

    def __init__(
        self, *, index: int, started_at: float, estimated_tokens: int, tokens_total_at_start: int
    ) -> None:
        self._index = index
        self.started_at = started_at
        self.estimated_tokens = estimated_tokens
        self._tokens = estimated_tokens
        # The running total of estimated tokens started, including this request: what started after it
        # is the total now minus this.
        self._tokens_total_at_start = tokens_total_at_start
        self._open = True

    @property
    def tokens(self) -> int:
        """Tokens charged against the budget now (the estimate until settled)."""
        return self._tokens

    @property
    def open(self) -> bool:
        """False once settled or released: later calls for it change nothing."""
        return self._open

    def __repr__(self) -> str:
        return f"Reservation(#{self._index}, started_at={self.started_at:.3f}, tokens={self._tokens})"


class _Window:
    """The server's word on the current window: at most `left` more before `end`."""

    __slots__ = ("end", "left", "snapshot_index")

    def __init__(self, end: float, left: float, snapshot_index: int) -> None:
        self.end = end
        self.left = left
        self.snapshot_index = snapshot_index


class _Meter:
    """A leaky bucket in units (requests or tokens): starts fill it, time drains it at the rate in force."""

    __slots__ = ("level",)

    def __init__(self) -> None:
        self.level = 0.0

    def drain(self, units: float) -> None:
        self.level = max(0.0, self.level - units)


class RateLimiter:
    """Paces request starts under requests-per-minute and tokens-per-minute budgets (see module doc)."""

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        headroom: float = 0.95,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_pause: Callable[[float, str], None] | None = None,
        probe_rpm: int = 450,
        probe_burst: int = 2,
        ramp_seconds: float = 4.0,
        ramp_floor: float = 0.5,
    ) -> None:
        _check_positive("--rpm", rpm)
        _check_positive("--tpm", tpm)
        if not 0.0 < headroom <= 1.0:
            raise ConfigError(f"rate limit headroom must be in (0, 1], got {headroom}")
        if probe_rpm < 1 or probe_burst < 1 or ramp_seconds < 0 or not 0.0 < ramp_floor <= 1.0:
            raise ConfigError("rate limiter probe/ramp settings out of range")
        self._configured = (rpm, tpm)
        self._learnt: list[int | None] = [None, None]
        self._learnt_index = [-1, -1]
        self._headroom = headroom
        self._clock = clock
        self._sleep = sleep
        self._on_pause = on_pause
        self._probe_rate = probe_rpm / 60.0
        self._probe_burst = probe_burst
        self._ramp_seconds = ramp_seconds
        self._ramp_floor = ramp_floor

        self._requests = _Meter()
        self._tokens = _Meter()
        self._updated = clock()
        self._resume_at = -math.inf
        self._headers_seen = False
        self._windows: list[_Window | None] = [None, None]
        self._starts = 0
        self._tokens_started = 0
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()

    # --- public API ------------------------------------------------------------------------------------

    @property
    def limits(self) -> tuple[int | None, int | None]:
        """(rpm, tpm) in force: the configured value, else the last one the server advertised."""
        return (self._limit(0), self._limit(1))

    @property
    def paused_until(self) -> float | None:
        """Clock time new starts are held until, while a 429 pause lasts."""
        return self._resume_at if self._resume_at > self._clock() else None

    async def acquire(self, estimated_tokens: int) -> Reservation:
        """Wait until a request of about `estimated_tokens` may start, and reserve its budget."""
        cost = max(0, int(estimated_tokens))
        async with self._turn:
            while True:
                self._changed.clear()
                now = self._clock()
                delay = self._delay(now, cost)
                if delay <= _NEGLIGIBLE_WAIT:
                    return self._admit(now, cost)
                await self._sleep_unless_changed(delay)

    def settle(self, reservation: Reservation, actual_tokens: int | None) -> None:
        """True the reservation up to the tokens the server counted against the limit (None: keep the
        estimate). OpenAI counts the prompt plus `max_tokens` at admission, not the tokens generated."""
        if not reservation._open:
            return
        reservation._open = False
        if actual_tokens is None:
            return
        self._recharge(reservation, max(0, int(actual_tokens)))

    def release_unused(self, reservation: Reservation) -> None:
        """The request never reached the server: give its tokens back. The start slot stays spent
        (that moment has passed, and reusing it would put two starts back to back)."""
        if not reservation._open:
            return
        reservation._open = False
        self._recharge(reservation, 0)

    def observe_headers(self, headers: Mapping[str, str], reservation: Reservation | None = None) -> None:
        """Learn limits and the current window from a response's `x-ratelimit-*` headers.

        Pass the response's `reservation` when there is one: the server's remaining count was taken when
        that request arrived, so the starts since then are subtracted and a window that has already
        ended is ignored. Without it the headers are read as of now."""
        lowered = {key.lower(): value for key, value in headers.items()}
        now = self._clock()
        self._advance(now)
        self._headers_seen = True
        if reservation is None:
            snapshot_index, snapshot_time, started_after = self._starts, now, (0, 0)
        else:
            snapshot_index, snapshot_time = reservation._index, reservation.started_at
            started_after = (
                self._starts - reservation._index - 1,
                self._tokens_started - reservation._tokens_total_at_start,
            )
        for dimension, name in enumerate(("requests", "tokens")):
            limit = _parse_count(lowered.get(f"x-ratelimit-limit-{name}"))
            if limit and snapshot_index >= self._learnt_index[dimension]:
                self._learnt[dimension] = limit
                self._learnt_index[dimension] = snapshot_index
            remaining = _parse_count(lowered.get(f"x-ratelimit-remaining-{name}"))
            reset = parse_duration(lowered.get(f"x-ratelimit-reset-{name}"))
            if remaining is None or reset is None:
                continue
            end = snapshot_time + reset + WINDOW_EDGE_MARGIN
            current = self._windows[dimension]
            if end <= now or (current is not None and current.snapshot_index > snapshot_index):
                continue
            self._windows[dimension] = _Window(end, remaining - started_after[dimension], snapshot_index)
        self._changed.set()

    def pause_for(self, seconds: float, reason: str) -> None:
        """Hold every new start for `seconds` (a 429's retry-after), then ramp back up to full rate."""
        now = self._clock()
        self._advance(now)
        resume_at = now + max(0.0, seconds)
        if resume_at >= self._resume_at:
            self._resume_at = resume_at
            if self._on_pause is not None:
                self._on_pause(resume_at, reason)
        self._changed.set()

    # --- limits and rates ----------------------------------------------------------------------------

    def _limit(self, dimension: int) -> int | None:
        return self._configured[dimension] or self._learnt[dimension]

    def _probing(self, now: float) -> bool:
        """Request starts are capped at the probe rate: nothing known yet, or ramping after a 429."""
        if self._limit(0) is not None:
            return False
        return not self._headers_seen or now < self._resume_at + self._ramp_seconds

    def _request_rate(self, now: float) -> float | None:
        """Full-speed starts per second (before any ramp), or None for no cap."""
        limit = self._limit(0)
        if limit is not None:
            return limit * self._headroom / 60.0
        return self._probe_rate if self._probing(now) else None

    def _token_rate(self) -> float | None:
        limit = self._limit(1)
        return None if limit is None else limit * self._headroom / 60.0

    def _request_allowance(self, now: float) -> float:
        """Units the request bucket may hold and still admit: the small burst allowance."""
        limit = self._limit(0)
        if limit is None:
            return float(self._probe_burst - 1) if self._probing(now) else math.inf
        return (1.0 - self._headroom) * limit / 120.0

    def _token_allowance(self) -> float:
        limit = self._limit(1)
        return math.inf if limit is None else (1.0 - self._headroom) * limit / 120.0

    # --- the ramp after a pause: the rate is scaled by a factor rising linearly to 1 ---------------

    def _factor(self, at: float) -> float:
        if at < self._resume_at or self._ramp_seconds <= 0:
            return 1.0
        progress = (at - self._resume_at) / self._ramp_seconds
        return 1.0 if progress >= 1.0 else self._ramp_floor + (1.0 - self._ramp_floor) * progress

    def _full_rate_seconds(self, start: float, end: float) -> float:
        """Seconds of full-rate draining between two clock times (the ramp counts partly)."""
        if end <= start:
            return 0.0
        ramp_start, ramp_end = self._resume_at, self._resume_at + self._ramp_seconds
        low, high = max(start, ramp_start), min(end, ramp_end)
        lost = 0.0
        if high > low:
            lost = (high - low) * (1.0 - self._factor((low + high) / 2.0))
        return (end - start) - lost

    def _seconds_to_drain(self, now: float, full_rate_seconds: float) -> float:
        """Inverse of `_full_rate_seconds`: how long from `now` until that much draining is done."""
        needed, at = full_rate_seconds, now
        ramp_end = self._resume_at + self._ramp_seconds
        if at < self._resume_at:
            before = self._resume_at - at
            if needed <= before:
                return needed
            needed, at = needed - before, self._resume_at
        if at < ramp_end:
            start_factor = self._factor(at)
            slope = (1.0 - self._ramp_floor) / self._ramp_seconds
            span = ramp_end - at
            capacity = start_factor * span + slope * span * span / 2.0
            if needed <= capacity:
                if slope == 0.0:
                    return at + needed / start_factor - now
                root = (-start_factor + math.sqrt(start_factor**2 + 2.0 * slope * needed)) / slope
                return at + root - now
            needed, at = needed - capacity, ramp_end
        return at + needed - now

    def _advance(self, now: float) -> None:
        """Drain both buckets up to `now` at the rates in force until now."""
        elapsed = self._full_rate_seconds(self._updated, now)
        request_rate, token_rate = self._request_rate(now), self._token_rate()
        if request_rate is None:
            self._requests.level = 0.0
        else:
            self._requests.drain(request_rate * elapsed)
        if token_rate is None:
            self._tokens.level = 0.0
        else:
            self._tokens.drain(token_rate * elapsed)
        self._updated = max(self._updated, now)

    # --- admission -----------------------------------------------------------------------------------

    def _delay(self, now: float, cost: int) -> float:
        """Seconds until a request of `cost` tokens may start (<= 0: now)."""
        self._advance(now)
        waits = [self._resume_at - now]
        request_rate = self._request_rate(now)
        excess = self._requests.level - self._request_allowance(now)
        if request_rate is not None and excess > 0:
            waits.append(self._seconds_to_drain(now, excess / request_rate))
        token_rate = self._token_rate()
        excess = self._tokens.level - self._token_allowance()
        if token_rate is not None and excess > 0:
            waits.append(self._seconds_to_drain(now, excess / token_rate))
        for dimension, needed in ((0, 1), (1, cost)):
            window = self._windows[dimension]
            if window is not None and now < window.end and window.left < needed:
                waits.append(window.end - now)
        return max(waits)

    def _admit(self, now: float, cost: int) -> Reservation:
        if self._request_rate(now) is not None:
            self._requests.level += 1.0
        if self._token_rate() is not None:
            self._tokens.level += cost
        for dimension, used in ((0, 1), (1, cost)):
            window = self._windows[dimension]
            if window is not None and now < window.end:
                window.left -= used
        self._starts += 1
        self._tokens_started += cost
        return Reservation(
            index=self._starts - 1,
            started_at=now,
            estimated_tokens=cost,
            tokens_total_at_start=self._tokens_started,
        )

    def _recharge(self, reservation: Reservation, tokens: int) -> None:
        difference = tokens - reservation._tokens
        reservation._tokens = tokens
        if difference == 0 or self._token_rate() is None:
            return
        self._advance(self._clock())
        self._tokens.level = max(0.0, self._tokens.level + difference)
        self._changed.set()

    async def _sleep_unless_changed(self, delay: float) -> None:
        """Sleep for `delay`, waking early when limits, pauses or budgets change."""
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()


def _check_positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be a positive whole number, got {value}")
