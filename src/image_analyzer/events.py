"""Everything a run reports, as frozen dataclasses, and the `Reporter` protocol that consumes them.

The pipeline emits events and knows nothing of how they are shown: the Rich dashboard, the plain
progress lines, the JSON-lines file and the log all read this one stream. No I/O here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

_log = logging.getLogger("image_analyzer.events")


def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    at: float = field(default_factory=_now)

    @property
    def name(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["event"] = self.name
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    run_id: str
    source: str
    model: str
    dry_run: bool
    parallel_categories: bool
    category_workers: int
    max_workers: int
    max_cost_usd: float | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PropertyDiscovered(Event):
    property_id: str
    categories: tuple[str, ...]
    images: int
    parallel: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSkipped(Event):
    location: str
    reason: str
    property_id: str | None = None
    category: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryQueued(Event):
    property_id: str
    category: str
    images: int
    batches: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryStarted(Event):
    property_id: str
    category: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchStarted(Event):
    property_id: str
    category: str
    batch_index: int
    batch_count: int
    images: int
    estimated_prompt_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPlanned(Event):
    """A dry run's batch: what would be sent, and what it is estimated to cost. Nothing is sent."""

    property_id: str
    category: str
    batch_index: int
    batch_count: int
    images: int
    estimated_prompt_tokens: int
    estimated_completion_tokens: int
    estimated_cost_usd: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchReused(Event):
    """A batch answered by an earlier run (resume): nothing is sent, nothing is spent."""

    property_id: str
    category: str
    batch_index: int
    images: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRetry(Event):
    property_id: str
    category: str
    batch_index: int
    attempt: int
    delay_s: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerRejected(Event):
    """The model answered but the answer was unusable; it is asked again once."""

    property_id: str
    category: str
    batch_index: int
    kind: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCost(Event):
    """One model response (first answers, re-asks and failed answers alike); cost None when unknown."""

    property_id: str
    category: str
    batch_index: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFinished(Event):
    property_id: str
    category: str
    batch_index: int
    batch_count: int
    images: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFailed(Event):
    property_id: str
    category: str
    batch_index: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryFinished(Event):
    property_id: str
    category: str
    images: int
    cost_usd: float | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryFailed(Event):
    property_id: str
    category: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PropertyFinished(Event):
    property_id: str
    categories: int
    failed_categories: int
    cost_usd: float | None
    output_dir: str | None
    valid: bool | None = None
    problems: tuple[str, ...] = ()
    rooms: dict[str, list[str]] = field(default_factory=dict)
    """Layout file name -> the ids of the photos that show that room (the run's record of rooms)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitPause(Event):
    """New requests are held back (429 retry-after or an exhausted window) until `resume_at`."""

    resume_at: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitsKnown(Event):
    """The requests/tokens per minute the run paces under: configured, or learnt from the server's headers."""

    rpm_limit: int | None
    tpm_limit: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice(Event):
    """A warning or information line worth showing to the operator."""

    level: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    run_id: str
    summary: dict[str, Any]
    exit_code: int


class Reporter(Protocol):
    """Consumes events. Must be quick and must not raise: it runs inside the event loop."""

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


class EventBus:
    """Fans each event out to every reporter, in order. A failing reporter never stops the run."""

    def __init__(self, reporters: Iterable[Reporter] = ()) -> None:
        self._reporters = list(reporters)

    def add(self, reporter: Reporter) -> None:
        self._reporters.append(reporter)

    def emit(self, event: Event) -> None:
        for reporter in self._reporters:
            try:
                reporter.handle(event)
            except Exception:  # a display bug must not lose work
                _log.debug("reporter %r failed on %s", reporter, event.name, exc_info=True)

    def close(self) -> None:
        for reporter in self._reporters:
            try:
                reporter.close()
            except Exception:
                _log.debug("reporter %r failed to close", reporter, exc_info=True)
