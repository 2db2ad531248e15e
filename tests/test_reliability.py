"""Never lose work, never pay twice: resume, --force, --retry-failed, the lock, the budget, disk errors,
unusable answers and API faults, end to end against the fake server over real sockets."""

from __future__ import annotations

import io
import json
import os
import random
import resource
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from image_analyzer.lock import RunLock
from tests.fakeopenai import (
    Action,
    EmptyChoices,
    FakeOpenAIServer,
    Hang,
    Malformed,
    NoUsage,
    QuotaExceeded,
    Refusal,
    RequestRecord,
    ResetConnection,
    SchemaInvalid,
    Status,
    Truncated,
)
from tests.helpers import CliResult, installed_command, invoke, jpeg_bytes, make_tree

KEY = "sk-test-reliability-0123456789"


def run_args(server: FakeOpenAIServer, *extra: str) -> list[str]:
    return [
        "run", "--all-properties", "--base-url", server.base_url, "--api-key", KEY, "--json",
        "--max-retries", "2", *extra,
    ]  # fmt: skip


def mentions(category: str) -> Callable[[RequestRecord], bool]:
    return lambda record: f"'{category}'" in record.text


def manifest_records(output: Path) -> list[dict[str, Any]]:
    """Every complete line of the resume manifest (a torn last line is not a record)."""
    path = output / "_state" / "manifest.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def assert_every_json_parses(root: Path, *, killed: bool = False) -> int:
    """No torn or half-written JSON anywhere under `root`, and no temp file left beside them.

    Right after a `kill -9` (`killed`), a write that was between its temp file and the rename may have
    left that hidden temp file: it is never a data file, and the rerun that rewrites the folder removes
    it, which the check without `killed` then proves.
    """
    files = sorted(root.rglob("*.json"))
    for path in files:
        json.loads(path.read_text())
    leftovers = [p for p in root.rglob("*.tmp") if p.parent.name != "_state"]
    if killed:
        assert all(p.name.startswith(".") for p in leftovers), leftovers
    else:
        assert leftovers == [], leftovers
    return len(files)


def one_line_error(result: CliResult | subprocess.CompletedProcess[str]) -> str:
    stderr = result.stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def validate_ok(output: str = "output") -> None:
    result = invoke(["validate", output])
    assert result.exit_code == 0, result.stdout


def batch_requests(server: FakeOpenAIServer) -> list[RequestRecord]:
    """Requests that carried pictures (room consolidation requests are text only)."""
    return [r for r in server.requests if r.image_count]


def ok_hashes_by_request(server: FakeOpenAIServer) -> list[list[str]]:
    return [r.image_hashes for r in server.requests if r.outcome == "ok" and r.image_hashes]


# --- resume, --force, --retry-failed --------------------------------------------------------------------


def test_a_rerun_with_another_model_reanalyses_and_says_why(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 12, "bedroom": 2}})
    assert invoke(run_args(fake_openai, "--model", "gpt-4o-mini")).exit_code == 0
    assert len(batch_requests(fake_openai)) == 3

    changed = invoke(run_args(fake_openai, "--model", "gpt-4o"))
    assert changed.exit_code == 0, changed.stderr
    summary = changed.summary()
    assert len(batch_requests(fake_openai)) == 6
    assert summary["reanalysed_batches"] == 3
    assert summary["reanalysed_because"] == ["model gpt-4o-mini -> gpt-4o"]
    assert summary["reused_batches"] == 0

    sent = len(fake_openai.requests)
    same = invoke(run_args(fake_openai, "--model", "gpt-4o")).summary()
    assert len(fake_openai.requests) == sent
    assert (same["reused_batches"], same["reanalysed_batches"], same["reanalysed_because"]) == (3, 0, [])


def test_force_reanalyses_answered_batches_and_says_so(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    assert invoke(run_args(fake_openai)).exit_code == 0
    forced = invoke(run_args(fake_openai, "--force"))
    assert forced.exit_code == 0
    assert len(fake_openai.requests) == 2
    summary = forced.summary()
    assert (summary["reanalysed_batches"], summary["reanalysed_because"]) == (1, ["--force"])


def test_changed_image_bytes_resend_only_that_batch(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    made = make_tree(workdir / "images", {"p1": {"kitchen": 12, "bedroom": 1}})
    assert invoke(run_args(fake_openai)).exit_code == 0
    first = len(fake_openai.requests)
    made["p1/kitchen"][11].write_bytes(jpeg_bytes(999))
    again = invoke(run_args(fake_openai))
    assert again.exit_code == 0, again.stderr
    (resent,) = [r for r in fake_openai.requests[first:] if r.image_count]
    assert resent.image_count == 2 and "'kitchen'" in resent.text
    assert again.summary()["reused_batches"] == 2
    assert again.summary()["reanalysed_batches"] == 0


def test_retry_failed_resends_only_what_failed_last_time(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    fake_openai.script_for(mentions("kitchen"), [SchemaInvalid(), SchemaInvalid()])
    first = invoke(run_args(fake_openai))
    assert first.exit_code == 1
    assert [f["category"] for f in first.summary()["failed_categories"]] == ["kitchen"]
    assert [r["kind"] for r in manifest_records(workdir / "output")] == ["batch", "failure"]
    sent = len(fake_openai.requests)

    make_tree(workdir / "images", {"p2": {"garage": 1}}, start=50)
    retried = invoke(run_args(fake_openai, "--retry-failed"))
    new = fake_openai.requests[sent:]
    assert [("'kitchen'" in r.text, r.outcome) for r in new] == [(True, "ok")]
    summary = retried.summary()
    assert summary["reused_batches"] == 1
    garage = [s for s in summary["skipped_images"] if s["category"] == "garage"]
    assert len(garage) == 1 and "--retry-failed" in garage[0]["reason"]
    validate_ok()


def test_a_torn_manifest_line_costs_nothing_and_later_lines_stay_readable(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    assert invoke(run_args(fake_openai)).exit_code == 0
    manifest = workdir / "output" / "_state" / "manifest.jsonl"
    with manifest.open("ab") as handle:
        handle.write(b'{"v": 1, "key": "torn-by-kill-9", "kind": "bat')
    make_tree(workdir / "images", {"p2": {"kitchen": 1}}, start=70)
    again = invoke(run_args(fake_openai))
    assert again.exit_code == 0, again.stderr
    assert len(fake_openai.requests) == 3
    assert again.summary()["reused_batches"] == 2
    kinds = Counter(r["kind"] for r in manifest_records(workdir / "output"))
    assert kinds == Counter({"batch": 3})


# --- the lock ---------------------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_output_dir_refuses_in_one_line(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    holder = RunLock(workdir / "output" / "_state" / "lock")
    holder.acquire()
    try:
        refused = invoke(run_args(fake_openai))
    finally:
        holder.release()
    assert refused.exit_code == 1
    line = one_line_error(refused)
    assert "another run" in line and f"pid {os.getpid()}" in line and "--output-dir" in line
    assert fake_openai.requests == []
    assert invoke(run_args(fake_openai)).exit_code == 0


def test_a_lock_left_by_a_dead_process_is_broken(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    lock = workdir / "output" / "_state" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("4194000 some-host\n")
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    assert not lock.exists()


# --- budget ---------------------------------------------------------------------------------------------


def _cost_per_request(workdir: Path, server: FakeOpenAIServer, *extra: str) -> float:
    summary = invoke(run_args(server, "--output-dir", "measure", *extra)).summary()
    return float(summary["cost_usd"]) / int(summary["requests"])


def test_budget_stops_before_the_request_that_would_pass_the_cap(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"cat1": 1, "cat2": 1, "cat3": 1, "cat4": 1}})
    estimate = _cost_per_request(workdir, fake_openai, "--dry-run")
    actual = _cost_per_request(workdir, fake_openai)
    fake_openai.reset()
    # Room for the first request's estimate, then its real cost plus one more estimate, not a third.
    cap = estimate + 1.5 * actual
    result = invoke(run_args(fake_openai, "--max-cost", f"{cap:.8f}"))
    assert result.exit_code == 1
    summary = result.summary()
    assert summary["stopped_reason"] == "budget reached"
    assert len(fake_openai.requests) == 2
    assert summary["cost_usd"] <= cap
    assert len(manifest_records(workdir / "output")) == 2
    unsent = [s for s in summary["skipped_images"] if "budget reached" in s["reason"]]
    assert sorted(s["category"] for s in unsent) == ["cat3", "cat4"]
    validate_ok()


def test_a_budget_needs_a_known_price(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    result = invoke(run_args(fake_openai, "--model", "my-local-vlm", "--max-cost", "1"))
    assert result.exit_code == 2
    assert "--max-cost" in one_line_error(result) and "--prices" in result.stderr
    assert fake_openai.requests == []


# --- disk errors ----------------------------------------------------------------------------------------


def test_an_output_dir_that_is_a_file_is_one_line_and_sends_nothing(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    (workdir / "out").write_text("not a folder")
    result = invoke(run_args(fake_openai, "--output-dir", "out"))
    assert result.exit_code == 1
    assert "out" in one_line_error(result)
    assert fake_openai.requests == []
    assert (workdir / "out").read_text() == "not a folder"


def test_an_unreadable_manifest_is_one_line_and_sends_nothing(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    (workdir / "output" / "_state" / "manifest.jsonl").mkdir(parents=True)
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 1
    assert "resume manifest" in one_line_error(result)
    assert fake_openai.requests == []


def test_an_unwritable_property_folder_stops_the_run_and_keeps_what_was_done(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}, "p2": {"kitchen": 1}, "p3": {"kitchen": 1}})
    blocker = workdir / "output" / "p2"
    blocker.parent.mkdir()
    blocker.write_text("a file where the p2 folder should go")
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 1
    summary = result.summary()
    assert "cannot write" in summary["fatal_error"] and "p2" in summary["fatal_error"]
    assert len(fake_openai.requests) == 2, "p3 must not be sent once output cannot be written"
    assert len(manifest_records(workdir / "output")) == 2
    assert_every_json_parses(workdir / "output")
    assert (workdir / "output" / "p1").is_dir()

    blocker.unlink()
    again = invoke(run_args(fake_openai))
    assert again.exit_code == 0, again.stderr
    assert len(fake_openai.requests) == 3, "only p3 is new: p2's answer was saved before the write failed"
    assert again.summary()["reused_batches"] == 2
    validate_ok()


def noisy_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A JPEG that stays large after re-encoding (noise does not compress)."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_mid_run_is_one_line_exit_1_and_the_rerun_pays_nothing_twice(
    tmp_path: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(tmp_path / "images", {"p1": {"kitchen": 2}, "p3": {"kitchen": 1}})
    big = tmp_path / "images" / "p2" / "kitchen" / "noisy.jpg"
    big.parent.mkdir(parents=True)
    big.write_bytes(noisy_jpeg((640, 480), seed=1))
    assert len(big.read_bytes()) > 200_000
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGE_ANALYZER_"))}
    env["OPENAI_API_KEY"] = KEY
    args = [installed_command(), "run", "--all-properties", "--base-url", fake_openai.base_url, "--json"]
    full = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=_limit_file_size(100_000),
    )  # fmt: skip
    assert full.returncode == 1, full.stderr
    summary = json.loads(full.stdout)
    assert "disk full" in summary["fatal_error"] and "p2" in summary["fatal_error"]
    assert "Traceback" not in full.stderr
    assert len(fake_openai.requests) == 2, "nothing is sent after the disk refused a write"
    assert_every_json_parses(tmp_path / "output")

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(fake_openai.requests) == 3
    assert sorted(map(len, ok_hashes_by_request(fake_openai))) == [1, 1, 2]
    assert len({h for hs in ok_hashes_by_request(fake_openai) for h in hs}) == 4
    assert (tmp_path / "output" / "p2" / "kitchen_noisy.jpg").stat().st_size > 100_000


# --- unusable answers -------------------------------------------------------------------------------------

ANSWER_FAULTS: dict[str, tuple[Action, str]] = {
    "not json": (Malformed(), "not json"),
    "breaks the schema": (SchemaInvalid(), "schema"),
    "truncated": (Truncated(), "truncated"),
    "refused": (Refusal(), "refused"),
    "no choices": (EmptyChoices(), "empty_choices"),
}


@pytest.mark.parametrize("fault_name", list(ANSWER_FAULTS))
def test_an_unusable_answer_is_asked_again_once(
    fault_name: str, workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    fault, _ = ANSWER_FAULTS[fault_name]
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    fake_openai.script([fault])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    assert len(fake_openai.requests) == 2
    summary = result.summary()
    assert (summary["reasks"], summary["requests"]) == (1, 2)
    validate_ok()


@pytest.mark.parametrize("fault_name", list(ANSWER_FAULTS))
def test_two_unusable_answers_fail_the_batch_with_the_reason(
    fault_name: str, workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    fault, word = ANSWER_FAULTS[fault_name]
    make_tree(workdir / "images", {"p1": {"kitchen": 2, "bedroom": 1}})
    fake_openai.script_for(mentions("kitchen"), [fault, fault])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 1
    summary = result.summary()
    (failed,) = summary["failed_categories"]
    assert failed["category"] == "kitchen" and word in failed["reason"].lower()
    assert Counter("'kitchen'" in r.text for r in fake_openai.requests) == Counter({True: 2, False: 1})
    kitchen = [s for s in summary["skipped_images"] if s["category"] == "kitchen"]
    assert len(kitchen) == 2 and all("batch failed" in s["reason"] for s in kitchen)
    assert [r["kind"] for r in manifest_records(workdir / "output")].count("failure") == 1


def test_an_answer_without_usage_is_counted_with_unknown_cost(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    fake_openai.script([NoUsage()])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    summary = result.summary()
    assert summary["requests"] == 2
    assert summary["cost_known"] is False
    assert summary["cost_usd"] > 0, "the answer with usage is still priced"
    unpriced = [c for c, row in summary["properties"]["p1"]["categories"].items() if not row["cost_known"]]
    assert len(unpriced) == 1
    assert f"Completed category {unpriced[0]} (Cost: unknown)" in result.stderr


# --- API faults -------------------------------------------------------------------------------------------

ZERO_WAIT = {"retry-after": "0"}


@pytest.mark.parametrize(
    "faults",
    [
        [Status(429, headers=ZERO_WAIT)] * 2,
        [Status(500)],
        [Status(503, headers=ZERO_WAIT)],
        [ResetConnection()],
        [Hang()],
    ],
    ids=["429 burst", "500", "503", "connection reset", "hung request"],
)
def test_transient_api_faults_are_retried_and_counted(
    faults: list[Any], workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    fake_openai.script(faults)
    result = invoke(run_args(fake_openai, "--request-timeout", "1"))
    assert result.exit_code == 0, result.stderr
    assert len(fake_openai.requests) == len(faults) + 1
    assert result.summary()["retries"] == len(faults)
    assert len(fake_openai.successful_image_hashes()) == 2


def test_retries_running_out_fail_the_batch_and_mark_it_for_retry_failed(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    fake_openai.script([Status(500, headers=ZERO_WAIT)] * 2)
    result = invoke(run_args(fake_openai, "--max-retries", "1"))
    assert result.exit_code == 1
    (failed,) = result.summary()["failed_categories"]
    assert "HTTP 500" in failed["reason"]
    assert invoke(run_args(fake_openai, "--retry-failed")).exit_code == 0
    assert [r.status for r in fake_openai.requests] == [500, 500, 200]


def test_401_mid_run_stops_everything_and_keeps_what_was_answered(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"bedroom": 1, "kitchen": 1}, "p2": {"bedroom": 1}})
    fake_openai.script_for(mentions("kitchen"), [Status(401)])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 1
    summary = result.summary()
    assert "authentication failed" in summary["fatal_error"]
    assert summary["stopped_reason"] == summary["fatal_error"]
    assert [r.status for r in fake_openai.requests] == [200, 401], "no retry, nothing after the 401"
    assert KEY not in result.stdout + result.stderr
    files = {p.name for p in (workdir / "output" / "p1").iterdir()}
    assert "bedroom_img_00.jpg" in files and "file_bedroom_img_00.json" in files
    assert not (workdir / "output" / "p2").exists()

    resumed = invoke(run_args(fake_openai))
    assert resumed.exit_code == 0, resumed.stderr
    assert len(fake_openai.requests) == 4 and resumed.summary()["reused_batches"] == 1
    validate_ok()


def test_insufficient_quota_stops_at_once_without_retrying(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    fake_openai.script([QuotaExceeded()])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 1
    assert len(fake_openai.requests) == 1
    assert "quota" in result.summary()["fatal_error"]
    assert all("quota" in s["reason"] for s in result.summary()["skipped_images"])
