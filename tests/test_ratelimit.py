"""The shared rate limiter, run on virtual time: the clock only moves when every task is waiting.

`VirtualTime` is a tiny scheduler: its `sleep` parks the caller on a timer heap and its driver jumps
the clock to the earliest timer once the event loop has nothing else to run. So a 10-second pacing
scenario runs in milliseconds, the same way every time, and the assertions are about virtual times.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_analyzer.errors import ConfigError
from image_analyzer.ratelimit import RateLimiter, Reservation, parse_duration

T = TypeVar("T")


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._order), future))
        await future

    async def sleep_until(self, when: float) -> None:
        await self.sleep(when - self.now)

    async def run(self, main: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(main)
        while True:
            await _until_idle()
            if task.done():
                return task.result()
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)
            if not self._timers:
                task.cancel()
                raise AssertionError(f"deadlock at t={self.now}: every task waits and no timer is set")
            self.now = max(self.now, self._timers[0][0])
            while self._timers and self._timers[0][0] <= self.now:
                future = heapq.heappop(self._timers)[2]
                if not future.done():
                    future.set_result(None)


async def _until_idle() -> None:
    """Yield until no callback is ready to run: every other task is parked on a future."""
    ready = asyncio.get_running_loop()._ready  # type: ignore[attr-defined]
    for _ in range(100_000):
        await asyncio.sleep(0)
        if not ready:
            return
    raise AssertionError("the event loop never went idle")


def make_limiter(vt: VirtualTime, **kwargs: Any) -> RateLimiter:
    return RateLimiter(clock=vt.clock, sleep=vt.sleep, **kwargs)


async def run_workers(
    vt: VirtualTime,
    limiter: RateLimiter,
    *,
    requests: int,
    workers: int,
    tokens: int = 1000,
    latency: float = 1.0,
    on_start: Callable[[int, Reservation], Awaitable[None]] | None = None,
) -> list[float]:
    """`workers` tasks share `requests` jobs: acquire, 'send' for `latency`, settle. Returns start times."""
    jobs = iter(range(requests))
    starts: list[float] = []

    async def worker() -> None:
        for job in jobs:
            reservation = await limiter.acquire(tokens)
            starts.append(vt.now)
            if on_start is not None:
                await on_start(job, reservation)
            await vt.sleep(latency)
            limiter.settle(reservation, tokens)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return starts


def most_in_any_window(starts: list[float], width: float) -> int:
    """Largest number of starts inside any half-open window [s, s + width)."""
    ordered = sorted(starts)
    best = 0
    for i, first in enumerate(ordered):
        inside = sum(1 for s in ordered[i:] if s < first + width - 1e-9)
        best = max(best, inside)
    return best


def gaps(starts: list[float]) -> list[float]:
    ordered = sorted(starts)
    return [b - a for a, b in itertools.pairwise(ordered)]


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1m30.5s", 90.5),
        ("0.5s", 0.5),
        ("2h0m0s", 7200.0),
        ("17", 17.0),
        ("0.25", 0.25),
        ("0s", 0.0),
        ("250us", 0.00025),
    ],
)
def test_parse_duration_reads_reset_headers(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s", "1s junk", "-3", "nan"])
def test_parse_duration_rejects_what_it_cannot_read(text: str | None) -> None:
    assert parse_duration(text) is None


@given(minutes=st.integers(min_value=0, max_value=600), millis=st.integers(min_value=0, max_value=59_999))
def test_parse_duration_round_trips_go_durations(minutes: int, millis: int) -> None:
    seconds = f"{millis // 1000}.{millis % 1000:03d}".rstrip("0").rstrip(".")
    text = f"{minutes}m{seconds}s" if minutes else f"{seconds}s"
    assert parse_duration(text) == pytest.approx(minutes * 60 + millis / 1000)


def test_bad_configuration_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--rpm"):
        RateLimiter(rpm=0)
    with pytest.raises(ConfigError, match="--tpm"):
        RateLimiter(tpm=-5)
    with pytest.raises(ConfigError, match="headroom"):
        RateLimiter(headroom=1.5)


# --- request pacing ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_600_rpm_is_spaced_evenly_not_fired_at_once() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, rpm=600)
    starts = await vt.run(run_workers(vt, limiter, requests=100, workers=32))

    assert len(starts) == 100
    steady = gaps(starts)[1:]  # the first gap may use the small burst allowance
    assert min(steady) >= 0.1
    assert min(gaps(starts)) >= 0.075
    # A server counting 10 per 1-second window never sees 11, even with 20 ms of arrival jitter.
    assert most_in_any_window(starts, 1.0) <= 10
    assert most_in_any_window(starts, 1.02) <= 10
    span = max(starts) - min(starts)
    ideal = 99 * 60 / 600
    assert ideal <= span <= 1.2 * ideal
    assert limiter.limits == (600, None)


@settings(max_examples=25, deadline=None)
@given(
    per_second=st.integers(min_value=1, max_value=100),
    headroom=st.floats(min_value=0.8, max_value=0.99),
    workers=st.integers(min_value=1, max_value=40),
)
def test_no_one_second_window_gets_more_than_its_share(
    per_second: int, headroom: float, workers: int
) -> None:
    rpm = per_second * 60  # as servers quantise limits: 600 RPM enforced as 10 per second

    async def scenario() -> list[float]:
        vt = VirtualTime()
        limiter = make_limiter(vt, rpm=rpm, headroom=headroom)
        return await vt.run(run_workers(vt, limiter, requests=60, workers=workers, latency=0.3))

    starts = asyncio.run(scenario())
    assert most_in_any_window(starts, 1.0) <= per_second
    # ... and the pace over the whole run stays under the limit.
    assert (len(starts) - 1) / (max(starts) - min(starts)) <= per_second


@pytest.mark.anyio
async def test_a_pause_holds_every_worker_then_ramps_back_up() -> None:
    vt = VirtualTime()
    pauses: list[tuple[float, str]] = []
    limiter = make_limiter(
        vt, rpm=600, on_pause=lambda at, why: pauses.append((at, why)), ramp_seconds=4.0, ramp_floor=0.5
    )

    async def a_429_at_three_seconds() -> None:
        await vt.sleep_until(3.0)
        limiter.pause_for(2.0, "429 from the server")
        assert limiter.paused_until == 5.0

    async def scenario() -> list[float]:
        _, starts = await asyncio.gather(
            a_429_at_three_seconds(), run_workers(vt, limiter, requests=150, workers=32, latency=0.5)
        )
        return starts

    starts = await vt.run(scenario())

    assert pauses == [(5.0, "429 from the server")]
    assert not [s for s in starts if 3.0 < s < 5.0]
    assert min(s for s in starts if s > 3.0) == pytest.approx(5.0)
    just_after = [s for s in starts if 5.0 <= s < 6.0]
    after_ramp = [s for s in starts if 9.0 <= s < 10.0]
    assert len(just_after) < len(after_ramp)
    assert len(just_after) <= 7  # the ramp starts at half rate: about 5-6 in its first second
    assert min(gaps(after_ramp)) >= 0.1
    assert len(after_ramp) >= 9


@pytest.mark.anyio
async def test_a_longer_pause_wins_and_a_shorter_one_does_not_cut_it() -> None:
    vt = VirtualTime()
    pauses: list[tuple[float, str]] = []
    limiter = make_limiter(vt, rpm=600, on_pause=lambda at, why: pauses.append((at, why)))

    async def scenario() -> float:
        limiter.pause_for(3.0, "first")
        limiter.pause_for(1.0, "second, shorter")
        await limiter.acquire(1)
        return vt.now

    assert await vt.run(scenario()) == pytest.approx(3.0)
    assert pauses == [(3.0, "first")]


# --- learning from headers ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_limits_are_learnt_from_headers_and_follow_a_change() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt)
    assert limiter.limits == (None, None)

    async def learn(job: int, reservation: Reservation) -> None:
        limit = "600" if vt.now < 5.0 else "300"
        headers = {"X-RateLimit-Limit-Requests": limit, "x-ratelimit-limit-tokens": "150000"}
        limiter.observe_headers(headers, reservation)

    starts = await vt.run(
        run_workers(vt, limiter, requests=120, workers=32, tokens=100, latency=0.0, on_start=learn)
    )

    assert limiter.limits == (300, 150000)
    early = [s for s in starts if 1.0 <= s < 4.0]
    late = [s for s in starts if s >= 6.0]
    assert min(gaps(early)) == pytest.approx(60 / 600 / 0.95, rel=0.01)
    assert min(gaps(late)) == pytest.approx(60 / 300 / 0.95, rel=0.01)


@pytest.mark.anyio
async def test_configured_limits_win_over_advertised_ones() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, rpm=600, tpm=90000)
    limiter.observe_headers({"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "1000"})
    assert limiter.limits == (600, 90000)


@pytest.mark.anyio
async def test_an_older_response_does_not_undo_a_newer_limit() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt)

    async def scenario() -> None:
        first = await limiter.acquire(1)
        second = await limiter.acquire(1)
        limiter.observe_headers({"x-ratelimit-limit-requests": "300"}, second)
        limiter.observe_headers({"x-ratelimit-limit-requests": "600"}, first)

    await vt.run(scenario())
    assert limiter.limits == (300, None)


@pytest.mark.anyio
async def test_nothing_remaining_means_no_start_before_the_reset() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, rpm=6000)

    async def scenario() -> float:
        await vt.sleep(1.0)
        limiter.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
        await limiter.acquire(1)
        return vt.now

    started = await vt.run(scenario())
    assert started >= 3.0
    assert started < 3.1


@pytest.mark.anyio
async def test_remaining_tokens_below_the_estimate_wait_for_the_reset() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt)

    async def scenario() -> tuple[float, float]:
        limiter.observe_headers(
            {"x-ratelimit-remaining-tokens": "1500", "x-ratelimit-reset-tokens": "1m30.5s"}
        )
        await limiter.acquire(1000)
        small = vt.now
        await limiter.acquire(1000)
        return small, vt.now

    small, large = await vt.run(scenario())
    assert small == 0.0
    assert large >= 90.5


@pytest.mark.anyio
async def test_requests_started_after_the_snapshot_are_subtracted_from_remaining() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, rpm=6000)

    async def scenario() -> list[float]:
        snapshot = await limiter.acquire(1)
        starts = [vt.now]
        for _ in range(3):
            await limiter.acquire(1)
            starts.append(vt.now)
        # The server had 4 left when `snapshot` arrived; 3 have started since: 1 more fits this window.
        limiter.observe_headers(
            {"x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "1s"}, snapshot
        )
        for _ in range(2):
            await limiter.acquire(1)
            starts.append(vt.now)
        return starts

    starts = await vt.run(scenario())
    assert starts[4] < 0.1
    assert starts[5] >= 1.0


@pytest.mark.anyio
async def test_a_window_that_has_already_ended_is_ignored() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, rpm=6000)

    async def scenario() -> float:
        old = await limiter.acquire(1)
        await vt.sleep(2.0)
        stale = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}
        limiter.observe_headers(stale, old)
        await limiter.acquire(1)
        return vt.now

    assert await vt.run(scenario()) == pytest.approx(2.0)


# --- unknown limits ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_limits_start_with_a_small_probe_burst() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, probe_rpm=300, probe_burst=4)
    starts = await vt.run(run_workers(vt, limiter, requests=12, workers=32))

    assert sum(1 for s in starts if s == 0.0) == 4
    assert min(gaps(starts)[3:]) == pytest.approx(0.2)


@pytest.mark.anyio
async def test_a_server_without_rate_limit_headers_is_not_throttled() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt)

    async def plain_response(job: int, reservation: Reservation) -> None:
        limiter.observe_headers({"content-type": "application/json"}, reservation)

    starts = await vt.run(run_workers(vt, limiter, requests=40, workers=32, on_start=plain_response))
    assert sorted(starts)[:32] == [0.0] * 32
    assert limiter.limits == (None, None)


# --- tokens ------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("actual", "second_start"), [(None, 1.0), (500, 0.5), (3000, 3.0)])
async def test_token_reservations_are_trued_up_from_usage(actual: int | None, second_start: float) -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, tpm=60_000, headroom=1.0)  # 1000 tokens a second

    async def first_request() -> None:
        reservation = await limiter.acquire(1000)
        assert reservation.tokens == 1000
        await vt.sleep(0.25)
        limiter.settle(reservation, actual)
        limiter.settle(reservation, 0)  # a second settle changes nothing
        assert reservation.tokens == (1000 if actual is None else actual)

    async def second_request() -> float:
        await vt.sleep(0.1)
        await limiter.acquire(1000)
        return vt.now

    _, started = await vt.run(asyncio.gather(first_request(), second_request()))
    assert started == pytest.approx(second_start)


@pytest.mark.anyio
async def test_a_request_never_sent_gives_its_tokens_back() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, tpm=60_000, headroom=1.0)

    async def scenario() -> float:
        unsent = await limiter.acquire(5000)
        limiter.release_unused(unsent)
        assert not unsent.open
        assert unsent.tokens == 0
        await limiter.acquire(1000)
        return vt.now

    assert await vt.run(scenario()) == 0.0


@pytest.mark.anyio
async def test_a_request_larger_than_the_budget_still_goes_alone() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, tpm=6000, headroom=1.0)  # 100 tokens a second

    async def scenario() -> list[float]:
        starts = []
        for size in (20_000, 100):
            await limiter.acquire(size)
            starts.append(vt.now)
        return starts

    assert await vt.run(scenario()) == [0.0, pytest.approx(200.0)]


# --- cancellation ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_no_reservation_behind() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, tpm=60_000, headroom=1.0)

    async def scenario() -> list[float]:
        await limiter.acquire(1000)  # t=0; the next 1000-token request may start at t=1
        doomed = asyncio.ensure_future(limiter.acquire(5000))
        await vt.sleep(0.5)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        starts = []
        for _ in range(2):
            await limiter.acquire(1000)
            starts.append(vt.now)
        return starts

    # Had the cancelled request kept its 5000 tokens, the later ones would start at 6 and 7.
    assert await vt.run(scenario()) == [pytest.approx(1.0), pytest.approx(2.0)]


@pytest.mark.anyio
async def test_cancelling_queued_waiters_keeps_the_queue_moving() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, rpm=60, headroom=1.0)

    async def scenario() -> list[float]:
        await limiter.acquire(1)
        queued = [asyncio.ensure_future(limiter.acquire(1)) for _ in range(5)]
        await vt.sleep(0.5)
        for task in queued[:4]:
            task.cancel()
        await asyncio.gather(*queued[:4], return_exceptions=True)
        await queued[4]
        return [vt.now]

    assert await vt.run(scenario()) == [pytest.approx(1.0)]


# --- the bar: 600 RPM in 1-second windows, 100 one-image requests, 32 workers --------------------------


class WindowedServer:
    """Counts arrivals per 1-second window and answers like the API: 429 past the window's budget."""

    def __init__(self, vt: VirtualTime, rpm: int) -> None:
        self.vt = vt
        self.rpm = rpm
        self.budget = rpm // 60
        self.counts: dict[int, int] = {}
        self.rejected = 0

    def arrive(self) -> tuple[int, dict[str, str], float]:
        window = math.floor(self.vt.now)
        reset = window + 1 - self.vt.now
        used = self.counts.get(window, 0)
        headers = {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-reset-requests": f"{reset * 1000:.0f}ms",
        }
        if used >= self.budget:
            self.rejected += 1
            headers["x-ratelimit-remaining-requests"] = "0"
            return 429, headers, reset
        self.counts[window] = used + 1
        headers["x-ratelimit-remaining-requests"] = str(self.budget - used - 1)
        return 200, headers, 0.0


async def run_against_windowed_server(
    vt: VirtualTime, limiter: RateLimiter, *, seed: int, requests: int = 100, workers: int = 32
) -> tuple[WindowedServer, float, list[float]]:
    server = WindowedServer(vt, rpm=600)
    rng = random.Random(seed)
    pending = list(range(requests))
    starts: list[float] = []

    async def worker() -> None:
        while pending:
            pending.pop()
            while True:
                reservation = await limiter.acquire(1100)
                starts.append(vt.now)
                await vt.sleep(rng.uniform(0.001, 0.02))  # upload: arrival jitter
                status, headers, retry_after = server.arrive()
                if status == 429:
                    await vt.sleep(0.005)
                    limiter.observe_headers(headers, reservation)
                    limiter.settle(reservation, 0)
                    limiter.pause_for(retry_after, "429")
                    continue
                await vt.sleep(rng.lognormvariate(math.log(1.0), 0.3))
                limiter.observe_headers(headers, reservation)
                limiter.settle(reservation, 1000)
                break

    await asyncio.gather(*(worker() for _ in range(workers)))
    return server, vt.now, starts


@pytest.mark.anyio
@pytest.mark.parametrize("rpm", [600, None])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_600_rpm_bar_is_met_with_and_without_rpm(rpm: int | None, seed: int) -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt, rpm=rpm)
    server, _finished, starts = await vt.run(run_against_windowed_server(vt, limiter, seed=seed))

    assert sum(server.counts.values()) == 100
    assert server.rejected <= 10
    assert max(starts) <= 1.2 * 10.0
    assert limiter.limits[0] == 600


@pytest.mark.anyio
async def test_an_account_smaller_than_the_probe_is_learnt_from_its_first_429s() -> None:
    vt = VirtualTime()
    limiter = make_limiter(vt)
    server = WindowedServer(vt, rpm=120)  # 2 per 1-second window: below the probe rate
    statuses: list[int] = []

    async def send(job: int, reservation: Reservation) -> None:
        status, headers, retry_after = server.arrive()
        statuses.append(status)
        if status == 200:
            await vt.sleep(1.5)  # answers take a while; 429s come back at once
        limiter.observe_headers(headers, reservation)
        if status == 429:
            limiter.pause_for(retry_after, "429")

    await vt.run(run_workers(vt, limiter, requests=40, workers=32, latency=0.0, on_start=send))
    assert limiter.limits == (120, None)
    assert 1 <= statuses.count(429) <= 2
    assert 429 not in statuses[5:]
