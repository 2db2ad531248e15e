"""`image-analyzer batch` end to end against the fake Files and Batches endpoints, over real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from image_analyzer.batch_api import (
    MAX_CUSTOM_ID,
    Backoff,
    BatchClient,
    BatchJob,
    FileLimits,
    JobStore,
    PartWriter,
    PlannedRequest,
    RequestEntry,
    custom_id_for,
    wait_until_done,
)
from image_analyzer.batch_cli import batch_app
from image_analyzer.cli import app as main_app
from image_analyzer.cost import PriceTable
from image_analyzer.domain import Usage
from image_analyzer.errors import ConfigError
from image_analyzer.manifest import Manifest
from tests.fakebatch import FakeBatchServer
from tests.fakeopenai import FakeOpenAIServer, Refusal, Truncated
from tests.helpers import CliResult, invoke, make_tree, property_json_files

KEY = "sk-test-BATCH-secret-0987654321"


@pytest.fixture
def fake_batch() -> Iterator[FakeBatchServer]:
    with FakeBatchServer.running_in_thread() as server:
        yield server


def _app() -> typer.Typer:
    """The real CLI once it mounts `batch`; until then the sub-app under a bare root."""
    if any(group.name == "batch" for group in main_app.registered_groups):
        return main_app
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """test root"""

    root.add_typer(batch_app, name="batch")
    return root


SELECTION = ("--all-properties", "--property-id", "--only-seeded")


def _with_selection(command: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """`run` and `batch submit` need a property selection; these tests mean every property by default."""
    if command in ("run", "submit") and not any(flag in extra for flag in SELECTION):
        return ("--all-properties", *extra)
    return extra


def batch(server: FakeOpenAIServer, command: str, *extra: str) -> CliResult:
    args = [
        "batch",
        command,
        "--base-url",
        server.base_url,
        "--api-key",
        KEY,
        *_with_selection(command, extra),
    ]
    # A wide console, so table cells are not folded across lines.
    result = CliRunner().invoke(_app(), args, env={"COLUMNS": "200"}, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def batch_json(server: FakeOpenAIServer, command: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = batch(server, command, "--json", *extra)
    assert result.stdout.strip(), result.stderr
    return result.exit_code, json.loads(result.stdout)


def run_args(server: FakeOpenAIServer, *extra: str) -> list[str]:
    return ["run", "--base-url", server.base_url, "--api-key", KEY, "--json", *_with_selection("run", extra)]


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


def uploaded_lines(server: FakeBatchServer) -> list[dict[str, Any]]:
    return [line for upload in server.uploads for line in upload.lines()]


def only_batch_id(server: FakeBatchServer) -> str:
    (created,) = server.batches
    return str(created["id"])


def saved_jobs(workdir: Path) -> list[BatchJob]:
    return JobStore(workdir / "output" / "_state" / "batches").load_all()


# --- custom ids and files -------------------------------------------------------------------------------


@given(
    property_id=st.text(min_size=1, max_size=80),
    category=st.text(min_size=1, max_size=80),
    index=st.integers(min_value=0, max_value=999),
    key=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_custom_ids_are_short_safe_and_carry_the_key(
    property_id: str, category: str, index: int, key: str
) -> None:
    custom_id = custom_id_for(property_id, category, index, key)
    assert len(custom_id) <= MAX_CUSTOM_ID
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in custom_id)
    parts = custom_id.split("_")
    assert len(parts) == 4
    assert parts[2] == str(index) and parts[3] == key[:16]


def test_custom_ids_read_like_the_batch() -> None:
    assert custom_id_for("0012345", "living room", 2, "ab" * 32) == "0012345_living-room_2_abababababababab"


def _item(n: int, size: int) -> PlannedRequest:
    entry = RequestEntry("p", "kitchen", n, (f"img_{n}",), (f"h{n}",), f"{n:064x}")
    line = (json.dumps({"custom_id": f"c{n}", "pad": "x" * size}) + "\n").encode()
    return PlannedRequest(f"c{n}", entry, line)


def _writer(tmp_path: Path, limits: FileLimits) -> tuple[JobStore, PartWriter]:
    store = JobStore(tmp_path / "batches")

    def new_job(name: str) -> BatchJob:
        return BatchJob(name, 0.0, "gpt-4o", "1", "fp", {}, {})

    return store, PartWriter(store, limits, new_job, "sub")


def test_parts_split_at_the_request_limit(tmp_path: Path) -> None:
    store, writer = _writer(tmp_path, FileLimits(max_requests=2, max_bytes=10_000))
    finished = [writer.add(_item(n, 10)) for n in range(5)]
    finished.append(writer.close())
    jobs = [job for job in finished if job is not None]
    assert [len(job.requests) for job in jobs] == [2, 2, 1]
    assert [len(store.jsonl_path(j.name).read_bytes().splitlines()) for j in jobs] == [2, 2, 1]
    assert [j.state for j in store.load_all()] == ["written"] * 3


def test_parts_split_before_the_byte_limit(tmp_path: Path) -> None:
    store, writer = _writer(tmp_path, FileLimits(max_requests=100, max_bytes=2_500))
    for n in range(5):
        writer.add(_item(n, 1_000))
    writer.close()
    sizes = [store.jsonl_path(job.name).stat().st_size for job in store.load_all()]
    assert len(sizes) == 3
    assert all(size <= 2_500 for size in sizes)


def test_one_request_over_the_file_limit_names_the_flags(tmp_path: Path) -> None:
    _, writer = _writer(tmp_path, FileLimits(max_requests=100, max_bytes=2_000))
    with pytest.raises(ConfigError, match="--batch-size"):
        writer.add(_item(0, 5_000))


# --- submit ----------------------------------------------------------------------------------------------


def test_submit_sends_exactly_the_requests_run_sends(
    workdir: Path, fake_openai: FakeOpenAIServer, fake_batch: FakeBatchServer
) -> None:
    made = make_tree(workdir / "images", {"p1": {"kitchen": 12, "bedroom": 2}, "0042": {"exterior": 1}})
    # An identical photo twice: `run` sends it once, and so must the batch.
    (workdir / "images" / "p1" / "bedroom" / "zz_copy.jpg").write_bytes(made["p1/bedroom"][0].read_bytes())
    assert invoke(run_args(fake_openai, "--output-dir", "sync-out")).exit_code == 0
    # Batch requests only: joining rooms across batches is a text request sent when collecting.
    sent_by_run = sorted(canonical(r.body) for r in fake_openai.requests if r.image_count)

    code, result = batch_json(fake_batch, "submit", "--all-properties")
    assert code == 0
    lines = uploaded_lines(fake_batch)
    assert sorted(canonical(line["body"]) for line in lines) == sent_by_run
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    assert {line["method"] for line in lines} == {"POST"}
    ids = [line["custom_id"] for line in lines]
    assert len(set(ids)) == len(ids) == 4
    assert result["requests"] == 4 and result["images"] == 15
    (upload,) = fake_batch.uploads
    assert upload.purpose == "batch"
    (create,) = fake_batch.batch_creates
    assert create["completion_window"] == "24h"
    assert create["endpoint"] == "/v1/chat/completions"
    (job,) = saved_jobs(workdir)
    assert create["metadata"] == {"image_analyzer_job": job.name}
    assert job.state == "submitted" and job.batch_id == only_batch_id(fake_batch)
    assert set(job.requests) == set(ids)
    assert {(e.property_id, e.category, e.batch_index) for e in job.requests.values()} == {
        ("p1", "kitchen", 0), ("p1", "kitchen", 1), ("p1", "bedroom", 0), ("0042", "exterior", 0),
    }  # fmt: skip
    assert not list((workdir / "output" / "_state" / "batches").glob("*.jsonl")), "JSONL kept after create"


def test_submit_skips_what_run_answered_and_what_is_already_waiting(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}, "p2": {"kitchen": 3}})
    assert invoke(run_args(fake_batch, "--property-id", "p1")).exit_code == 0
    code, result = batch_json(fake_batch, "submit", "--all-properties")
    assert code == 0
    assert result["already_answered"] == 1
    assert [line["custom_id"].split("_")[0] for line in uploaded_lines(fake_batch)] == ["p2"]

    code, again = batch_json(fake_batch, "submit", "--all-properties")
    assert code == 0
    assert again["requests"] == 0 and again["already_pending"] == 1
    assert len(fake_batch.uploads) == 1


def test_submit_splits_files_at_the_request_limit(workdir: Path, fake_batch: FakeBatchServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 5}})
    code, result = batch_json(fake_batch, "submit", "--batch-size", "1", "--max-requests-per-file", "2")
    assert code == 0
    assert [len(upload.lines()) for upload in fake_batch.uploads] == [2, 2, 1]
    assert len(fake_batch.batches) == 3 == len(result["jobs"])
    ids = [line["custom_id"] for line in uploaded_lines(fake_batch)]
    assert len(set(ids)) == 5


def test_a_machine_that_went_away_after_create_finds_its_batch_again(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    assert batch(fake_batch, "submit").exit_code == 0
    (job,) = saved_jobs(workdir)
    created = job.batch_id
    # As if the process died between creating the batch and saving its id.
    job.state, job.batch_id, job.status = "uploaded", None, None
    store = JobStore(workdir / "output" / "_state" / "batches")
    store.save(job)

    code, result = batch_json(fake_batch, "submit")
    assert code == 0
    assert len(fake_batch.batch_creates) == 1, "the batch was created twice"
    assert len(fake_batch.uploads) == 1
    assert [j["batch_id"] for j in result["resumed_jobs"]] == [created]
    assert result["requests"] == 0 and result["already_pending"] == 1


def test_a_part_written_but_never_uploaded_is_sent_by_the_next_submit(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    _, writer = _writer(workdir / "output" / "_state", FileLimits())
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
    line = json.dumps({"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": body})
    entry = RequestEntry("p9", "kitchen", 0, ("img_1",), ("h",), "f" * 64)
    writer.add(PlannedRequest("c1", entry, line.encode() + b"\n"))
    writer.close()
    (workdir / "images").mkdir()

    code, result = batch_json(fake_batch, "submit")
    assert code == 0
    (resumed,) = result["resumed_jobs"]
    assert resumed["state"] == "submitted" and resumed["batch_id"] == only_batch_id(fake_batch)
    assert [line["custom_id"] for line in uploaded_lines(fake_batch)] == ["c1"]


# --- status --------------------------------------------------------------------------------------------


def test_status_shows_each_jobs_state_and_counts(workdir: Path, fake_batch: FakeBatchServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 3}})
    assert batch(fake_batch, "submit", "--batch-size", "1").exit_code == 0
    batch_id = only_batch_id(fake_batch)
    fake_batch.set_status(batch_id, "in_progress")

    code, shown = batch_json(fake_batch, "status")
    assert code == 0
    (job,) = shown["jobs"]
    assert job["status"] == "in_progress" and job["batch_id"] == batch_id
    assert job["requests"] == 3 and job["request_counts"]["total"] == 3

    table = batch(fake_batch, "status")
    assert table.exit_code == 0
    assert "in_progress" in table.stdout and batch_id in table.stdout

    offline = batch(fake_batch, "status", "--no-refresh", "--json")
    assert json.loads(offline.stdout)["jobs"][0]["status"] == "validating"


def test_status_without_jobs_says_what_to_run(workdir: Path, fake_batch: FakeBatchServer) -> None:
    result = batch(fake_batch, "status")
    assert result.exit_code == 0
    assert "batch submit" in result.stdout


# --- collect ---------------------------------------------------------------------------------------------


def test_collect_writes_what_run_writes_and_run_then_sends_nothing(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 12, "bedroom": 2}})
    assert batch(fake_batch, "submit").exit_code == 0
    still = batch(fake_batch, "collect")
    assert still.exit_code == 0 and "still running" in still.stdout
    fake_batch.complete(only_batch_id(fake_batch))

    code, result = batch_json(fake_batch, "collect")
    assert code == 0, result
    assert result["answered"] == 3 and result["failed"] == []
    assert invoke(["validate", "output"]).exit_code == 0
    folder = workdir / "output" / "p1"
    assert len(list(folder.glob("*.jpg"))) == 14
    assert sum(1 for name in property_json_files(folder) if name.startswith("file_")) == 14

    manifest = Manifest(workdir / "output" / "_state" / "manifest.jsonl")
    manifest.load()
    (job,) = saved_jobs(workdir)
    records = [manifest.answered(e.key) for e in job.requests.values()]
    assert all(r is not None and r.kind == "batch" for r in records)
    assert all(
        set(r.payload) >= {"answer", "usage", "image_ids", "image_hashes", "model"} for r in records if r
    )

    sent = len(fake_batch.requests)
    rerun = invoke(run_args(fake_batch))
    assert rerun.exit_code == 0, rerun.stderr
    assert len(fake_batch.requests) == sent, "run asked again for answers the batch gave"
    assert rerun.summary()["reused_batches"] == 3


def test_collect_costs_usage_at_batch_prices_and_writes_a_run_summary(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2, "bedroom": 1}})
    assert batch(fake_batch, "submit", "--model", "gpt-4o-mini").exit_code == 0
    fake_batch.complete(only_batch_id(fake_batch))
    code, result = batch_json(fake_batch, "collect")
    assert code == 0
    usage = Usage(result["prompt_tokens"], result["completion_tokens"])
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in fake_batch.requests)
    full = PriceTable.builtin().cost("gpt-4o-mini", usage)
    assert full is not None and full > 0
    assert result["cost_usd"] == pytest.approx(full / 2, abs=1e-6)

    (summary_file,) = (workdir / "output" / "_runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["mode"] == "batch"
    assert summary["cost_usd"] == pytest.approx(full / 2, abs=1e-6)
    assert summary["prompt_tokens"] == usage.prompt_tokens
    report = invoke(["report", "output", "--json"])
    assert report.exit_code == 0
    assert json.loads(report.stdout)["totals"]["cost_usd"] == pytest.approx(full / 2, abs=1e-6)


def test_an_expired_batch_lists_the_rest_and_resubmit_sends_only_those(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 3}})
    assert batch(fake_batch, "submit", "--batch-size", "1").exit_code == 0
    first = only_batch_id(fake_batch)
    fake_batch.expire(first, answered=1)

    code, result = batch_json(fake_batch, "collect")
    assert code == 1
    assert result["answered"] == 1
    assert len(result["failed"]) == 2
    assert all(row["reason"].startswith("batch_expired") for row in result["failed"])
    expired_ids = {row["custom_id"] for row in result["failed"]}
    answered_id = {line["custom_id"] for line in fake_batch.batch_lines(first)} - expired_ids

    code, again = batch_json(fake_batch, "collect", "--resubmit")
    assert code == 0
    second = fake_batch.batches[-1]["id"]
    assert second != first
    assert {line["custom_id"] for line in fake_batch.batch_lines(second)} == expired_ids
    assert again["resubmitted"]["requests"] == 2

    fake_batch.complete(second)
    code, final = batch_json(fake_batch, "collect")
    assert code == 0 and final["answered"] == 2 and final["failed"] == []
    assert len(list((workdir / "output" / "p1").glob("*.jpg"))) == 3
    assert answered_id.isdisjoint(line["custom_id"] for line in fake_batch.batch_lines(second))


def test_run_retry_failed_finishes_what_the_batch_left_and_collect_stops_listing_it(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 3}})
    assert batch(fake_batch, "submit", "--batch-size", "1").exit_code == 0
    fake_batch.expire(only_batch_id(fake_batch), answered=1)
    code, result = batch_json(fake_batch, "collect")
    assert code == 1 and len(result["failed"]) == 2
    before = len(fake_batch.requests)

    rerun = invoke(run_args(fake_batch, "--batch-size", "1", "--retry-failed"))
    assert rerun.exit_code == 0, rerun.stderr
    assert len([r for r in fake_batch.requests[before:] if r.image_count]) == 2
    assert rerun.summary()["reused_batches"] == 1

    code, after = batch_json(fake_batch, "collect")
    assert code == 0
    assert after["failed"] == []


def test_refused_and_truncated_answers_are_listed_not_saved_but_still_cost(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 3}})
    assert batch(fake_batch, "submit", "--batch-size", "1").exit_code == 0
    fake_batch.script([Refusal(), Truncated()])
    fake_batch.complete(only_batch_id(fake_batch))

    code, result = batch_json(fake_batch, "collect")
    assert code == 1
    assert result["answered"] == 1
    reasons = sorted(row["reason"].split(":")[0] for row in result["failed"])
    assert reasons == ["refused", "truncated"]
    assert result["prompt_tokens"] == sum(r.prompt_tokens for r in fake_batch.requests)
    manifest = Manifest(workdir / "output" / "_state" / "manifest.jsonl")
    manifest.load()
    assert manifest.answered_count == 1


def test_a_failed_batch_lists_every_request_with_the_servers_reason(
    workdir: Path, fake_batch: FakeBatchServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2, "bedroom": 1}})
    assert batch(fake_batch, "submit").exit_code == 0
    fake_batch.fail(only_batch_id(fake_batch), "Input file is malformed.")
    result = batch(fake_batch, "collect")
    assert result.exit_code == 1
    assert result.stdout.count("failed: p1/") == 2
    assert "Input file is malformed." in result.stdout
    assert "--resubmit" in result.stdout


def test_collect_wait_polls_until_the_batch_is_done(workdir: Path) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    with FakeBatchServer.running_in_thread(auto_advance=True) as server:
        assert batch(server, "submit").exit_code == 0
        code, result = batch_json(server, "collect", "--wait", "--poll-interval", "0")
        assert code == 0
        assert result["answered"] == 1
        assert server.retrieves >= 3
        assert server.batches[0]["status"] == "completed"


@pytest.mark.anyio
async def test_wait_backs_off_between_polls(workdir: Path) -> None:
    job = BatchJob("j1", 0.0, "gpt-4o", "1", "fp", {}, {}, state="submitted")
    async with (
        FakeBatchServer() as server,
        BatchClient(api_key=KEY, base_url=server.base_url) as client,
    ):
        upload = workdir / "in.jsonl"
        upload.write_text("")
        job.apply_remote(await client.create(await client.upload(upload), "j1"))
        delays: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            delays.append(seconds)
            if len(delays) == 4:
                server.set_status(str(job.batch_id), "completed")

        backoff = Backoff(initial=10, factor=1.5, maximum=20)
        await wait_until_done([job], client, JobStore(workdir), backoff=backoff, sleep=fake_sleep)
    assert job.status == "completed"
    assert delays == [10, 15, 20, 20]
    assert server.retrieves == 5


def test_collect_without_jobs_is_a_no_op(workdir: Path, fake_batch: FakeBatchServer) -> None:
    code, result = batch_json(fake_batch, "collect")
    assert code == 0
    assert result["collected_jobs"] == [] and result["answered"] == 0


def test_the_key_is_never_written_to_job_files_or_output(workdir: Path, fake_batch: FakeBatchServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    submitted = batch(fake_batch, "submit")
    fake_batch.complete(only_batch_id(fake_batch))
    collected = batch(fake_batch, "collect")
    assert submitted.exit_code == collected.exit_code == 0
    for path in (workdir / "output").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            assert KEY not in path.read_text(), path
    assert KEY not in submitted.stdout + submitted.stderr + collected.stdout + collected.stderr


def test_a_wrong_key_is_one_line_without_the_key(workdir: Path) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    with FakeBatchServer.running_in_thread(api_key="sk-the-right-one-123456") as server:
        result = batch(server, "submit")
    assert result.exit_code == 1
    assert "authentication failed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert KEY not in result.stderr
