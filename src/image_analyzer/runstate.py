"""A pure, incremental aggregate of a run's event stream.

The dashboard, the plain progress lines, the log and the run summary all need the same numbers
(batches done, tokens, cost, ETA, what failed and why), so they all fold events into a `RunState`
instead of each keeping their own counters. `apply()` is O(1) per event so reporters stay quick;
everything time-dependent (elapsed, ETA, rates) takes an injectable `now` so it can be tested
without clocks. No I/O, no Rich.

The words users see for an event live here too (`describe`), so the plain lines, the log and the
dashboard's warning footer say the same thing the same way.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from image_analyzer import events as ev

QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
DONE = "done"
FAILED = "failed"

RATE_WINDOW_S = 60.0
NOTICE_LIMIT = 100
RECENT_LIMIT = 64
_LIST_LIMIT = 12

INFO = "info"
WARNING = "warning"
ERROR = "error"
_LEVELS = {
    "debug": INFO,
    "info": INFO,
    "warn": WARNING,
    "warning": WARNING,
    "error": ERROR,
    "critical": ERROR,
}


# --------------------------------------------------------------------------- formatting helpers


def format_cost(cost_usd: float | None, known: bool = True) -> str:
    """Dollars, or "unknown". A partly unknown cost is a lower bound ("≥$0.0100"), never a fake $0."""
    if cost_usd is None or (not known and cost_usd <= 0):
        return "unknown"
    text = f"${cost_usd:,.2f}" if cost_usd >= 100 else f"${cost_usd:.4f}"
    return text if known else f"≥{text}"


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_count(value: float) -> str:
    """A compact count for narrow cells: 950, 12.3k, 4.5M."""
    if value < 1000:
        return f"{value:.0f}"
    if value < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.1f}M"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def _short_list(items: tuple[str, ...]) -> str:
    if len(items) <= _LIST_LIMIT:
        return ", ".join(items)
    return ", ".join(items[:_LIST_LIMIT]) + f", ... (+{len(items) - _LIST_LIMIT} more)"


# --------------------------------------------------------------------------- aggregates


@dataclass(slots=True)
class Usage:
    """Requests, tokens and cost. Requests with an unknown price make the cost a lower bound."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    unknown_cost_requests: int = 0

    @property
    def cost_known(self) -> bool:
        return self.unknown_cost_requests == 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd
        self.unknown_cost_requests += other.unknown_cost_requests

    @classmethod
    def of_request(cls, event: ev.RequestCost) -> Usage:
        return cls(
            requests=1,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            cached_tokens=event.cached_tokens,
            cost_usd=event.cost_usd or 0.0,
            unknown_cost_requests=0 if event.cost_usd is not None else 1,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "cost_known": self.cost_known,
        }


@dataclass(slots=True)
class CategoryRow:
    property_id: str
    category: str
    order: int
    state: str = QUEUED
    reason: str | None = None
    resume_at: float | None = None
    images: int = 0
    images_done: int = 0
    images_reused: int = 0
    batches: int = 0
    batches_done: int = 0
    batches_reused: int = 0
    retries: int = 0
    reasks: int = 0
    usage: Usage = field(default_factory=Usage)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.property_id, self.category)

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "images_analysed": self.images_done,
            "batches": self.batches,
            "batches_done": self.batches_done,
            "reused_batches": self.batches_reused,
            **self.usage.as_dict(),
            "retries": self.retries,
            "reasks": self.reasks,
            "status": self.state,
            "reason": self.reason,
        }


@dataclass(slots=True)
class PropertyRow:
    property_id: str
    order: int
    discovered: bool = False
    images: int = 0
    images_done: int = 0
    images_reused: int = 0
    images_failed: int = 0
    categories: list[str] = field(default_factory=list)
    parallel: bool = False
    usage: Usage = field(default_factory=Usage)
    retries: int = 0
    reasks: int = 0
    reused_batches: int = 0
    skipped: int = 0
    failed_categories: list[str] = field(default_factory=list)
    categories_done: int = 0
    finished: bool = False
    valid: bool | None = None
    problems: tuple[str, ...] = ()
    output_dir: str | None = None
    rooms: dict[str, list[str]] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def settled(self) -> int:
        """Images that need no more work: analysed (or reused) plus those of failed categories."""
        return self.images_done + self.images_failed

    @property
    def expected(self) -> int:
        """Images this property contributes to the run's total; exact once it has finished."""
        return self.settled if self.finished else max(self.images, self.settled)

    @property
    def status(self) -> str:
        if not self.finished:
            return RUNNING
        if self.failed_categories:
            return "partial" if self.categories_done else FAILED
        return "invalid" if self.valid is False else DONE

    def as_dict(self, rows: Iterator[CategoryRow]) -> dict[str, Any]:
        duration = (
            self.finished_at - self.started_at
            if self.finished_at is not None and self.started_at is not None
            else None
        )
        return {
            "images": self.images,
            "images_analysed": self.images_done,
            "skipped": self.skipped,
            **self.usage.as_dict(),
            "retries": self.retries,
            "reasks": self.reasks,
            "reused_batches": self.reused_batches,
            "failed_categories": list(self.failed_categories),
            "status": self.status,
            "valid": self.valid,
            "problems": list(self.problems),
            "output_dir": self.output_dir,
            "rooms": self.rooms,
            "duration_s": round(duration, 3) if duration is not None else None,
            "categories": {row.category: row.as_dict() for row in rows},
        }


@dataclass(frozen=True, slots=True)
class Line:
    """One thing worth telling the operator about an event."""

    level: str
    icon: str
    text: str


@dataclass(slots=True)
class NoticeEntry:
    at: float
    level: str
    text: str
    count: int = 1


# --------------------------------------------------------------------------- the state


class RunState:
    """Folds events into everything a display or summary needs. Also usable directly as a Reporter."""

    def __init__(self, *, rpm_limit: int | None = None, tpm_limit: int | None = None) -> None:
        self.run_id: str | None = None
        self.source: str | None = None
        self.model: str | None = None
        self.dry_run = False
        self.parallel_categories = False
        self.category_workers = 0
        self.max_workers = 0
        self.max_cost_usd: float | None = None
        self.rpm_limit = rpm_limit
        self.tpm_limit = tpm_limit
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.last_event_at: float | None = None
        self.exit_code: int | None = None
        self.paused_until: float | None = None
        self.pause_reason: str | None = None

        self.usage = Usage()
        self.images_total = 0
        self.images_done = 0
        self.images_reused = 0
        self.images_failed = 0
        self.retries = 0
        self.reasks = 0
        self.reused_batches = 0
        self.properties_finished = 0
        self.finished_usage = Usage()
        self.finished_images_done = 0

        self.rows: dict[tuple[str, str], CategoryRow] = {}
        self.properties: dict[str, PropertyRow] = {}
        self.active: dict[tuple[str, str], CategoryRow] = {}
        self.queued: dict[tuple[str, str], CategoryRow] = {}
        self.recent_rows: deque[tuple[str, str]] = deque(maxlen=RECENT_LIMIT)
        self.recent_properties: deque[str] = deque(maxlen=RECENT_LIMIT)
        self.in_flight: set[tuple[str, str, int]] = set()
        self.notices: deque[NoticeEntry] = deque(maxlen=NOTICE_LIMIT)
        self.skipped_images: list[dict[str, Any]] = []
        self.failed_categories: list[dict[str, Any]] = []
        self._requests_window: deque[tuple[float, int]] = deque()

    # Reporter protocol, so the lead can hand a RunState straight to the EventBus.
    def handle(self, event: ev.Event) -> None:
        self.apply(event)

    def close(self) -> None:
        return None

    # ----------------------------------------------------------------------- folding

    def apply(self, event: ev.Event) -> None:
        self.apply_and_describe(event)

    def apply_and_describe(self, event: ev.Event) -> tuple[Line, ...]:
        """Fold the event in and return the lines it is worth (what `describe` says about it)."""
        self.last_event_at = event.at
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        lines = describe(event, self)
        for line in lines:
            if line.level != INFO:
                self._add_notice(event.at, line)
        return lines

    def _on_run_started(self, event: ev.RunStarted) -> None:
        self.run_id = event.run_id
        self.source = event.source
        self.model = event.model
        self.dry_run = event.dry_run
        self.parallel_categories = event.parallel_categories
        self.category_workers = event.category_workers
        self.max_workers = event.max_workers
        self.max_cost_usd = event.max_cost_usd
        self.started_at = event.at
        # Forward compatible: limits may ride on RunStarted one day.
        self.rpm_limit = getattr(event, "rpm_limit", None) or self.rpm_limit
        self.tpm_limit = getattr(event, "tpm_limit", None) or self.tpm_limit

    def _on_property_discovered(self, event: ev.PropertyDiscovered) -> None:
        prop = self.property_row(event.property_id, event.at)
        before = prop.expected
        prop.discovered = True
        prop.images = event.images
        prop.categories = list(event.categories)
        prop.parallel = event.parallel
        self.images_total += prop.expected - before

    def _on_image_skipped(self, event: ev.ImageSkipped) -> None:
        self.skipped_images.append(
            {
                "location": event.location,
                "reason": event.reason,
                "property_id": event.property_id,
                "category": event.category,
            }
        )
        if event.property_id is not None:
            self.property_row(event.property_id, event.at).skipped += 1

    def _on_category_queued(self, event: ev.CategoryQueued) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        row.images = event.images
        row.batches = event.batches
        prop = self.property_row(event.property_id, event.at)
        if not prop.discovered:
            # No PropertyDiscovered (yet): count what we are told is coming.
            before = prop.expected
            prop.images += event.images
            self.images_total += prop.expected - before
        if event.category not in prop.categories:
            prop.categories.append(event.category)

    def _on_category_started(self, event: ev.CategoryStarted) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        row.started_at = event.at
        self._set_state(row, RUNNING)

    def _on_batch_started(self, event: ev.BatchStarted) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        row.batches = max(row.batches, event.batch_count)
        self.in_flight.add((event.property_id, event.category, event.batch_index))
        self._resume(row)

    def _on_batch_reused(self, event: ev.BatchReused) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        prop = self.property_row(event.property_id, event.at)
        row.batches_done += 1
        row.batches_reused += 1
        prop.reused_batches += 1
        self.reused_batches += 1
        row.images_reused += event.images
        prop.images_reused += event.images
        self.images_reused += event.images
        self._add_done_images(row, prop, event.images)

    def _on_request_retry(self, event: ev.RequestRetry) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        row.retries += 1
        self.property_row(event.property_id, event.at).retries += 1
        self.retries += 1
        row.reason = event.reason
        row.resume_at = event.at + event.delay_s
        self._set_state(row, RETRYING)

    def _on_answer_rejected(self, event: ev.AnswerRejected) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        row.reasks += 1
        self.property_row(event.property_id, event.at).reasks += 1
        self.reasks += 1
        self._resume(row)

    def _on_request_cost(self, event: ev.RequestCost) -> None:
        usage = Usage.of_request(event)
        row = self.category_row(event.property_id, event.category, event.at)
        row.usage.add(usage)
        self.property_row(event.property_id, event.at).usage.add(usage)
        self.usage.add(usage)
        self._requests_window.append((event.at, event.prompt_tokens + event.completion_tokens))
        self._prune_window(event.at)
        self._resume(row)

    def _on_batch_planned(self, event: ev.BatchPlanned) -> None:
        """A dry run counts what it would send: estimated requests, tokens and cost, nothing spent."""
        estimate = Usage(
            requests=1,
            prompt_tokens=event.estimated_prompt_tokens,
            completion_tokens=event.estimated_completion_tokens,
            cost_usd=event.estimated_cost_usd or 0.0,
            unknown_cost_requests=0 if event.estimated_cost_usd is not None else 1,
        )
        row = self.category_row(event.property_id, event.category, event.at)
        prop = self.property_row(event.property_id, event.at)
        row.usage.add(estimate)
        prop.usage.add(estimate)
        self.usage.add(estimate)
        row.batches = max(row.batches, event.batch_count)
        row.batches_done += 1
        self._add_done_images(row, prop, event.images)

    def _on_batch_finished(self, event: ev.BatchFinished) -> None:
        self.in_flight.discard((event.property_id, event.category, event.batch_index))
        row = self.category_row(event.property_id, event.category, event.at)
        row.batches = max(row.batches, event.batch_count)
        row.batches_done += 1
        self._add_done_images(row, self.property_row(event.property_id, event.at), event.images)
        self._resume(row)

    def _on_batch_failed(self, event: ev.BatchFailed) -> None:
        self.in_flight.discard((event.property_id, event.category, event.batch_index))
        self.category_row(event.property_id, event.category, event.at).reason = event.reason

    def _on_category_finished(self, event: ev.CategoryFinished) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        prop = self.property_row(event.property_id, event.at)
        if row.usage.requests == 0 and (event.prompt_tokens or event.completion_tokens or event.cost_usd):
            # The pipeline reported totals without per-request costs: take them as they are.
            usage = Usage(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                cost_usd=event.cost_usd or 0.0,
                unknown_cost_requests=0 if event.cost_usd is not None else 1,
            )
            row.usage.add(usage)
            prop.usage.add(usage)
            self.usage.add(usage)
        if event.images > row.images_done:
            # Images the pipeline counted without a BatchFinished for them (or none at all).
            self._add_done_images(row, prop, event.images - row.images_done)
        row.reason = None
        row.finished_at = event.at
        prop.categories_done += 1
        self._set_state(row, DONE)

    def _on_category_failed(self, event: ev.CategoryFailed) -> None:
        row = self.category_row(event.property_id, event.category, event.at)
        prop = self.property_row(event.property_id, event.at)
        before = prop.expected
        left = max(0, row.images - row.images_done)
        row.reason = event.reason
        row.finished_at = event.at
        prop.images_failed += left
        self.images_failed += left
        self.images_total += prop.expected - before
        prop.failed_categories.append(event.category)
        self.failed_categories.append(
            {"property_id": event.property_id, "category": event.category, "reason": event.reason}
        )
        self.in_flight = {key for key in self.in_flight if key[:2] != row.key}
        self._set_state(row, FAILED)

    def _on_property_finished(self, event: ev.PropertyFinished) -> None:
        prop = self.property_row(event.property_id, event.at)
        if prop.finished:
            return
        if prop.usage.requests == 0 and event.cost_usd:
            usage = Usage(cost_usd=event.cost_usd)
            prop.usage.add(usage)
            self.usage.add(usage)
        before = prop.expected
        prop.finished = True
        prop.finished_at = event.at
        prop.valid = event.valid
        prop.problems = event.problems
        prop.output_dir = event.output_dir
        prop.rooms = dict(event.rooms)
        self.images_total += prop.expected - before
        self.properties_finished += 1
        self.finished_usage.add(prop.usage)
        self.finished_images_done += prop.images_done
        self.recent_properties.append(prop.property_id)
        for category in prop.categories:
            key = (prop.property_id, category)
            self.queued.pop(key, None)
            self.active.pop(key, None)

    def _on_rate_limit_pause(self, event: ev.RateLimitPause) -> None:
        self.paused_until = event.resume_at
        self.pause_reason = event.reason

    def _on_rate_limits_known(self, event: ev.RateLimitsKnown) -> None:
        self.rpm_limit = event.rpm_limit or self.rpm_limit
        self.tpm_limit = event.tpm_limit or self.tpm_limit

    def _on_run_finished(self, event: ev.RunFinished) -> None:
        self.finished_at = event.at
        self.exit_code = event.exit_code
        self.in_flight.clear()

    # ----------------------------------------------------------------------- bookkeeping

    def property_row(self, property_id: str, at: float | None = None) -> PropertyRow:
        prop = self.properties.get(property_id)
        if prop is None:
            prop = PropertyRow(property_id=property_id, order=len(self.properties), started_at=at)
            self.properties[property_id] = prop
        return prop

    def category_row(self, property_id: str, category: str, at: float | None = None) -> CategoryRow:
        key = (property_id, category)
        row = self.rows.get(key)
        if row is None:
            row = CategoryRow(property_id=property_id, category=category, order=len(self.rows))
            self.rows[key] = row
            self.queued[key] = row
            self.property_row(property_id, at)
        return row

    def _set_state(self, row: CategoryRow, state: str) -> None:
        row.state = state
        if state != RETRYING:
            row.resume_at = None
        self.queued.pop(row.key, None)
        if state in (RUNNING, RETRYING):
            self.active[row.key] = row
        else:
            self.active.pop(row.key, None)
            if state == QUEUED:
                self.queued[row.key] = row
            else:
                self.recent_rows.append(row.key)

    def _resume(self, row: CategoryRow) -> None:
        """Any sign of life from a queued or retrying category means it is running (again)."""
        if row.state in (QUEUED, RETRYING):
            if row.started_at is None:
                row.started_at = self.last_event_at
            if row.state == RETRYING:
                row.reason = None
            self._set_state(row, RUNNING)

    def _add_done_images(self, row: CategoryRow, prop: PropertyRow, images: int) -> None:
        before = prop.expected
        row.images_done += images
        prop.images_done += images
        self.images_done += images
        self.images_total += prop.expected - before

    def _prune_window(self, now: float) -> None:
        while self._requests_window and self._requests_window[0][0] < now - RATE_WINDOW_S:
            self._requests_window.popleft()

    def _add_notice(self, at: float, line: Line) -> None:
        last = self.notices[-1] if self.notices else None
        if last is not None and last.text == line.text and last.level == line.level:
            last.count += 1
            last.at = at
            return
        self.notices.append(NoticeEntry(at=at, level=line.level, text=line.text))

    # ----------------------------------------------------------------------- derived numbers

    def resolve_now(self, now: float | None) -> float:
        """`now` if given, else the wall clock; a finished run's clock stops at its end."""
        if self.finished_at is not None:
            return self.finished_at
        return time.time() if now is None else now

    @property
    def images_settled(self) -> int:
        return self.images_done + self.images_failed

    @property
    def categories_running(self) -> int:
        return len(self.active)

    @property
    def requests_in_flight(self) -> int:
        return len(self.in_flight)

    def elapsed_s(self, now: float | None = None) -> float:
        if self.started_at is None:
            return 0.0
        return max(0.0, self.resolve_now(now) - self.started_at)

    def progress(self) -> float:
        if self.images_total <= 0:
            return 1.0 if self.finished_at is not None else 0.0
        return min(1.0, self.images_settled / self.images_total)

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left at the pace so far. Reused batches are instant, so they do not set the pace."""
        remaining = self.images_total - self.images_settled
        if remaining <= 0:
            return 0.0 if self.images_total else None
        worked = self.images_settled - self.images_reused
        elapsed = self.elapsed_s(now)
        if worked <= 0 or elapsed <= 0:
            return None
        return remaining * elapsed / worked

    def projected_cost_usd(self) -> float | None:
        """Spend so far plus the average cost per analysed image times the images still to go."""
        paid_images = self.images_done - self.images_reused
        if paid_images <= 0 or self.usage.requests == 0 or self.usage.cost_usd <= 0:
            return None
        remaining = max(0, self.images_total - self.images_settled)
        return self.usage.cost_usd + self.usage.cost_usd / paid_images * remaining

    def budget_left_usd(self) -> float | None:
        if self.max_cost_usd is None:
            return None
        return self.max_cost_usd - self.usage.cost_usd

    def requests_per_minute(self, now: float | None = None) -> int:
        since = self.resolve_now(now) - RATE_WINDOW_S
        return sum(1 for at, _ in self._requests_window if at >= since)

    def tokens_per_minute(self, now: float | None = None) -> int:
        since = self.resolve_now(now) - RATE_WINDOW_S
        return sum(tokens for at, tokens in self._requests_window if at >= since)

    def pause_left_s(self, now: float | None = None) -> float | None:
        if self.paused_until is None:
            return None
        left = self.paused_until - self.resolve_now(now)
        return left if left > 0 else None

    def rows_of(self, property_id: str) -> Iterator[CategoryRow]:
        prop = self.properties.get(property_id)
        if prop is None:
            return
        for category in prop.categories:
            row = self.rows.get((property_id, category))
            if row is not None:
                yield row

    # ----------------------------------------------------------------------- run summary

    def summary(self) -> dict[str, Any]:
        """Numbers for the run summary file (`_runs/<run_id>.json`); the pipeline adds its own fields."""
        return {
            "images": self.images_total,
            "images_analysed": self.images_done,
            "images_reused": self.images_reused,
            "images_failed": self.images_failed,
            "skipped": len(self.skipped_images),
            **self.usage.as_dict(),
            "retries": self.retries,
            "reasks": self.reasks,
            "reused_batches": self.reused_batches,
            "properties_finished": self.properties_finished,
            "failed_categories": list(self.failed_categories),
            "skipped_images": list(self.skipped_images),
            "properties": {pid: prop.as_dict(self.rows_of(pid)) for pid, prop in self.properties.items()},
        }


# --------------------------------------------------------------------------- event -> words


def _batch_label(state: RunState, property_id: str, category: str, batch_index: int) -> str:
    row = state.rows.get((property_id, category))
    total = row.batches if row is not None and row.batches else 0
    if total and batch_index >= total:
        # The pipeline numbers a category's follow-up request (room consolidation) after its batches.
        return "consolidation request"
    # batch_index is 0-based in events; people count from 1.
    return f"batch {batch_index + 1}/{total}" if total else f"batch {batch_index + 1}"


def describe(event: ev.Event, state: RunState) -> tuple[Line, ...]:
    """What an event means to a person, after it has been applied to `state`. Empty: not worth a line."""
    match event:
        case ev.RunStarted():
            dry = " (dry run: nothing is sent)" if event.dry_run else ""
            return (Line(INFO, "▶️", f"Run {event.run_id}: {event.source} with {event.model}{dry}"),)
        case ev.PropertyDiscovered():
            return _describe_discovered(event)
        case ev.ImageSkipped():
            return (Line(WARNING, "⚠️", f"Skipped {event.location}: {event.reason}"),)
        case ev.CategoryStarted():
            row = state.rows.get((event.property_id, event.category))
            images = _plural(row.images, "image") if row else "?"
            batches = _plural(row.batches, "batch", "batches") if row else "?"
            text = f"Analyzing {event.category} for {event.property_id}: {images} in {batches}"
            return (Line(INFO, "🔍", text),)
        case ev.RequestRetry():
            batch = _batch_label(state, event.property_id, event.category, event.batch_index)
            text = (
                f"Retrying {event.category} {batch} for {event.property_id} "
                f"in {event.delay_s:.1f} s ({event.reason})"
            )
            return (Line(WARNING, "🔁", text),)
        case ev.AnswerRejected():
            batch = _batch_label(state, event.property_id, event.category, event.batch_index)
            text = f"Re-asking {event.category} {batch} for {event.property_id}: {event.kind}: {event.detail}"
            return (Line(WARNING, "↩️", text),)
        case ev.CategoryFinished():
            row = state.rows.get((event.property_id, event.category))
            cost = format_cost(row.usage.cost_usd, row.usage.cost_known) if row else "unknown"
            if state.dry_run and row is not None:
                requests = _plural(row.usage.requests, "request")
                tokens = f"~{row.usage.tokens:,} tokens"
                text = f"Planned category {event.category}: {requests}, {tokens} (est. {cost})"
                return (Line(INFO, "📝", text),)
            return (Line(INFO, "✅", f"Completed category {event.category} (Cost: {cost})"),)
        case ev.CategoryFailed():
            text = f"Category {event.category} failed for {event.property_id}: {event.reason}"
            return (Line(ERROR, "❌", text),)
        case ev.PropertyFinished():
            return _describe_property_finished(event, state)
        case ev.RateLimitPause():
            wait = max(0.0, event.resume_at - event.at)
            return (
                Line(WARNING, "⏸️", f"Rate limited: holding new requests for {wait:.1f} s ({event.reason})"),
            )
        case ev.Notice():
            level = _LEVELS.get(event.level.lower(), WARNING)
            icon = {INFO: "ℹ️", WARNING: "⚠️", ERROR: "❌"}[level]
            return (Line(level, icon, event.message),)
    return ()


def _describe_discovered(event: ev.PropertyDiscovered) -> tuple[Line, ...]:
    count = len(event.categories)
    if count == 0:
        return (Line(WARNING, "📁", f"Found no category folders for {event.property_id}"),)
    folders = _plural(count, "category folder")
    mode = "in parallel" if event.parallel else "sequentially"
    categories = _plural(count, "category", "categories")
    return (
        Line(INFO, "📁", f"Found {folders} for {event.property_id}: {_short_list(event.categories)}"),
        Line(INFO, "🚀", f"Processing {categories} {mode} for {event.property_id}"),
    )


def _describe_property_finished(event: ev.PropertyFinished, state: RunState) -> tuple[Line, ...]:
    prop = state.properties.get(event.property_id)
    if prop is not None:
        cost = format_cost(prop.usage.cost_usd, prop.usage.cost_known)
    else:
        cost = format_cost(event.cost_usd)
    if event.failed_categories:
        text = (
            f"Completed {event.property_id} with {event.failed_categories} of "
            f"{_plural(event.categories, 'category', 'categories')} failed (Total cost: {cost})"
        )
        lines = [Line(ERROR, "⚠️", text)]
    else:
        lines = [Line(INFO, "✅", f"Completed all categories for {event.property_id} (Total cost: {cost})")]
    if event.valid is False:
        first = event.problems[0] if event.problems else "no details"
        more = f" (+{len(event.problems) - 1} more)" if len(event.problems) > 1 else ""
        lines.append(Line(WARNING, "⚠️", f"Output for {event.property_id} is not valid: {first}{more}"))
    return tuple(lines)


_HANDLERS: dict[type[ev.Event], Any] = {
    ev.RunStarted: RunState._on_run_started,
    ev.PropertyDiscovered: RunState._on_property_discovered,
    ev.ImageSkipped: RunState._on_image_skipped,
    ev.CategoryQueued: RunState._on_category_queued,
    ev.CategoryStarted: RunState._on_category_started,
    ev.BatchStarted: RunState._on_batch_started,
    ev.BatchReused: RunState._on_batch_reused,
    ev.BatchPlanned: RunState._on_batch_planned,
    ev.RequestRetry: RunState._on_request_retry,
    ev.AnswerRejected: RunState._on_answer_rejected,
    ev.RequestCost: RunState._on_request_cost,
    ev.BatchFinished: RunState._on_batch_finished,
    ev.BatchFailed: RunState._on_batch_failed,
    ev.CategoryFinished: RunState._on_category_finished,
    ev.CategoryFailed: RunState._on_category_failed,
    ev.PropertyFinished: RunState._on_property_finished,
    ev.RateLimitPause: RunState._on_rate_limit_pause,
    ev.RateLimitsKnown: RunState._on_rate_limits_known,
    ev.RunFinished: RunState._on_run_finished,
}
