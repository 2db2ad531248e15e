"""The installed command as a user runs it, stopped the hard way: `kill -9`, Ctrl-C, SIGTERM, a budget
reached with requests in flight, and a second run on the same output dir.

Synchronisation is on observable state only: requests the fake server holds (`Held`), lines in the
manifest, and the stop notice the command prints. Nothing sleeps, nothing is timed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakeopenai import FakeOpenAIServer, Held, RequestRecord
from tests.helpers import installed_command, invoke, make_tree
from tests.test_reliability import (
    KEY,
    assert_every_json_parses,
    batch_requests,
    manifest_records,
    mentions,
    validate_ok,
)

WAIT = 60.0


@dataclass
class Running:
    """The installed command running in the background, its output going to files (no pipe can fill)."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def finish(self) -> int:
        return self.proc.wait(timeout=WAIT)

    def summary(self) -> dict[str, Any]:
        return dict(json.loads(self.out()))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGE_ANALYZER_", "S3_"))}
    env["OPENAI_API_KEY"] = KEY
    return env


def command(server: FakeOpenAIServer, *extra: str) -> list[str]:
    return [installed_command(), "run", "--all-properties", "--base-url", server.base_url, "--json", *extra]


@pytest.fixture
def start(workdir: Path) -> Iterator[Callable[..., Running]]:
    """Start `image-analyzer` in the background; whatever is still running at the end is killed."""
    started: list[Running] = []

    def run(args: Sequence[str], name: str = "run") -> Running:
        out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(list(args), cwd=workdir, env=_env(), stdout=stdout, stderr=stderr)
        running = Running(proc, out, err)
        started.append(running)
        return running

    yield run
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(timeout=WAIT)


def wait_for_text(server: FakeOpenAIServer, read: Callable[[], str], text: str) -> None:
    server.wait_until(lambda _: text in read(), timeout=WAIT)


def batch_lines(output: Path) -> int:
    return sum(1 for record in manifest_records(output) if record["kind"] == "batch")


def hash_sets(records: Sequence[RequestRecord]) -> list[frozenset[str]]:
    return sorted((frozenset(r.image_hashes) for r in records), key=sorted)


# --- kill -9 ----------------------------------------------------------------------------------------------


def test_kill_9_mid_run_leaves_valid_files_and_the_rerun_resends_only_what_was_in_flight(
    workdir: Path, fake_openai: FakeOpenAIServer, start: Callable[..., Running]
) -> None:
    layout = {
        "p1": {"bedroom": 1, "kitchen": 1},
        "p2": {"bedroom": 1, "kitchen": 12, "living": 1, "garage": 1},
    }
    make_tree(workdir / "images", layout)
    fake_openai.script_for(mentions("living"), [Held()])
    fake_openai.script_for(mentions("garage"), [Held()])
    output = workdir / "output"

    first = start(command(fake_openai, "--category-workers", "4"))
    fake_openai.wait_until(lambda s: s.in_flight == 2 and batch_lines(output) == 5, timeout=WAIT)
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    in_flight = [r for r in fake_openai.requests if r.outcome != "ok"]
    assert len(in_flight) == 2
    assert assert_every_json_parses(output, killed=True) > 0
    sent_before = len(fake_openai.requests)

    rerun = start(command(fake_openai, "--category-workers", "4"), name="rerun")
    assert rerun.finish() == 0, rerun.err()
    new_batches = [r for r in fake_openai.requests[sent_before:] if r.image_count]
    assert hash_sets(new_batches) == hash_sets(in_flight), "only the batches in flight at the kill"
    assert len(batch_requests(fake_openai)) == 7 + 2
    answered = fake_openai.successful_image_hashes()
    assert len(answered) == len(set(answered)) == 17, "no image is answered twice across both runs"
    assert rerun.summary()["reused_batches"] == 5
    assert_every_json_parses(output)
    validate_ok()


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code", "reason"),
    [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_stop_signal_lets_in_flight_requests_finish_and_saves_them(
    sig: signal.Signals,
    code: int,
    reason: str,
    workdir: Path,
    fake_openai: FakeOpenAIServer,
    start: Callable[..., Running],
) -> None:
    make_tree(workdir / "images", {"p1": {"cat1": 1, "cat2": 1, "cat3": 1, "cat4": 1}})
    fake_openai.script([Held(), Held()])
    run = start(command(fake_openai, "--category-workers", "2"))
    fake_openai.wait_until(lambda s: s.in_flight == 2, timeout=WAIT)
    run.proc.send_signal(sig)
    wait_for_text(fake_openai, run.err, f"stopping ({reason})")
    fake_openai.release()
    assert run.finish() == code, run.err()

    assert len(fake_openai.requests) == 2, "nothing starts after the signal"
    assert fake_openai.outcomes()["ok"] == 2
    assert batch_lines(workdir / "output") == 2
    summary = run.summary()
    assert (summary["exit_code"], summary["stopped_reason"]) == (code, reason)
    unsent = {s["category"] for s in summary["skipped_images"] if reason in s["reason"]}
    assert len(unsent) == 2
    saved = json.loads((workdir / "output" / "_runs" / f"{summary['run_id']}.json").read_text())
    assert saved["exit_code"] == code
    assert "Traceback" not in run.err()
    validate_ok()


def test_a_second_ctrl_c_stops_at_once_and_still_writes_the_summary(
    workdir: Path, fake_openai: FakeOpenAIServer, start: Callable[..., Running]
) -> None:
    make_tree(workdir / "images", {"p1": {"cat1": 1, "cat2": 1}, "p2": {"cat1": 1}})
    fake_openai.script_for(mentions("cat2"), [Held()])
    run = start(command(fake_openai, "--category-workers", "2", "--grace-seconds", "600"))
    fake_openai.wait_until(lambda s: s.in_flight == 1 and batch_lines(workdir / "output") == 2, timeout=WAIT)
    run.proc.send_signal(signal.SIGINT)
    wait_for_text(fake_openai, run.err, "Ctrl-C to stop at once")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.err()

    (held,) = [r for r in fake_openai.requests if "'cat2'" in r.text]
    assert held.outcome != "ok", "the stop did not wait for the held request"
    summary = run.summary()
    assert summary["stopped_reason"] == "interrupted (Ctrl-C)"
    assert (workdir / "output" / "_runs" / f"{summary['run_id']}.json").exists()
    assert "stopping now" in run.err() and "Traceback" not in run.err()
    assert_every_json_parses(workdir / "output")
    assert batch_lines(workdir / "output") == 2
    fake_openai.release()

    rerun = start(command(fake_openai, "--category-workers", "2"), name="rerun")
    assert rerun.finish() == 0, rerun.err()
    assert rerun.summary()["reused_batches"] == 2
    validate_ok()


# --- budget with requests in flight ---------------------------------------------------------------------


def test_budget_reached_lets_in_flight_requests_finish_and_starts_nothing_more(
    workdir: Path, fake_openai: FakeOpenAIServer, start: Callable[..., Running]
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 4}})
    shape = ["--parallel-categories", "--category-workers", "1", "--max-workers", "4", "--batch-size", "1"]
    plan = invoke(
        ["run", "--all-properties", "--base-url", fake_openai.base_url, "--dry-run", "--json", *shape]
    )
    estimate = plan.summary()["cost_usd"] / plan.summary()["requests"]
    cap = 3.5 * estimate
    fake_openai.script([Held()] * 4)
    run = start(command(fake_openai, *shape, "--max-cost", f"{cap:.8f}"))
    fake_openai.wait_until(lambda s: s.in_flight == 3, timeout=WAIT)
    wait_for_text(fake_openai, run.err, "stopping (budget reached)")
    fake_openai.release()
    assert run.finish() == 1, run.err()

    assert len(fake_openai.requests) == 3
    assert batch_lines(workdir / "output") == 3, "in-flight answers are saved"
    summary = run.summary()
    assert summary["stopped_reason"] == "budget reached"
    assert summary["cost_usd"] <= cap
    (unsent,) = [s for s in summary["skipped_images"] if "budget reached" in s["reason"]]
    assert unsent["category"] == "kitchen"


# --- one run per output dir -----------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_dir_refuses_and_never_interleaves(
    workdir: Path, fake_openai: FakeOpenAIServer, start: Callable[..., Running]
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    fake_openai.script([Held()])
    first = start(command(fake_openai))
    fake_openai.wait_until(lambda s: s.in_flight == 1, timeout=WAIT)

    second = subprocess.run(
        command(fake_openai), cwd=workdir, env=_env(), capture_output=True, text=True, timeout=WAIT
    )
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in second.stderr
    assert f"another run (pid {first.proc.pid})" in errors[0]
    assert len(fake_openai.requests) == 1

    fake_openai.release()
    assert first.finish() == 0, first.err()
    run_ids = {record["run_id"] for record in manifest_records(workdir / "output")}
    assert run_ids == {first.summary()["run_id"]}
    assert len(list((workdir / "output" / "_runs").iterdir())) == 1
