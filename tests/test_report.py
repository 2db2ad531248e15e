"""`image-analyzer report` logic on a fixture output folder with real run summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from image_analyzer.errors import ConfigError, OutputError
from image_analyzer.report import (
    CSV_COLUMNS,
    load_run_summaries,
    merge_runs,
    render_report,
    report_json,
    write_report_csv,
)
from tests.test_runstate import PID, PID2, RUN_ID, Script, complete_run_script, fold

PID3 = "30434108090030099"
EARLIER_RUN = "20261129-1000-c3d4"


def run_summary(events: list[Any], run_id: str, started: str, finished: str, **extra: Any) -> dict[str, Any]:
    """What the runner writes: the RunState summary plus the run's own fields."""
    summary = fold(events).summary()
    summary.update(
        run_id=run_id,
        started_at=started,
        finished_at=finished,
        duration_s=20.0,
        source="local:images",
        model="gpt-4.1-mini",
        dry_run=False,
        exit_code=1 if summary["failed_categories"] else 0,
        stopped_reason=None,
    )
    summary.update(extra)
    return summary


def earlier_run_events() -> list[Any]:
    script = Script()
    script.run_started()
    script.finished_property(1, PID3)  # 6 categories, 5 images and $0.0078 each
    return script.events


def write(runs_dir: Path, name: str, data: Any) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / name).write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "output" / "_runs"
    later = run_summary(complete_run_script().events, RUN_ID, "2026-11-30T05:42:00Z", "2026-11-30T05:42:20Z")
    earlier = run_summary(earlier_run_events(), EARLIER_RUN, "2026-11-29T10:00:00Z", "2026-11-29T10:01:05Z")
    earlier["duration_s"] = 65.0
    write(runs, f"{RUN_ID}.json", later)
    write(runs, f"{EARLIER_RUN}.json", earlier)
    (runs / "half-written.json").write_text('{"run_id": "x", ', encoding="utf-8")
    write(runs, "not-a-summary.json", [1, 2, 3])
    (runs / "notes.txt").write_text("ignored", encoding="utf-8")
    return tmp_path / "output"


def test_load_sorts_by_start_and_skips_corrupt_files(output_dir: Path) -> None:
    problems: list[str] = []
    summaries = load_run_summaries(output_dir, on_problem=problems.append)
    assert [s["run_id"] for s in summaries] == [EARLIER_RUN, RUN_ID]
    assert len(problems) == 2
    assert any("half-written.json: not valid JSON" in p for p in problems)
    assert any("not-a-summary.json: not a run summary" in p for p in problems)
    # Pointing at the _runs folder itself works too.
    assert len(load_run_summaries(output_dir / "_runs", on_problem=problems.append)) == 2


def test_load_warns_on_stderr_by_default(output_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_run_summaries(output_dir)
    assert "warning: skipping" in capsys.readouterr().err


def test_load_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="output dir not found"):
        load_run_summaries(tmp_path / "nope")
    assert load_run_summaries(tmp_path) == []


def test_tables_show_the_right_totals(output_dir: Path) -> None:
    console = Console(record=True, width=200, force_terminal=False, color_system=None)
    render_report(load_run_summaries(output_dir, on_problem=lambda _: None), console)
    text = console.export_text()
    lines = text.splitlines()

    def row(first: str, table_title: str) -> list[str]:
        """The cells of the first row in the titled table whose leading cells are `first`."""
        start = lines.index(next(line for line in lines if line.strip() == table_title))
        lead = first.split()
        return next(line.split() for line in lines[start:] if line.split()[: len(lead)] == lead)

    assert row(RUN_ID, "Runs") == [
        RUN_ID,
        "2026-11-30",
        "05:42",
        "0:00:20",
        "gpt-4.1-mini",
        "2",  # properties
        "16",  # images analysed
        "1",  # skipped
        "1",  # failed categories
        "22,000",
        "2,000",
        "$0.0312",
        "1",
    ]
    earlier = ["0:01:05", "gpt-4.1-mini", "1", "30", "0", "0", "24,000", "2,400", "$0.0468", "0"]
    assert row(EARLIER_RUN, "Runs")[3:] == earlier
    assert row(f"{RUN_ID} {PID}", "Properties") == [
        RUN_ID,
        PID,
        "12",
        "1",
        "kitchen",
        "18,000",
        "1,600",
        "$0.0234",
        "0:00:09",
    ]
    assert row(f"{EARLIER_RUN} {PID3}", "Properties")[4] == "-"
    assert text.index(EARLIER_RUN) < text.index(RUN_ID)  # oldest first
    assert (
        "2 run(s) · 3 property result(s) · 46 images analysed · 1 skipped · 1 failed categories · "
        "total cost $0.0780"
    ) in text


def test_json_report(output_dir: Path) -> None:
    data = report_json(load_run_summaries(output_dir, on_problem=lambda _: None))
    json.dumps(data)
    assert [r["run_id"] for r in data["runs"]] == [EARLIER_RUN, RUN_ID]
    assert data["totals"] == {
        "runs": 2,
        "properties": 3,
        "images": 21 + 30,
        "images_analysed": 46,
        "requests": 3 + 6,
        "prompt_tokens": 22_000 + 24_000,
        "completion_tokens": 2_000 + 2_400,
        "cached_tokens": 0,
        "skipped": 1,
        "failed_categories": 1,
        "cost_usd": pytest.approx(0.078),
        "cost_known": True,
        "duration_s": 85.0,
    }
    later = data["runs"][1]
    assert later["properties"][PID]["failed_categories"] == ["kitchen"]
    assert later["failed_categories"][0]["reason"] == "TimeoutError after 600 s"


def test_csv_one_row_per_property_per_run(output_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "report.csv"
    write_report_csv(load_run_summaries(output_dir, on_problem=lambda _: None), target)
    with target.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["run_id"], r["property_id"]) for r in rows] == [
        (EARLIER_RUN, PID3),
        (RUN_ID, PID),
        (RUN_ID, PID2),
    ]
    first = rows[1]
    assert (first["images_analysed"], first["skipped"], first["failed_categories"]) == ("12", "1", "kitchen")
    assert (first["prompt_tokens"], first["cost_usd"], first["cost_known"]) == ("18000", "0.0234", "True")
    assert first["status"] == "partial"


def test_csv_unwritable_path(output_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="--csv"):
        write_report_csv(load_run_summaries(output_dir, on_problem=lambda _: None), blocker / "r.csv")


def shard_summaries() -> list[dict[str, Any]]:
    """One run in two shards, one property each, plus shard 2 written again by a rerun."""
    whole = run_summary(complete_run_script().events, RUN_ID, "2026-11-30T05:42:00Z", "2026-11-30T05:42:20Z")
    shards = []
    for number, pid, start, end in (
        (1, PID, "2026-11-30T05:42:00Z", "2026-11-30T05:43:00Z"),
        (2, PID2, "2026-11-30T05:42:05Z", "2026-11-30T05:44:00Z"),
        (2, PID2, "2026-11-30T06:00:00Z", "2026-11-30T06:01:00Z"),
    ):
        prop = whole["properties"][pid]
        shards.append(
            {
                **{k: prop[k] for k in ("images", "images_analysed", "requests", "prompt_tokens")},
                "completion_tokens": prop["completion_tokens"],
                "cost_usd": prop["cost_usd"],
                "cost_known": True,
                "run_id": RUN_ID,
                "shard": f"{number}/2",
                "started_at": start,
                "finished_at": end,
                "model": "gpt-4.1-mini",
                "exit_code": 1 if pid == PID else 0,
                "properties": {pid: prop},
                "failed_categories": [f for f in whole["failed_categories"] if f["property_id"] == pid],
                "skipped_images": [s for s in whole["skipped_images"] if s["property_id"] == pid],
            }
        )
    return shards


def test_shards_of_one_run_merge_without_double_counting() -> None:
    runs = merge_runs(shard_summaries())
    assert len(runs) == 1
    run = runs[0]
    assert sorted(run["properties"]) == [PID, PID2]
    assert run["requests"] == 3
    assert run["images_analysed"] == 16
    assert run["prompt_tokens"] == 22_000
    assert run["cost_usd"] == pytest.approx(0.0312)
    assert len(run["failed_categories"]) == 1
    assert run["skipped"] == 1
    assert run["exit_code"] == 1
    assert run["started_at"] == "2026-11-30T05:42:00Z"
    assert run["finished_at"] == "2026-11-30T06:01:00Z"
    assert run["duration_s"] == 19 * 60
    assert sorted(run["shards"]) == ["1/2", "2/2"]

    # The same file twice (copied) counts once as well.
    single = shard_summaries()[0]
    assert merge_runs([single, dict(single)])[0]["requests"] == 2


def test_unknown_cost_dry_run_and_old_summaries_render(tmp_path: Path) -> None:
    unknown = run_summary(
        complete_run_script(unknown_cost=True).events,
        "r-unknown",
        "2026-11-28T00:00:00Z",
        "2026-11-28T00:01:00Z",
    )
    dry = run_summary(
        earlier_run_events(),
        "r-dry",
        "2026-11-27T00:00:00Z",
        "2026-11-27T00:00:01Z",
        dry_run=True,
        estimated=True,
        cost_usd=0.5,
    )
    old = {"run_id": "r-old"}  # a summary from long ago: nothing but its id
    console = Console(record=True, width=200, force_terminal=False, color_system=None)
    render_report([unknown, dry, old], console)
    text = console.export_text()
    unknown_row = next(line for line in text.splitlines() if line.strip().startswith("r-unknown"))
    assert "unknown" in unknown_row
    assert "$0.0000" not in unknown_row
    assert "r-dry (dry run)" in text
    assert "~$0.5000 (est.)" in text
    assert "r-old" in text
    assert "total cost ≥$0.5000" in text  # part of the spend is unknown: a lower bound

    empty = Console(record=True, width=80, force_terminal=False, color_system=None)
    render_report([], empty)
    assert "No run summaries found." in empty.export_text()


def test_narrow_report_keeps_what_matters_within_80_columns(output_dir: Path) -> None:
    console = Console(record=True, width=80, force_terminal=False, color_system=None)
    render_report(load_run_summaries(output_dir, on_problem=lambda _: None), console)
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in "".join(lines)  # nothing cut
    later = next(line.split() for line in lines if line.startswith(RUN_ID))
    assert later == [RUN_ID, "11-30", "05:42", "16", "1", "1", "$0.0312", "1"]
    assert f"Properties of run {RUN_ID}" in [line.strip() for line in lines]
    pid_row = next(line.split() for line in lines if line.startswith(PID))
    assert pid_row == [PID, "12", "1", "kitchen", "19.6k", "$0.0234", "0:00:09"]
