"""The one retry loop of the tool.

The SDK's own retries are off (`max_retries=0`), so every attempt passes through here where it can be
rate-limited (`before_attempt`), counted and reported (`on_retry`), and where a 429 can pause every
worker (`on_error`). A hand-written loop rather than tenacity/stamina: it is a dozen lines, and those
hooks plus an injectable sleep would take as much code to wire into a library's callbacks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from image_analyzer.domain import ModelRequest, ModelResponse, VisionModel
from image_analyzer.errors import ModelCallError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter that never retries sooner than the server asked.

    `max_retry_after`: a server asking for a longer wait than this (a daily quota, say) is not worth
    waiting for inside a run, so the error is raised instead, as the SDK does past two minutes.
    """

    max_retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.25
    max_retry_after: float = 300.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay_for(self, attempt: int, error: ModelCallError | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1 for the first retry)."""
        backoff = self.base_delay * 2.0 ** max(attempt - 1, 0)
        spread = 1.0 + self.jitter * (2.0 * self.random() - 1.0)
        delay = min(backoff * spread, self.max_delay)
        hint = error.retry_after if error is not None else None
        return max(delay, hint) if hint is not None else delay

    def should_retry(self, attempt: int, error: ModelCallError) -> bool:
        """Whether retry number `attempt` may happen after `error`."""
        if error.fatal or not error.retryable or attempt > self.max_retries:
            return False
        return error.retry_after is None or error.retry_after <= self.max_retry_after


async def send_with_retries(
    model: VisionModel,
    request: ModelRequest,
    *,
    timeout: float,
    policy: RetryPolicy,
    on_retry: Callable[[int, float, ModelCallError], None],
    before_attempt: Callable[[], Awaitable[None]] | None = None,
    after_response: Callable[[ModelResponse], None] | None = None,
    on_error: Callable[[ModelCallError], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ModelResponse:
    """Send `request`, retrying retryable failures up to `policy.max_retries` times.

    Raises the last `ModelCallError` when retries run out, and a non-retryable or fatal one at once.
    `on_error` sees every failure (before the retry decision); `on_retry(attempt, delay, error)` is
    called just before each backoff sleep.
    """
    retries = 0
    while True:
        if before_attempt is not None:
            await before_attempt()
        try:
            response = await model.complete(request, timeout=timeout)
        except ModelCallError as error:
            if on_error is not None:
                on_error(error)
            if not policy.should_retry(retries + 1, error):
                raise
            retries += 1
            delay = policy.delay_for(retries, error)
            on_retry(retries, delay, error)
            await sleep(delay)
            continue
        if after_response is not None:
            after_response(response)
        return response
