"""The live terminal dashboard: a Rich `Live` view of a run, redrawn a few times a second.

`handle()` only folds the event into a `RunState` under a lock, so the run never waits for drawing;
Rich's refresh thread calls `render()`, which takes the same lock just long enough to turn the state
into renderables (a bounded number of rows, however large the run). `render(now)` also works without
`Live`, which is how the tests and docs/dashboard.md capture it.

Layout: a header (run, progress, concurrency, spend, rates), one row per active or recent category
with finished properties collapsed to one totals row each, and a footer of recent warnings.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from image_analyzer import events as ev
from image_analyzer.runstate import (
    DONE,
    ERROR,
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    CategoryRow,
    PropertyRow,
    RunState,
    Usage,
    format_cost,
    format_count,
    format_duration,
)

if TYPE_CHECKING:
    from image_analyzer.settings import Settings

NARROW_WIDTH = 100
FULL_WIDTH = 120
_HEADER_LINES = 5
_TABLE_CHROME = 3
_MIN_ROWS = 4

_STATE_STYLES = {
    QUEUED: "dim",
    RUNNING: "cyan",
    RETRYING: "yellow",
    DONE: "green",
    FAILED: "red",
    "partial": "red",
    "invalid": "yellow",
}


@dataclass(slots=True)
class _Selection:
    """What fits on screen: category rows, collapsed finished properties, and what was left out."""

    rows: list[CategoryRow] = field(default_factory=list)
    properties: list[PropertyRow] = field(default_factory=list)
    hidden_rows: int = 0
    hidden_properties: int = 0
    hidden_usage: Usage = field(default_factory=Usage)
    hidden_images: int = 0


class Dashboard:
    """A `Reporter` that draws the run on a Rich console.

    `max_rows` caps the category/property rows (default: what fits in the terminal's height).
    With `quiet`, only the header and the warnings are shown.
    """

    def __init__(
        self,
        console: Console,
        *,
        refresh_per_second: float = 4.0,
        max_rows: int | None = None,
        max_notices: int = 5,
        quiet: bool = False,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
    ) -> None:
        self.console = console
        self.state = RunState(rpm_limit=rpm_limit, tpm_limit=tpm_limit)
        self._refresh_per_second = refresh_per_second
        self._max_rows = max_rows
        self._max_notices = max_notices
        self._quiet = quiet
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._autostart = False
        self._closed = False

    @classmethod
    def for_stream(
        cls, stream: TextIO, *, settings: Settings | None = None, quiet: bool = False
    ) -> Dashboard:
        """A dashboard on `stream` that starts drawing at the first event (Rich honours NO_COLOR)."""
        console = Console(file=stream, highlight=False)
        dashboard = cls(
            console,
            quiet=quiet,
            rpm_limit=settings.rpm if settings is not None else None,
            tpm_limit=settings.tpm if settings is not None else None,
        )
        dashboard._autostart = True
        return dashboard

    # ----------------------------------------------------------------------- Reporter

    def handle(self, event: ev.Event) -> None:
        try:
            with self._lock:
                self.state.apply(event)
            if self._autostart and self._live is None and not self._closed:
                self.start()
        except Exception:  # a display bug must not stop the run
            return

    def start(self) -> None:
        """Start drawing. Rich's own thread redraws; the event loop never waits for the terminal."""
        if self._live is not None:
            return
        self._closed = False
        self._live = Live(
            console=self.console,
            get_renderable=self._render_safely,
            refresh_per_second=self._refresh_per_second,
            transient=False,
            # Print-outs of our own stream go above the live area; never capture the other stream
            # (with --json, stdout carries the machine-readable result).
            redirect_stdout=self.console.file is sys.stdout,
            redirect_stderr=True,
        )
        self._live.start(refresh=True)

    def refresh(self) -> None:
        """Redraw now (the automatic refresh does this a few times a second anyway)."""
        if self._live is not None:
            self._live.refresh()

    def close(self) -> None:
        """Draw the last frame, stop `Live` and give the cursor back. Safe to call twice or after Ctrl-C."""
        self._closed = True
        live, self._live = self._live, None
        if live is None:
            return
        try:
            live.stop()
        except BaseException:
            # Whatever happened while stopping, leave the terminal usable.
            self.console.show_cursor(True)
            raise

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def logging_handler(self, level: int = logging.INFO) -> logging.Handler:
        """A log handler on the same console: its lines are printed above the live area."""
        return RichHandler(
            level=level,
            console=self.console,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
        )

    # ----------------------------------------------------------------------- drawing

    def _render_safely(self) -> RenderableType:
        try:
            return self.render()
        except Exception as exc:  # keep the run going even if a frame cannot be drawn
            return Text(f"(dashboard could not draw this frame: {type(exc).__name__})", style="dim")

    def render(self, now: float | None = None) -> RenderableType:
        """The whole dashboard as one renderable, for `now` (default: the current time)."""
        with self._lock:
            state = self.state
            now = state.resolve_now(now)
            wide = self.console.width >= NARROW_WIDTH
            parts: list[RenderableType] = [self._header(now, wide)]
            if not self._quiet:
                selection = self._select(self._row_budget(wide))
                parts.append(self._table(selection, now))
            notices = self._footer(wide)
            if notices is not None:
                parts.append(notices)
            return Group(*parts)

    def _row_budget(self, wide: bool) -> int:
        if self._max_rows is not None:
            return max(1, self._max_rows)
        notices = min(len(self.state.notices), self._notice_count(wide))
        footer = notices + 1 if notices else 0
        return max(_MIN_ROWS, self.console.height - _HEADER_LINES - _TABLE_CHROME - footer - 1)

    def _notice_count(self, wide: bool) -> int:
        return self._max_notices if wide else max(1, self._max_notices - 2)

    # header ------------------------------------------------------------------

    def _header(self, now: float, wide: bool) -> RenderableType:
        state = self.state
        title = _line("")
        title.append(f"Run {state.run_id or '…'}", style="bold")
        if state.source:
            title.append(f" · {state.source}")
        if state.model:
            title.append(f" · {state.model}", style="cyan")
        if state.dry_run:
            title.append(" · DRY RUN", style="bold yellow")
        if state.exit_code is not None:
            style = "green" if state.exit_code == 0 else "red"
            title.append(f" · finished (exit {state.exit_code})", style=style)

        progress = _line("")
        progress.append(f"Elapsed {format_duration(state.elapsed_s(now))}")
        eta = state.eta_s(now)
        progress.append(f"  ETA {format_duration(eta) if eta is not None else '-'}  ")
        progress.append_text(_bar(state.progress(), 30 if wide else 16))
        progress.append(f" {state.images_settled:,}/{state.images_total:,} images")
        progress.append(f" ({state.progress():.0%})")
        if state.images_failed:
            progress.append(f" · {state.images_failed:,} failed", style="red")

        return Group(title, progress, self._load_line(), self._spend_line(wide), self._rate_line(now))

    def _load_line(self) -> Text:
        state = self.state
        line = _line(f"In flight: {state.requests_in_flight}/{state.max_workers or '-'} requests")
        line.append(f" · {state.categories_running}/{state.category_workers or '-'} categories")
        line.append(f" · properties {state.properties_finished}/{len(state.properties)} done")
        if state.skipped_images:
            line.append(f" · {len(state.skipped_images)} skipped", style="yellow")
        return line

    def _spend_line(self, wide: bool) -> Text:
        state = self.state
        usage = state.usage
        line = _line("Spend ")
        line.append(format_cost(usage.cost_usd, usage.cost_known), style="bold")
        projected = state.projected_cost_usd()
        if projected is not None:
            line.append(f" · projected {format_cost(projected, usage.cost_known)}")
        left = state.budget_left_usd()
        if left is not None and state.max_cost_usd is not None:
            style = "red" if left < 0.1 * state.max_cost_usd else ""
            line.append(" · budget left ")
            line.append(format_cost(max(0.0, left)), style=style)
            line.append(f" of ${state.max_cost_usd:,.2f}")
        if wide:
            line.append(
                f" · tokens {usage.prompt_tokens:,} in / {usage.completion_tokens:,} out", style="dim"
            )
        return line

    def _rate_line(self, now: float) -> Text:
        state = self.state
        rpm = state.requests_per_minute(now)
        tpm = state.tokens_per_minute(now)
        line = _line(f"Rate {rpm} req/min")
        if state.rpm_limit:
            line.append(f" of {state.rpm_limit:,}", style="dim")
        line.append(f" · {format_count(tpm)} tok/min")
        if state.tpm_limit:
            line.append(f" of {format_count(state.tpm_limit)}", style="dim")
        line.append(f" · {state.usage.requests:,} requests")
        if state.retries:
            line.append(f" · {state.retries} {'retry' if state.retries == 1 else 'retries'}", style="yellow")
        pause = state.pause_left_s(now)
        if pause is not None:
            line.append(f" · paused {pause:.0f}s: {state.pause_reason}", style="bold yellow")
        return line

    # rows --------------------------------------------------------------------

    def _select(self, budget: int) -> _Selection:
        """Pick the rows worth a line: running, then failed, just done, queued, then finished properties."""
        state = self.state
        picked: dict[tuple[str, str], CategoryRow] = {}
        # Reserve room for the "... more" lines so the cap is a real cap.
        room = max(1, budget - 2)

        def take(rows: Iterable[CategoryRow]) -> None:
            for row in rows:
                if len(picked) >= room:
                    return
                picked.setdefault(row.key, row)

        open_recent = [
            state.rows[key] for key in reversed(state.recent_rows) if not state.properties[key[0]].finished
        ]
        take(state.active.values())
        take(row for row in open_recent if row.state == FAILED)
        take(row for row in open_recent if row.state == DONE)
        # The queue can hold every category of a big run: only look at the first few.
        take(itertools.islice(state.queued.values(), room))

        finished = [state.properties[pid] for pid in reversed(state.recent_properties)]
        finished = finished[: max(0, room - len(picked))]
        finished.reverse()

        selection = _Selection(
            rows=sorted(picked.values(), key=lambda r: (state.properties[r.property_id].order, r.order)),
            properties=finished,
        )
        waiting_or_running = len(state.active) + len(state.queued)
        shown = sum(1 for r in picked.values() if r.state in (QUEUED, RUNNING, RETRYING))
        selection.hidden_rows = max(0, waiting_or_running - shown)
        selection.hidden_properties = state.properties_finished - len(finished)
        if selection.hidden_properties:
            selection.hidden_usage.add(state.finished_usage)
            selection.hidden_images = state.finished_images_done
            for prop in finished:
                _subtract(selection.hidden_usage, prop.usage)
                selection.hidden_images -= prop.images_done
        return selection

    def _table(self, selection: _Selection, now: float) -> Table:
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
            expand=True,
            header_style="bold",
        )
        columns = _visible_columns(self.console.width)
        for name in columns:
            _add_column(table, name)

        if selection.hidden_properties:
            usage = selection.hidden_usage
            cells: dict[str, RenderableType] = {
                "property": Text(f"… {selection.hidden_properties:,} more", style="dim"),
                "category": Text("properties", style="dim"),
                "images": f"{selection.hidden_images:,}",
                "tokens": format_count(usage.tokens),
                "cost": format_cost(usage.cost_usd, usage.cost_known),
                "state": Text(DONE, style="green"),
            }
            table.add_row(*_cells(cells, columns))
        for prop in selection.properties:
            table.add_row(*_cells(self._property_cells(prop), columns))
        previous: str | None = None
        for row in selection.rows:
            cells = self._row_cells(row, now)
            if row.property_id == previous:
                cells["property"] = ""  # one property's rows read as a group
            previous = row.property_id
            table.add_row(*_cells(cells, columns))
        if selection.hidden_rows:
            more = Text(f"… {selection.hidden_rows:,} more categories waiting or running", style="dim")
            table.add_row(*_cells({"property": more}, columns))
        if not table.rows:
            table.add_row(*_cells({"property": Text("waiting for work…", style="dim")}, columns))
        return table

    def _row_cells(self, row: CategoryRow, now: float) -> dict[str, RenderableType]:
        fraction = row.batches_done / row.batches if row.batches else 0.0
        return {
            "property": row.property_id,
            "category": row.category,
            "batches": f"{row.batches_done}/{row.batches or '?'}",
            "bar": _bar(fraction, 10),
            "images": f"{row.images_done}/{row.images}",
            "tokens": format_count(row.usage.tokens),
            "cost": format_cost(row.usage.cost_usd, row.usage.cost_known) if row.usage.requests else "-",
            "retries": str(row.retries) if row.retries else "",
            "state": _state_text(row, now),
        }

    def _property_cells(self, prop: PropertyRow) -> dict[str, RenderableType]:
        rows = list(self.state.rows_of(prop.property_id))
        batches = sum(r.batches for r in rows)
        batches_done = sum(r.batches_done for r in rows)
        count = len(prop.categories)
        label = f"{count} categor{'y' if count == 1 else 'ies'}"
        status = prop.status
        state = Text(status, style=_STATE_STYLES.get(status, ""))
        if prop.failed_categories:
            state = Text(f"{len(prop.failed_categories)} failed: {', '.join(prop.failed_categories)}")
            state.stylize("red")
        return {
            "property": Text(prop.property_id, style="bold"),
            "category": label,
            "batches": f"{batches_done}/{batches}",
            "bar": _bar(1.0 if batches else 0.0, 10),
            "images": f"{prop.images_done:,}",
            "tokens": format_count(prop.usage.tokens),
            "cost": format_cost(prop.usage.cost_usd, prop.usage.cost_known),
            "retries": str(prop.retries) if prop.retries else "",
            "state": state,
        }

    # footer ------------------------------------------------------------------

    def _footer(self, wide: bool) -> RenderableType | None:
        state = self.state
        count = self._notice_count(wide)
        notices = list(state.notices)[-count:]
        if not notices:
            return None
        lines: list[Text] = [Text("Recent warnings", style="bold")]
        for notice in notices:
            stamp = format_duration(notice.at - state.started_at) if state.started_at is not None else ""
            line = Text(f"{stamp} ", style="dim")
            line.append(notice.text, style="red" if notice.level == ERROR else "yellow")
            if notice.count > 1:
                line.append(f" (×{notice.count})", style="dim")
            line.no_wrap = True
            line.overflow = "ellipsis"
            lines.append(line)
        return Group(*lines)


_COLUMNS = ("property", "category", "batches", "bar", "images", "tokens", "cost", "retries", "state")
# On narrower terminals the state (with its reason) matters more than these; totals are in the header.
_DROPPED_BELOW = {FULL_WIDTH: ("tokens", "retries"), NARROW_WIDTH: ("bar", "images", "tokens", "retries")}


def _visible_columns(width: int) -> tuple[str, ...]:
    dropped: tuple[str, ...] = ()
    for limit, names in _DROPPED_BELOW.items():
        if width < limit:
            dropped = names
    return tuple(name for name in _COLUMNS if name not in dropped)


def _add_column(table: Table, name: str) -> None:
    match name:
        case "property":
            table.add_column("Property", no_wrap=True, overflow="ellipsis", max_width=24)
        case "category":
            table.add_column("Category", no_wrap=True, overflow="ellipsis", max_width=18)
        case "bar":
            table.add_column("", no_wrap=True, width=10)
        case "state":
            table.add_column("State", no_wrap=True, overflow="ellipsis", ratio=1, min_width=8)
        case _:
            table.add_column(name.capitalize(), justify="right", no_wrap=True)


def _cells(values: dict[str, RenderableType], columns: tuple[str, ...]) -> list[RenderableType]:
    return [values.get(name, "") for name in columns]


def _state_text(row: CategoryRow, now: float) -> Text:
    style = _STATE_STYLES.get(row.state, "")
    if row.state == RETRYING:
        left = (row.resume_at - now) if row.resume_at is not None else 0.0
        countdown = f" in {left:.0f}s" if left > 0 else ""
        return Text(f"retrying{countdown}: {row.reason}", style=style)
    if row.state == FAILED:
        return Text(f"failed: {row.reason}", style=style)
    if row.state == RUNNING and row.reason:
        # A batch failed but the category goes on: say so.
        return Text(f"running (last error: {row.reason})", style=style)
    return Text(row.state, style=style)


def _line(text: str) -> Text:
    """A header line: cut with an ellipsis rather than wrapped, so the live area keeps its height."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def _bar(fraction: float, width: int) -> Text:
    """A bar that reads without colour too: heavy for done, light for the rest."""
    fraction = min(1.0, max(0.0, fraction))
    done = round(fraction * width)
    bar = Text("━" * done, style="green" if fraction >= 1 else "cyan")
    bar.append("─" * (width - done), style="dim")
    return bar


def _subtract(total: Usage, part: Usage) -> None:
    total.requests -= part.requests
    total.prompt_tokens -= part.prompt_tokens
    total.completion_tokens -= part.completion_tokens
    total.cached_tokens -= part.cached_tokens
    total.cost_usd -= part.cost_usd
    total.unknown_cost_requests -= part.unknown_cost_requests
