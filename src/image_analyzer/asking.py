"""Asking the model for one answer: rate limit, retries, budget gate, cost, and one re-ask.

`Asker.ask` sends a request through the single retry loop (`retry.send_with_retries`), costs every
response that returned usage (re-asks included), checks the answer with the caller's parser, and asks
once more when the answer is unusable. Fatal API errors (bad key, exhausted quota) stop the whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from image_analyzer.control import StopController
from image_analyzer.cost import CostLedger, PriceTable
from image_analyzer.domain import ModelRequest, ModelResponse, Usage, VisionModel
from image_analyzer.errors import AnswerError, ModelCallError
from image_analyzer.events import AnswerRejected, EventBus, RateLimitsKnown, RequestCost, RequestRetry
from image_analyzer.ratelimit import RateLimiter, Reservation
from image_analyzer.retry import RetryPolicy, send_with_retries

ESTIMATED_COMPLETION_TOKENS = 1200
"""Budget-gate guess for an answer's length; the real figure comes back in `usage`."""

AnswerParser = Callable[[str | None], dict[str, Any]]


class NotStarted(Exception):
    """No new request starts: the run is stopping (budget reached, Ctrl-C, SIGTERM, fatal error)."""


class BatchFailed(Exception):
    """A batch could not be answered (retries or the re-ask exhausted, or a hard API error)."""


@dataclass(frozen=True, slots=True)
class Where:
    property_id: str
    category: str
    batch_index: int


class LimitedModel:
    """A `VisionModel` that waits for the shared rate limiter before each send and feeds it back."""

    def __init__(self, inner: VisionModel, limiter: RateLimiter, bus: EventBus | None = None) -> None:
        self._inner = inner
        self._limiter = limiter
        self._bus = bus
        self._limits_shown: tuple[int | None, int | None] = (None, None)

    def _show_limits(self) -> None:
        """Tell the reporters when the limits in force change (the dashboard shows rates against them)."""
        limits = self._limiter.limits
        if self._bus is not None and limits != self._limits_shown:
            self._limits_shown = limits
            self._bus.emit(RateLimitsKnown(rpm_limit=limits[0], tpm_limit=limits[1]))

    async def complete(self, request: ModelRequest, *, timeout: float) -> ModelResponse:
        reservation = await self._limiter.acquire(request.estimated_prompt_tokens + request.max_tokens)
        try:
            response = await self._inner.complete(request, timeout=timeout)
        except ModelCallError as exc:
            self._on_error(exc, reservation)
            raise
        except BaseException:
            self._limiter.release_unused(reservation)
            raise
        self._limiter.observe_headers(response.headers, reservation)
        self._show_limits()
        # The service counts prompt + max_tokens against TPM when it admits a request, not the tokens used.
        admitted = response.usage.prompt_tokens + request.max_tokens if response.usage else None
        self._limiter.settle(reservation, admitted)
        return response

    def _on_error(self, exc: ModelCallError, reservation: Reservation) -> None:
        if exc.status == 429 and not exc.fatal:
            self._limiter.observe_headers(exc.headers, reservation)
            self._show_limits()
            self._limiter.settle(reservation, 0)
            self._limiter.pause_for(1.0 if exc.retry_after is None else exc.retry_after, "429 rate limited")
        else:
            # Errors, timeouts and dropped connections: the server may have counted it; assume it did.
            self._limiter.settle(reservation, None)

    async def aclose(self) -> None:
        await self._inner.aclose()


def check_response(response: ModelResponse) -> str:
    """The answer text, or an `AnswerError` saying why there is none worth parsing."""
    if response.finish_reason == "empty":
        raise AnswerError("the server returned no choices", kind="empty_choices")
    if response.refusal:
        raise AnswerError(f"the model refused: {response.refusal[:120]}", kind="refused")
    if response.finish_reason == "length":
        raise AnswerError("the answer was cut off at max_tokens (finish_reason=length)", kind="truncated")
    if not response.content:
        raise AnswerError("the answer was empty", kind="empty")
    return response.content


class Asker:
    def __init__(
        self,
        *,
        model: VisionModel,
        bus: EventBus,
        ledger: CostLedger,
        prices: PriceTable,
        policy: RetryPolicy,
        timeout: float,
        controller: StopController,
        max_cost: float | None,
    ) -> None:
        self._model = model
        self._bus = bus
        self._ledger = ledger
        self._prices = prices
        self._policy = policy
        self._timeout = timeout
        self._controller = controller
        self._max_cost = max_cost
        # Budget held by requests in flight, and estimates standing in for answers that came back
        # without `usage`: both count as spent, so concurrent requests cannot overshoot the cap.
        self._reserved = 0.0
        self._unpriced = 0.0

    async def ask(
        self, where: Where, request: ModelRequest, parse: AnswerParser
    ) -> tuple[dict[str, Any], Usage]:
        """Send, check and parse; re-ask once on an unusable answer. Returns the answer and total usage."""
        spent = Usage()
        last_problem: AnswerError | None = None
        for attempt in (1, 2):
            hold = self._gate(request)
            try:
                response = await self._send(where, request)
            finally:
                self._reserved -= hold
            if response.usage is None:
                self._unpriced += hold
            spent = spent + self._record_cost(where, request.model, response.usage)
            try:
                return parse(check_response(response)), spent
            except AnswerError as problem:
                last_problem = problem
                self._bus.emit(AnswerRejected(**_where(where), kind=problem.kind, detail=str(problem)))
                request = replace(request, messages=_with_correction(request.messages, problem, attempt))
        assert last_problem is not None
        raise BatchFailed(f"{last_problem.kind} answer twice: {last_problem}")

    def _gate(self, request: ModelRequest) -> float:
        """Refuse to start when stopping or over budget; returns the budget this request holds."""
        if self._controller.stopping:
            raise NotStarted(self._controller.request.reason if self._controller.request else "stopping")
        if self._max_cost is None:
            return 0.0
        estimate = self._prices.cost(
            request.model,
            Usage(
                prompt_tokens=request.estimated_prompt_tokens, completion_tokens=ESTIMATED_COMPLETION_TOKENS
            ),
        )
        hold = estimate or 0.0
        if self._ledger.spent_usd + self._unpriced + self._reserved + hold > self._max_cost:
            self._controller.stop("budget reached", exit_code=1)
            raise NotStarted("budget reached")
        self._reserved += hold
        return hold

    async def _send(self, where: Where, request: ModelRequest) -> ModelResponse:
        def on_retry(attempt: int, delay: float, error: ModelCallError) -> None:
            self._bus.emit(RequestRetry(**_where(where), attempt=attempt, delay_s=delay, reason=str(error)))

        try:
            return await send_with_retries(
                self._model, request, timeout=self._timeout, policy=self._policy, on_retry=on_retry
            )
        except ModelCallError as exc:
            if exc.fatal:
                raise
            raise BatchFailed(str(exc)) from exc

    def _record_cost(self, where: Where, model: str, usage: Usage | None) -> Usage:
        cost = self._prices.cost(model, usage) if usage else None
        self._ledger.add(where.property_id, where.category, usage, cost)
        # A response without `usage` is still a paid request: counted, with its cost unknown (never $0).
        counted = usage or Usage()
        self._bus.emit(
            RequestCost(
                **_where(where),
                prompt_tokens=counted.prompt_tokens,
                completion_tokens=counted.completion_tokens,
                cached_tokens=counted.cached_tokens,
                cost_usd=cost,
            )
        )
        return counted


def _where(where: Where) -> dict[str, Any]:
    return {"property_id": where.property_id, "category": where.category, "batch_index": where.batch_index}


def _with_correction(messages: Any, problem: AnswerError, attempt: int) -> list[Mapping[str, Any]]:
    """The re-ask repeats the request with one line saying what was wrong with the first answer."""
    note = {
        "role": "user",
        "content": f"Your previous answer was rejected ({problem.kind}): {str(problem)[:300]}. "
        "Answer again with JSON that follows the schema exactly.",
    }
    base = list(messages)
    return [*base, note] if attempt == 1 else base
