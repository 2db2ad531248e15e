"""`image-analyzer run` end to end against the fake OpenAI-compatible server, over real sockets."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from image_analyzer.cost import PriceTable
from image_analyzer.domain import Usage
from tests.fakeopenai import FakeOpenAIServer, Hang, Held, SchemaInvalid, Status
from tests.helpers import invoke, make_tree, property_json_files, run_installed

KEY = "sk-test-SECRET-value-1234567890"


def run_args(server: FakeOpenAIServer, *extra: str) -> list[str]:
    return ["run", "--all-properties", "--base-url", server.base_url, "--api-key", KEY, "--json", *extra]


def text_mentions(category: str) -> object:
    return lambda record: f"'{category}'" in record.text


def test_23_images_go_in_batches_of_10_10_3_and_each_image_is_sent_once(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    made = make_tree(workdir / "images", {"p1": {"kitchen": 23}})
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    sizes = sorted((r.image_count for r in fake_openai.requests if r.image_count), reverse=True)
    assert sizes == [10, 10, 3]
    hashes = fake_openai.successful_image_hashes()
    assert len(hashes) == len(set(hashes)) == 23
    summary = result.summary()
    assert summary["images"] == 23
    assert summary["skipped_images"] == []
    assert len(made["p1/kitchen"]) == 23


def test_images_carry_the_mime_type_of_the_bytes_sent_and_the_category_name(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"bedroom": 2}})
    assert invoke(run_args(fake_openai)).exit_code == 0
    (request,) = fake_openai.requests
    assert request.image_mimes == ["image/jpeg", "image/jpeg"]
    assert request.image_formats == ["JPEG", "JPEG"]
    assert "bedroom" in request.text
    assert request.temperature == 0
    assert request.response_format_name


def _run_in_thread(args: list[str]) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def target() -> None:
        box["result"] = invoke(args)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_parallel_categories_keep_exactly_category_workers_requests_in_flight(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(
        workdir / "images", {"p1": {f"cat{i}": 1 for i in range(4)}, "p2": {f"cat{i}": 1 for i in range(4)}}
    )
    fake_openai.script([Held(), Held(), Held()])
    thread, box = _run_in_thread(run_args(fake_openai, "--parallel-categories", "--category-workers", "3"))
    fake_openai.wait_until(lambda s: s.in_flight == 3, timeout=30)
    fake_openai.release()
    thread.join(60)
    assert box["result"].exit_code == 0  # type: ignore[attr-defined]
    assert fake_openai.max_in_flight == 3
    assert len(fake_openai.requests) == 8


def test_sequential_mode_has_one_request_in_flight(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"a": 1, "b": 1, "c": 12}})
    fake_openai.script([Held()] * 4)
    thread, box = _run_in_thread(run_args(fake_openai))
    for n in range(1, 5):
        # Request n is held until released; only then may request n + 1 arrive.
        fake_openai.wait_until(lambda s, n=n: len(s.requests) >= n and s.in_flight >= 1, timeout=30)
        fake_openai.release()
    thread.join(60)
    assert box["result"].exit_code == 0  # type: ignore[attr-defined]
    assert fake_openai.max_in_flight == 1


def test_429_with_retry_after_is_retried_and_counted(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    fake_openai.script([Status(429, headers={"retry-after": "0"})])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    assert [r.status for r in fake_openai.requests] == [429, 200]
    assert result.summary()["retries"] == 1


def test_401_is_not_retried_and_stops_the_run_with_one_line(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    fake_openai.script([Status(401)])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 1
    assert len(fake_openai.requests) == 1
    summary = result.summary()
    assert "authentication" in summary["fatal_error"].lower()
    assert KEY not in result.stdout + result.stderr
    assert KEY[:8] not in result.stdout + result.stderr.replace("sk-test", "")


def test_a_hung_category_times_out_and_the_others_go_on(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    fake_openai.script_for(text_mentions("kitchen"), [Hang()])
    result = invoke(run_args(fake_openai, "--category-timeout", "1", "--parallel-categories"))
    assert result.exit_code == 1
    summary = result.summary()
    failed = {(f["property_id"], f["category"]): f["reason"] for f in summary["failed_categories"]}
    assert list(failed) == [("p1", "kitchen")]
    assert "TimeoutError" in failed[("p1", "kitchen")]
    skipped = [s for s in summary["skipped_images"] if s["category"] == "kitchen"]
    assert len(skipped) == 1 and "not analysed" in skipped[0]["reason"]
    assert (workdir / "output" / "p1").is_dir()


def test_an_invalid_answer_is_asked_again_once(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    fake_openai.script([SchemaInvalid()])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    assert len(fake_openai.requests) == 2
    assert result.summary()["reasks"] == 1


def test_two_invalid_answers_fail_the_batch_with_the_reason(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 2}})
    fake_openai.script([SchemaInvalid(), SchemaInvalid()])
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 1
    assert len(fake_openai.requests) == 2
    (failed,) = result.summary()["failed_categories"]
    assert "schema" in failed["reason"]


def test_every_output_folder_passes_validate(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 12, "bedroom": 3}, "0042": {"exterior": 2}})
    assert invoke(run_args(fake_openai, "--parallel-categories")).exit_code == 0
    result = invoke(["validate", "output"])
    assert result.exit_code == 0, result.stdout
    assert "2 of 2 property folders valid" in result.stdout
    files = property_json_files(workdir / "output" / "p1")
    assert sum(1 for name in files if name.startswith("file_")) == 15
    assert len(list((workdir / "output" / "p1").glob("*.jpg"))) == 15
    summary = json.loads(next((workdir / "output" / "_runs").glob("*.json")).read_text())
    rooms = summary["properties"]["p1"]["rooms"]
    assert set(rooms) == {name for name in files if name.startswith("layout_")}
    assert sorted(i for ids in rooms.values() for i in ids) == sorted(
        name[len("file_") :].split("_", 1)[1].removesuffix(".json")
        for name in files
        if name.startswith("file_")
    )


def test_cost_is_the_servers_usage_priced_per_model(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 3, "bedroom": 2}})
    result = invoke(run_args(fake_openai, "--model", "gpt-4o-mini"))
    assert result.exit_code == 0, result.stderr
    summary = result.summary()
    served = [r for r in fake_openai.requests if r.status == 200]
    prompt = sum(r.prompt_tokens for r in served)
    assert summary["prompt_tokens"] == prompt
    usage = Usage(prompt_tokens=prompt, completion_tokens=summary["completion_tokens"])
    expected = PriceTable.builtin().cost("gpt-4o-mini", usage)
    assert expected is not None and expected > 0
    assert summary["cost_usd"] == pytest.approx(expected, abs=1e-6)


def test_unknown_model_cost_is_unknown_not_zero(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    result = invoke(run_args(fake_openai, "--model", "my-local-vlm"))
    summary = result.summary()
    assert summary["cost_known"] is False
    assert summary["prompt_tokens"] > 0


def test_seed_provenance_keeps_leading_zero_ids(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"0012345": {"kitchen": 1}, "777": {"kitchen": 1}})
    (workdir / "seed.csv").write_text(
        "parcel_id,Address,method,headers,url,multiValueQueryString,body,json,source_identifier,County\n"
        "0012345,1 Main St,GET,,https://county.example.com/parcel,,,,SRC-0012345,Palm\n"
    )
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    files = property_json_files(workdir / "output" / "0012345")
    layouts = [v for k, v in files.items() if k.startswith("layout_")]
    assert layouts and layouts[0]["request_identifier"] == "SRC-0012345"
    assert layouts[0]["source_http_request"] == {"method": "GET", "url": "https://county.example.com/parcel"}
    other = property_json_files(workdir / "output" / "777")
    assert any(v.get("request_identifier") == "777" for v in other.values() if isinstance(v, dict))
    assert "777" in result.stdout + result.stderr or any(
        "777" in str(n) for n in result.summary().get("notices", [])
    )


def test_dry_run_sends_nothing_and_reports_the_plan(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 23, "bedroom": 1}})
    result = invoke(["run", "--all-properties", "--base-url", fake_openai.base_url, "--dry-run", "--json"])
    assert result.exit_code == 0, result.stderr
    assert fake_openai.requests == []
    summary = result.summary()
    assert summary["dry_run"] is True
    assert summary["requests"] == 4
    assert summary["images"] == 24
    for key in ("prompt_tokens", "completion_tokens", "cost_usd", "failed_categories", "skipped_images"):
        assert key in summary
    assert summary["prompt_tokens"] > 0
    assert not (workdir / "output").exists()


def test_missing_key_is_one_line_naming_the_variable(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    result = invoke(["run", "--all-properties", "--base-url", fake_openai.base_url])
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert fake_openai.requests == []


def test_skipped_files_are_named_with_their_reason(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    (workdir / "images" / "p1" / "notes.txt").write_text("hi")
    (workdir / "images" / "p1" / "kitchen" / "readme.md").write_text("hi")
    (workdir / "images" / "p1" / "kitchen" / "broken.jpg").write_bytes(b"not really a jpeg")
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    reasons = {Path(s["location"]).name: s["reason"] for s in result.summary()["skipped_images"]}
    assert set(reasons) == {"notes.txt", "readme.md", "broken.jpg"}
    assert fake_openai.successful_image_hashes() and len(fake_openai.successful_image_hashes()) == 1


def test_rerun_sends_nothing_new_and_rebuilds_the_same_output(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 12, "bedroom": 2}})
    assert invoke(run_args(fake_openai, "--parallel-categories")).exit_code == 0
    first = property_json_files(workdir / "output" / "p1")
    sent = len(fake_openai.requests)
    again = invoke(run_args(fake_openai, "--parallel-categories"))
    assert again.exit_code == 0
    assert len(fake_openai.requests) == sent
    assert again.summary()["reused_batches"] == 3
    assert property_json_files(workdir / "output" / "p1") == first
    assert again.summary()["cost_usd"] == 0


def test_installed_command_runs_end_to_end(tmp_path: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(tmp_path / "images", {"30434108090030050": {"kitchen": 2, "bedroom": 1}})
    proc = run_installed(
        ["run", "--all-properties", "--base-url", fake_openai.base_url, "--json"],
        cwd=tmp_path,
        env={"OPENAI_API_KEY": KEY},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["images"] == 3
    assert KEY not in proc.stdout + proc.stderr
    log_text = (tmp_path / "logs" / "ai-analyzer.log").read_text()
    assert "30434108090030050" in log_text and KEY not in log_text
    assert Counter(r.status for r in fake_openai.requests) == Counter({200: 2})


def test_identical_images_in_a_category_are_sent_once_and_each_gets_a_file(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    made = make_tree(workdir / "images", {"p1": {"kitchen": 3}})
    folder = made["p1/kitchen"][0].parent
    (folder / "z_copy_of_first.jpg").write_bytes(made["p1/kitchen"][0].read_bytes())
    (folder / "z_copy_again.jpg").write_bytes(made["p1/kitchen"][0].read_bytes())
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stderr
    (request,) = fake_openai.requests
    assert request.image_count == 3
    summary = result.summary()
    assert summary["duplicate_images"] == 2
    assert summary["images_analysed"] == 5
    files = property_json_files(workdir / "output" / "p1")
    assert sum(1 for name in files if name.startswith("file_")) == 5
    assert invoke(["validate", "output"]).exit_code == 0


def test_learnt_limits_and_429_pauses_reach_the_event_stream(workdir: Path) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1, "bedroom": 1}})
    with FakeOpenAIServer.running_in_thread(rpm=300, window=60) as server:
        server.script([Status(429, headers={"retry-after": "0.01"})])
        result = invoke(run_args(server, "--events", "events.jsonl"))
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert "RateLimitPause" in names
    known = [e for e in events if e["event"] == "RateLimitsKnown"]
    assert known
    assert known[-1]["rpm_limit"] == 300
    assert names[0] == "RunStarted"
    assert names[-1] == "RunFinished"


def test_a_run_must_name_its_properties(workdir: Path, fake_openai: FakeOpenAIServer) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 1}})
    result = invoke(["run", "--base-url", fake_openai.base_url, "--api-key", KEY])
    assert result.exit_code == 2
    assert "--all-properties" in result.stderr
    assert fake_openai.requests == []


def test_full_batches_send_the_same_schema_so_the_service_can_cache_it(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"kitchen": 23, "bedroom": 10}})
    assert invoke(run_args(fake_openai)).exit_code == 0
    full = [r for r in fake_openai.requests if r.image_count == 10]
    assert len(full) == 3
    assert all(r.response_schema == full[0].response_schema for r in full)
    assert full[0].image_ids == [f"img_{n}" for n in range(1, 11)]
    assert "(photo img_00)" in full[0].text
    files = property_json_files(workdir / "output" / "p1")
    assert "file_kitchen_img_22.json" in files
