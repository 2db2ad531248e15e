"""Reporters that need no terminal: plain progress lines, JSON lines, and the log.

Each one folds events into its own `RunState` (O(1) per event) and writes what is worth seeing.
`handle()` never raises: a broken pipe or a full disk under the events file must not stop a run
that is spending money; the reporter goes quiet instead and says so once in the log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any, TextIO

from image_analyzer import events as ev
from image_analyzer.runstate import (
    ERROR,
    INFO,
    WARNING,
    Line,
    RunState,
    format_cost,
    format_duration,
)

_log = logging.getLogger(__name__)

_ASCII_ICONS = {INFO: "*", WARNING: "!", ERROR: "x"}
_LOG_LEVELS = {INFO: logging.INFO, WARNING: logging.WARNING, ERROR: logging.ERROR}


def _can_encode(stream: TextIO, sample: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class PlainReporter:
    """One line per event worth seeing, then a summary table at the end. Never any ANSI codes.

    With `quiet`, only warnings, errors and the final summary are printed.
    """

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._state = RunState()
        self._broken = False
        # A CI runner with an ASCII locale cannot print emoji; fall back rather than crash the write.
        self._unicode = _can_encode(stream, "🚀✅⚠️≥·")

    @property
    def state(self) -> RunState:
        return self._state

    def handle(self, event: ev.Event) -> None:
        try:
            lines = self._state.apply_and_describe(event)
            for line in lines:
                if not self._quiet or line.level != INFO:
                    self._write(self._format(line))
            if isinstance(event, ev.RunFinished):
                for text in summary_lines(self._state, run_summary=event.summary):
                    self._write(text)
        except Exception:  # a display problem must never stop the run
            _log.debug("plain reporter failed on %s", event.name, exc_info=True)

    def close(self) -> None:
        if self._broken:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._broken = True

    def _format(self, line: Line) -> str:
        icon = line.icon if self._unicode else _ASCII_ICONS[line.level]
        return f"{icon} {line.text}"

    def _write(self, text: str) -> None:
        if self._broken:
            return
        if not self._unicode:
            encoding = getattr(self._stream, "encoding", None) or "ascii"
            text = text.encode(encoding, "replace").decode(encoding)
        try:
            self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            # Broken pipe (`| head`) or a closed stream: stop writing, keep running.
            self._broken = True


def summary_lines(state: RunState, *, run_summary: dict[str, Any] | None = None) -> list[str]:
    """The end-of-run table, as plain text lines that read well in a CI log.

    `run_summary` (what `RunFinished` carries) adds why a run stopped early and a dry run's estimate."""
    run_summary = run_summary or {}
    header = ("Property", "Images", "Skipped", "Requests", "Tokens in", "Tokens out", "Cost", "Failed")
    rows: list[tuple[str, ...]] = []
    for pid, prop in state.properties.items():
        rows.append(
            (
                pid,
                f"{prop.images_done:,}",
                f"{prop.skipped:,}",
                f"{prop.usage.requests:,}",
                f"{prop.usage.prompt_tokens:,}",
                f"{prop.usage.completion_tokens:,}",
                format_cost(prop.usage.cost_usd, prop.usage.cost_known),
                str(len(prop.failed_categories)) if prop.failed_categories else "-",
            )
        )
    total = (
        "TOTAL",
        f"{state.images_done:,}",
        f"{len(state.skipped_images):,}",
        f"{state.usage.requests:,}",
        f"{state.usage.prompt_tokens:,}",
        f"{state.usage.completion_tokens:,}",
        format_cost(state.usage.cost_usd, state.usage.cost_known),
        str(len(state.failed_categories)) if state.failed_categories else "-",
    )
    widths = [max(len(r[i]) for r in (header, *rows, total)) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(fmt(header))
    exit_text = f", exit code {state.exit_code}" if state.exit_code is not None else ""
    title = f"Run {state.run_id or '?'} finished in {format_duration(state.elapsed_s())}{exit_text}"
    lines = ["", title, rule, fmt(header), rule, *(fmt(r) for r in rows), rule, fmt(total), rule]
    done = "planned" if state.dry_run else "analysed"
    lines.append(
        f"Images found: {state.images_total:,} · {done}: {state.images_done:,} "
        f"(reused from earlier runs: {state.images_reused:,}) · skipped files: {len(state.skipped_images):,}"
    )
    lines.append(
        f"Retries: {state.retries:,} · re-asks: {state.reasks:,} · reused batches: {state.reused_batches:,}"
    )
    for failed in state.failed_categories:
        lines.append(f"Failed: {failed['property_id']} / {failed['category']}: {failed['reason']}")
    if run_summary.get("estimated"):
        lines.append(_estimate_line(run_summary))
    if run_summary.get("stopped_reason"):
        lines.append(f"Stopped early: {run_summary['stopped_reason']}")
    return lines


def _estimate_line(run_summary: dict[str, Any]) -> str:
    cost = run_summary.get("cost_usd")
    known = bool(run_summary.get("cost_known", cost is not None))
    return (
        f"Dry run estimate: {run_summary.get('requests', 0):,} requests, "
        f"{run_summary.get('prompt_tokens', 0):,} prompt + {run_summary.get('completion_tokens', 0):,} "
        f"completion tokens, cost {format_cost(cost if isinstance(cost, (int, float)) else None, known)}"
    )


class JsonLinesReporter:
    """Every event as one JSON object per line, flushed as it is written, so a crash keeps the lines so far.

    The file is opened on the first event (or by `open()`, which the CLI can call up front to fail fast
    on a bad path) and closed by `close()`.
    """

    def __init__(self, path: Path, *, append: bool = False) -> None:
        self.path = path
        self._append = append
        self._file: IO[str] | None = None
        self._broken = False

    def open(self) -> None:
        """Open the file now. Raises `OutputError` naming the path when it cannot be written."""
        from image_analyzer.errors import OutputError
        from image_analyzer.store import describe_os_error

        if self._file is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a" if self._append else "w", encoding="utf-8")
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path) + " (--events)") from exc

    def handle(self, event: ev.Event) -> None:
        if self._broken:
            return
        try:
            if self._file is None:
                self.open()
            assert self._file is not None
            self._file.write(json.dumps(event.to_dict(), ensure_ascii=False, default=_jsonable) + "\n")
            self._file.flush()
        except Exception as exc:  # never stop the run for the events file
            self._broken = True
            _log.warning("events file %s: stopped writing: %s", self.path, exc)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            _log.warning("events file %s: %s", self.path, exc)
        finally:
            self._file = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


class LogReporter:
    """Events into a `logging.Logger`: progress at INFO, skips/retries/failures at WARNING or ERROR,
    per-batch detail at DEBUG."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._state = RunState()

    def handle(self, event: ev.Event) -> None:
        try:
            for line in self._state.apply_and_describe(event):
                self._logger.log(_LOG_LEVELS[line.level], "%s", line.text)
            self._log_detail(event)
        except Exception:  # logging trouble must not stop the run
            return

    def _log_detail(self, event: ev.Event) -> None:
        match event:
            case ev.BatchStarted() | ev.BatchFinished() | ev.BatchReused() | ev.RequestCost():
                if self._logger.isEnabledFor(logging.DEBUG):
                    self._logger.debug("%s %s", event.name, json.dumps(event.to_dict(), default=_jsonable))
            case ev.RunFinished():
                state = self._state
                self._logger.info(
                    "Run %s finished with exit code %s: %d images analysed, %d requests, "
                    "%d prompt + %d completion tokens, cost %s, %d skipped files, %d failed categories",
                    event.run_id,
                    event.exit_code,
                    state.images_done,
                    state.usage.requests,
                    state.usage.prompt_tokens,
                    state.usage.completion_tokens,
                    format_cost(state.usage.cost_usd, state.usage.cost_known),
                    len(state.skipped_images),
                    len(state.failed_categories),
                )

    def close(self) -> None:
        return None
