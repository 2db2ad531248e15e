"""`validate` and `report` on output made by a real run against the fake server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.fakeopenai import FakeOpenAIServer
from tests.helpers import invoke, make_tree


def _run(workdir: Path, server: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}, "p2": {"bedroom": 1}})
    args = ["run", "--all-properties", "--base-url", server.base_url, "--api-key", "sk-x", "--json"]
    assert invoke(args).exit_code == 0


def test_validate_names_file_path_and_message_and_writes_csv(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    _run(workdir, fake_openai)
    layout = next((workdir / "output" / "p1").glob("layout_*.json"))
    broken = json.loads(layout.read_text())
    broken["space_index"] = 0
    layout.write_text(json.dumps(broken))
    result = invoke(["validate", "output", "--csv", "errors.csv"])
    assert result.exit_code == 1
    assert "1 of 2 property folders valid" in result.stdout
    line = next(x for x in result.stdout.splitlines() if "space_index" in x)
    assert line.startswith("p1/")
    with (workdir / "errors.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert {r["property_id"] for r in rows} == {"p1"}
    assert any("space_index" in r["json_path"] for r in rows)
    assert all(r["data_group_cid"].startswith("bafkrei") for r in rows)


def test_validate_an_unknown_folder_is_one_line_exit_2(workdir: Path) -> None:
    result = invoke(["validate", "nowhere"])
    assert result.exit_code == 2
    assert "nowhere" in result.stderr


def test_report_totals_the_runs(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    _run(workdir, fake_openai)
    result = invoke(["report", "output", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["totals"]["images"] == 3
    assert len(report["runs"]) == 1
