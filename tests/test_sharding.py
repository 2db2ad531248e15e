"""Deterministic sharding: shards partition any property list exactly, from flags or the environment."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_analyzer.errors import ConfigError
from image_analyzer.sharding import (
    Shard,
    in_shard,
    parse_shard,
    partition,
    resolve_shard,
    run_id_from_env,
    select,
    shard_from_env,
    shard_of,
)
from tests.fakeopenai import FakeOpenAIServer
from tests.helpers import invoke, make_tree

property_ids = st.lists(st.text(min_size=1, max_size=30), max_size=60)
shard_counts = st.integers(min_value=1, max_value=16)


@given(ids=property_ids, count=shard_counts)
def test_shards_partition_any_list_exactly(ids: list[str], count: int) -> None:
    shards = [[pid for pid in ids if in_shard(pid, Shard(k, count))] for k in range(count)]
    # Every id (duplicates included) lands in exactly one shard, and nothing else does.
    assert sorted(pid for shard in shards for pid in shard) == sorted(ids)
    for pid in ids:
        assert sum(pid in shard for shard in shards) == 1
    assert shards == partition(ids, count)


@given(ids=st.lists(st.text(min_size=1, max_size=30), unique=True, max_size=40), count=shard_counts)
def test_the_shard_of_a_property_does_not_depend_on_the_list_or_its_order(ids: list[str], count: int) -> None:
    forward = {pid: shard_of(pid, count) for pid in ids}
    backward = {pid: shard_of(pid, count) for pid in reversed(ids)}
    assert forward == backward
    assert all(0 <= k < count for k in forward.values())


def test_the_hash_is_sha256_of_the_id_not_pythons_salted_hash() -> None:
    expected = int.from_bytes(hashlib.sha256(b"30434108090030050").digest()[:8], "big") % 7
    assert shard_of("30434108090030050", 7) == expected
    # Another interpreter (with another hash seed) agrees.
    code = "from image_analyzer.sharding import shard_of; print(shard_of('30434108090030050', 7))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert int(out.stdout) == expected


def test_leading_zeros_and_case_make_different_ids() -> None:
    spread = {shard_of(pid, 1000) for pid in ("0042", "42", "abc", "ABC")}
    assert len(spread) == 4


def test_one_shard_takes_everything() -> None:
    assert all(in_shard(pid, Shard(0, 1)) for pid in ("a", "b", "0001"))
    assert in_shard("anything", None)


@pytest.mark.parametrize(("text", "index", "count"), [("0/4", 0, 4), ("3/4", 3, 4), (" 1 / 2 ", 1, 2)])
def test_parse_shard(text: str, index: int, count: int) -> None:
    shard = parse_shard(text)
    assert (shard.index, shard.count) == (index, count)
    assert shard.label == f"{index}/{count}"


@pytest.mark.parametrize(
    ("text", "hint"), [("4/4", "counts from 0"), ("1/0", "N must be"), ("2", "K/N"), ("a/b", "K/N")]
)
def test_bad_shards_say_what_is_wrong(text: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="--shard") as raised:
        parse_shard(text)
    assert hint in str(raised.value)


def test_shard_from_kubernetes_index() -> None:
    assert shard_from_env(4, {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 4)


def test_shard_from_aws_batch_array_index() -> None:
    assert shard_from_env(3, {"AWS_BATCH_JOB_ARRAY_INDEX": "0"}) == Shard(0, 3)


def test_kubernetes_index_wins_over_aws() -> None:
    env = {"JOB_COMPLETION_INDEX": "1", "AWS_BATCH_JOB_ARRAY_INDEX": "0"}
    assert shard_from_env(2, env) == Shard(1, 2)


def test_missing_index_names_both_variables() -> None:
    with pytest.raises(ConfigError) as raised:
        shard_from_env(4, {})
    message = str(raised.value)
    assert (
        "JOB_COMPLETION_INDEX" in message and "AWS_BATCH_JOB_ARRAY_INDEX" in message and "--shard" in message
    )


@pytest.mark.parametrize("value", ["4", "-1", "x"])
def test_an_index_out_of_range_or_not_a_number_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        shard_from_env(4, {"JOB_COMPLETION_INDEX": value})


def test_resolve_shard_from_flags_and_environment() -> None:
    assert resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "1"}) is None
    assert resolve_shard("1/3", None, {}) == Shard(1, 3)
    assert resolve_shard("1/3", 3, {}) == Shard(1, 3)
    assert resolve_shard(None, 3, {"AWS_BATCH_JOB_ARRAY_INDEX": "2"}) == Shard(2, 3)
    with pytest.raises(ConfigError, match="disagree"):
        resolve_shard("1/3", 4, {})


def test_run_id_shared_by_the_shards_of_one_job() -> None:
    assert run_id_from_env({"IMAGE_ANALYZER_RUN_ID": "nightly-7", "AWS_BATCH_JOB_ID": "abc:1"}) == "nightly-7"
    assert run_id_from_env({"AWS_BATCH_JOB_ID": "5c1a-parent:3"}) == "5c1a-parent"
    assert run_id_from_env({"AWS_BATCH_JOB_ID": "single-job"}) is None
    assert run_id_from_env({}) is None


@pytest.mark.anyio
async def test_select_filters_a_stream_in_order() -> None:
    ids = [f"p{i}" for i in range(50)]

    async def stream() -> object:
        for pid in ids:
            yield pid

    picked = [pid async for pid in select(stream(), Shard(1, 3))]  # type: ignore[arg-type]
    assert picked == partition(ids, 3)[1]
    assert picked and len(picked) < len(ids)
    assert [pid async for pid in select(stream(), None)] == ids  # type: ignore[arg-type]


@settings(max_examples=25)
@given(count=st.integers(min_value=2, max_value=8))
def test_shards_are_roughly_balanced_on_realistic_ids(count: int) -> None:
    ids = [f"{30434108090030050 + i:017d}" for i in range(2000)]
    sizes = [len(shard) for shard in partition(ids, count)]
    assert min(sizes) > 0.7 * len(ids) / count


def _run_takes_shards() -> bool:
    import inspect

    from image_analyzer.cli import run

    return {"shard", "shards"} <= set(inspect.signature(run).parameters)


@pytest.mark.skipif(not _run_takes_shards(), reason="cli.py `run` has no --shard/--shards yet")
def test_two_shards_against_one_server_analyse_every_image_once(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    layout = {f"{30434108090030050 + n:017d}": {"kitchen": 1 + n % 2, "bedroom": 1} for n in range(8)}
    make_tree(workdir / "images", layout)
    total_images = sum(sum(categories.values()) for categories in layout.values())
    common = [
        "run",
        "--all-properties",
        "--base-url",
        fake_openai.base_url,
        "--api-key",
        "sk-test-shards",
        "--json",
    ]

    first = invoke([*common, "--shard", "0/2"], env={"IMAGE_ANALYZER_RUN_ID": "nightly"})
    second = invoke(
        [*common, "--shards", "2"], env={"JOB_COMPLETION_INDEX": "1", "IMAGE_ANALYZER_RUN_ID": "nightly"}
    )
    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr

    hashes = fake_openai.successful_image_hashes()
    assert len(hashes) == len(set(hashes)) == total_images
    taken = [set(first.summary()["properties"]), set(second.summary()["properties"])]
    assert taken[0].isdisjoint(taken[1])
    assert taken[0] | taken[1] == set(layout)
    assert taken == [set(shard) for shard in partition(layout, 2)]
    assert {first.summary().get("shard"), second.summary().get("shard")} == {"0/2", "1/2"}

    report = invoke(["report", "output", "--json"])
    assert report.exit_code == 0
    merged = json.loads(report.stdout)
    assert merged["totals"]["properties"] == len(layout)
    assert merged["totals"]["images_analysed"] == total_images
