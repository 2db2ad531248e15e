from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_analyzer.errors import OutputError
from image_analyzer.lock import RunLock
from image_analyzer.manifest import Manifest, ManifestRecord, batch_key, parse_manifest_lines


def record(key: str, kind: str = "batch", answer: int = 1) -> ManifestRecord:
    return ManifestRecord(
        key=key,
        kind=kind,
        property_id="p1",
        category="kitchen",
        batch_index=0,
        payload={"answer": {"n": answer}},
    )


def test_batch_key_changes_with_every_input() -> None:
    base = dict(
        property_id="p", category="kitchen", image_hashes=["a", "b"], model="gpt-4o", prompt_version="1",
        schema_fingerprint="s",
    )  # fmt: skip
    key = batch_key(**base)  # type: ignore[arg-type]
    changes = [
        ("model", "gpt-4o-mini"),
        ("prompt_version", "2"),
        ("schema_fingerprint", "t"),
        ("image_hashes", ["b", "a"]),
        ("category", "bedroom"),
        ("property_id", "q"),
    ]
    for name, value in changes:
        assert batch_key(**{**base, name: value}) != key  # type: ignore[arg-type]
    assert batch_key(**base) == key  # type: ignore[arg-type]


def test_append_then_reload_finds_answers_and_failures(tmp_path: Path) -> None:
    path = tmp_path / "_state" / "manifest.jsonl"
    manifest = Manifest(path)
    manifest.append(record("k1"))
    manifest.append(record("k2", kind="failure"))
    manifest.close()
    again = Manifest(path)
    again.load()
    assert again.answered("k1") is not None
    assert again.answered("k1").payload["answer"] == {"n": 1}  # type: ignore[union-attr]
    assert again.failed_last_time("k2")
    assert again.answered("k2") is None


def test_torn_last_line_is_ignored_and_next_append_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(record("k1").to_line() + record("k2").to_line()[:25])
    manifest = Manifest(path)
    manifest.load()
    assert manifest.answered("k1") is not None
    assert manifest.answered("k2") is None
    manifest.append(record("k3"))
    manifest.close()
    reloaded = Manifest(path)
    reloaded.load()
    assert reloaded.answered("k3") is not None
    assert reloaded.answered_count == 2


def test_a_later_answer_clears_an_earlier_failure(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "m.jsonl")
    manifest.append(record("k", kind="failure"))
    manifest.append(record("k", answer=2))
    assert not manifest.failed_last_time("k")
    assert manifest.answered("k").payload["answer"] == {"n": 2}  # type: ignore[union-attr]


@given(
    keys=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=12),
    cut=st.integers(min_value=0, max_value=400),
    garbage=st.binary(max_size=40),
)
def test_reader_survives_torn_duplicated_and_garbage_lines(keys: list[str], cut: int, garbage: bytes) -> None:
    lines = [record(k, answer=i).to_line() for i, k in enumerate(keys)]
    blob = b"".join(lines)
    torn = blob[: max(0, len(blob) - cut)] + b"\n" + garbage.replace(b"\n", b"")
    parsed = list(parse_manifest_lines(torn.splitlines(keepends=True)))
    complete = [json.loads(line) for line in lines if blob.find(line) + len(line) <= len(blob) - cut]
    assert len(parsed) >= len(complete)
    assert all(r.key in {"a", "b", "c"} for r in parsed)


def test_lock_refuses_a_second_run_and_breaks_a_stale_lock(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "lock")
    first.acquire()
    second = RunLock(tmp_path / "lock")
    with pytest.raises(OutputError, match="another run") as refused:
        second.acquire()
    assert str(os.getpid()) in str(refused.value)
    first.release()
    (tmp_path / "lock").write_text("999999999 \n")
    third = RunLock(tmp_path / "lock")
    third.acquire()
    assert (tmp_path / "lock").read_text().split()[0] == str(os.getpid())
    third.release()
    assert not (tmp_path / "lock").exists()
