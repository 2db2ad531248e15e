"""Plain progress lines, JSON lines and the log reporter: content and order."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from image_analyzer import events as ev
from image_analyzer.errors import OutputError
from image_analyzer.reporters import JsonLinesReporter, LogReporter, PlainReporter
from tests.test_runstate import PID, PID2, RUN_ID, complete_run_script, mid_run_script


def plain_output(events: list[ev.Event], *, quiet: bool = False) -> list[str]:
    stream = io.StringIO()
    reporter = PlainReporter(stream, quiet=quiet)
    for event in events:
        reporter.handle(event)
    reporter.close()
    return stream.getvalue().splitlines()


def progress_part(lines: list[str]) -> list[str]:
    return lines[: lines.index("")]


def summary_part(lines: list[str]) -> list[str]:
    return lines[lines.index("") + 1 :]


def test_plain_lines_content_and_order() -> None:
    lines = plain_output(complete_run_script().events)
    assert progress_part(lines) == [
        f"▶️ Run {RUN_ID}: local:images with gpt-4.1-mini",
        f"📁 Found 2 category folders for {PID}: bedroom, kitchen",
        f"🚀 Processing 2 categories in parallel for {PID}",
        f"⚠️ Skipped images/{PID}/kitchen/notes.txt: not an image",
        f"🔍 Analyzing bedroom for {PID}: 12 images in 2 batches",
        f"🔍 Analyzing kitchen for {PID}: 5 images in 1 batch",
        f"🔁 Retrying bedroom batch 2/2 for {PID} in 2.0 s (429 rate limited)",
        "✅ Completed category bedroom (Cost: $0.0234)",
        f"❌ Category kitchen failed for {PID}: TimeoutError after 600 s",
        f"⚠️ Completed {PID} with 1 of 2 categories failed (Total cost: $0.0234)",
        f"📁 Found 1 category folder for {PID2}: bedroom",
        f"🚀 Processing 1 category in parallel for {PID2}",
        f"🔍 Analyzing bedroom for {PID2}: 4 images in 1 batch",
        "✅ Completed category bedroom (Cost: $0.0078)",
        f"✅ Completed all categories for {PID2} (Total cost: $0.0078)",
    ]


def test_plain_summary_table_is_readable_in_a_ci_log() -> None:
    summary = summary_part(plain_output(complete_run_script().events))
    assert summary[0] == f"Run {RUN_ID} finished in 0:00:20, exit code 1"
    rows = {line.split()[0]: line.split() for line in summary if line.split() and line[0].isalnum()}
    assert rows["Property"][:4] == ["Property", "Images", "Skipped", "Requests"]
    assert rows[PID] == [PID, "12", "1", "2", "18,000", "1,600", "$0.0234", "1"]
    assert rows[PID2] == [PID2, "4", "0", "1", "4,000", "400", "$0.0078", "-"]
    assert rows["TOTAL"] == ["TOTAL", "16", "1", "3", "22,000", "2,000", "$0.0312", "1"]
    assert f"Failed: {PID} / kitchen: TimeoutError after 600 s" in summary
    assert "Images found: 21 · analysed: 16 (reused from earlier runs: 0) · skipped files: 1" in summary
    # Columns line up: every table line is as wide as the rule.
    table = [line for line in summary if line.startswith(("Property", PID, "TOTAL"))]
    assert len({len(line) for line in table}) == 1


def test_plain_never_shows_unknown_cost_as_zero() -> None:
    lines = plain_output(complete_run_script(unknown_cost=True).events)
    text = "\n".join(lines)
    assert "$0.0000" not in text
    assert "✅ Completed category bedroom (Cost: unknown)" in lines
    assert f"✅ Completed all categories for {PID2} (Total cost: unknown)" in lines
    assert [line.split()[-2] for line in lines if line.startswith(("TOTAL", PID2))] == ["unknown", "unknown"]


def test_plain_quiet_prints_only_warnings_errors_and_summary() -> None:
    lines = plain_output(complete_run_script().events, quiet=True)
    assert progress_part(lines) == [
        f"⚠️ Skipped images/{PID}/kitchen/notes.txt: not an image",
        f"🔁 Retrying bedroom batch 2/2 for {PID} in 2.0 s (429 rate limited)",
        f"❌ Category kitchen failed for {PID}: TimeoutError after 600 s",
        f"⚠️ Completed {PID} with 1 of 2 categories failed (Total cost: $0.0234)",
    ]
    assert any(line.startswith("TOTAL") for line in summary_part(lines))


def test_plain_has_no_ansi_and_mentions_why_a_run_stopped() -> None:
    events = complete_run_script().events
    events[-1] = ev.RunFinished(
        at=events[-1].at, run_id=RUN_ID, summary={"stopped_reason": "budget of $10.00 reached"}, exit_code=1
    )
    lines = plain_output(events)
    assert "\x1b" not in "".join(lines)
    assert lines[-1] == "Stopped early: budget of $10.00 reached"


def test_plain_shows_a_dry_run_estimate() -> None:
    events = complete_run_script().events
    estimate = {"estimated": True, "requests": 12, "prompt_tokens": 50_000, "completion_tokens": 9_000}
    events[-1] = ev.RunFinished(
        at=events[-1].at, run_id=RUN_ID, summary={**estimate, "cost_usd": 0.25}, exit_code=0
    )
    assert plain_output(events)[-1] == (
        "Dry run estimate: 12 requests, 50,000 prompt + 9,000 completion tokens, cost $0.2500"
    )
    events[-1] = ev.RunFinished(
        at=events[-1].at, run_id=RUN_ID, summary={**estimate, "cost_usd": None}, exit_code=0
    )
    assert plain_output(events)[-1].endswith("cost unknown")


def test_plain_falls_back_to_ascii_on_an_ascii_stream() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", newline="\n")
    reporter = PlainReporter(stream)
    for event in complete_run_script().events:
        reporter.handle(event)
    reporter.close()
    text = raw.getvalue().decode("ascii")
    assert "* Completed category bedroom (Cost: $0.0234)" in text
    assert f"! Skipped images/{PID}/kitchen/notes.txt: not an image" in text
    assert f"x Category kitchen failed for {PID}: TimeoutError after 600 s" in text
    assert "Images found: 21 ? analysed: 16" in text


def test_plain_survives_a_closed_stream() -> None:
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    stream.close()
    for event in complete_run_script().events:
        reporter.handle(event)  # must not raise
    reporter.close()
    assert reporter.state.usage.requests == 3  # it kept counting


def test_json_lines_every_event_in_order(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    events = mid_run_script().events
    reporter = JsonLinesReporter(path)
    assert not path.exists()  # opened lazily
    for event in events:
        reporter.handle(event)
    # Flushed per line: readable before close, as after a crash.
    lines = path.read_text(encoding="utf-8").splitlines()
    reporter.close()
    assert len(lines) == len(events)
    decoded = [json.loads(line) for line in lines]
    assert [d["event"] for d in decoded] == [e.name for e in events]
    assert [d["at"] for d in decoded] == [e.at for e in events]
    discovered = next(d for d in decoded if d["event"] == "PropertyDiscovered")
    assert discovered["categories"] == ["bedroom", "kitchen", "bathroom", "living_room", "exterior", "pool"]
    assert decoded[0]["max_cost_usd"] == 10.0


def test_json_lines_truncates_unless_appending(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = ev.Notice(level="info", message="ünïcode stays readable")
    for append in (False, False, True):
        reporter = JsonLinesReporter(path, append=append)
        reporter.handle(event)
        reporter.close()
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 2
    assert "ünïcode" in text


def test_json_lines_bad_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    reporter = JsonLinesReporter(blocker / "events.jsonl")
    with pytest.raises(OutputError, match=r"events\.jsonl"):
        reporter.open()
    reporter.handle(ev.Notice(level="info", message="x"))  # must not raise
    reporter.close()


def test_log_reporter_levels() -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test_reporters.log_reporter")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    reporter = LogReporter(logger)
    for event in complete_run_script().events:
        reporter.handle(event)
    reporter.close()

    by_level = {
        level: [r.getMessage() for r in records if r.levelno == level]
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
    }
    assert f"Skipped images/{PID}/kitchen/notes.txt: not an image" in by_level[logging.WARNING]
    assert f"Retrying bedroom batch 2/2 for {PID} in 2.0 s (429 rate limited)" in by_level[logging.WARNING]
    assert f"Category kitchen failed for {PID}: TimeoutError after 600 s" in by_level[logging.ERROR]
    assert "Completed category bedroom (Cost: $0.0234)" in by_level[logging.INFO]
    assert by_level[logging.INFO][-1].startswith(
        f"Run {RUN_ID} finished with exit code 1: 16 images analysed"
    )
    assert any(m.startswith("RequestCost ") for m in by_level[logging.DEBUG])
