"""The fault-injection suite: about a quarter of all requests fail in mixed ways, and still every
category completes with valid output and no image is ever answered twice.

Which request gets which fault is decided from the request itself (its pictures, or its text for room
consolidation, and how many times that same batch was seen before), hashed with a seed: the plan is the
same whatever order concurrent requests arrive in, so the test is deterministic under concurrency.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakeopenai import (
    FakeOpenAIServer,
    Hang,
    Malformed,
    RequestRecord,
    ResetConnection,
    SchemaInvalid,
    Status,
)
from tests.helpers import invoke, make_tree
from tests.test_reliability import KEY, assert_every_json_parses, batch_requests, validate_ok

RATE = 0.25
SEED = 7
"""Any seed gives a deterministic plan; this one injects every kind of fault at least once."""
TRANSPORT_FAULTS: dict[str, Any] = {
    "429": Status(429, headers={"retry-after": "0"}),
    "500": Status(500),
    "503": Status(503, headers={"retry-after": "0"}),
    "hang": Hang(),
    "reset": ResetConnection(),
}
ANSWER_FAULTS: dict[str, Any] = {"malformed": Malformed(), "schema_invalid": SchemaInvalid()}
REASK_MARK = "Your previous answer was rejected"
MAX_FAULTS_PER_BATCH = 2
"""Caps one batch's backoff at about 1 + 2 seconds, so the suite stays fast."""


@dataclass
class FaultPlan:
    """Decides, once per request, whether it fails and how. A re-ask never gets an answer fault, so a
    batch is never failed for two bad answers (that path has its own tests)."""

    seed: int
    seen: Counter[str] = field(default_factory=Counter)
    decided: dict[int, str | None] = field(default_factory=dict)

    def fault_for(self, record: RequestRecord) -> str | None:
        if record.index not in self.decided:
            self.decided[record.index] = self._decide(record)
        return self.decided[record.index]

    def _decide(self, record: RequestRecord) -> str | None:
        identity = "|".join(sorted(record.image_hashes)) or record.text
        attempt = self.seen[identity]
        self.seen[identity] += 1
        digest = hashlib.sha256(f"{self.seed}|{identity}|{attempt}".encode()).digest()
        if attempt >= MAX_FAULTS_PER_BATCH or int.from_bytes(digest[:4]) / 2**32 >= RATE:
            return None
        kinds = list(TRANSPORT_FAULTS)
        if REASK_MARK not in record.text:
            kinds += list(ANSWER_FAULTS)
        return kinds[int.from_bytes(digest[4:8]) % len(kinds)]

    def install(self, server: FakeOpenAIServer) -> None:
        for name, action in {**TRANSPORT_FAULTS, **ANSWER_FAULTS}.items():
            server.script_for(self._picks(name), [action] * 10_000)

    def _picks(self, name: str) -> Callable[[RequestRecord], bool]:
        return lambda record: self.fault_for(record) == name

    def injected(self) -> Counter[str]:
        return Counter(kind for kind in self.decided.values() if kind is not None)


LAYOUT = {
    "p1": {"kitchen": 9, "bedroom": 5, "living": 4},
    "p2": {"kitchen": 6, "bathroom": 5, "exterior": 3},
    "0042": {"garage": 2, "kitchen": 8, "bedroom": 3},
}


def run_args(server: FakeOpenAIServer) -> list[str]:
    return [
        "run", "--all-properties", "--base-url", server.base_url, "--api-key", KEY, "--json",
        "--batch-size", "1", "--category-workers", "6", "--max-workers", "12",
        "--max-retries", "3", "--request-timeout", "1", "--rpm", "100000", "--tpm", "1000000000",
    ]  # fmt: skip


def test_a_quarter_of_requests_failing_in_mixed_ways_still_completes_everything(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    made = make_tree(workdir / "images", LAYOUT)
    plan = FaultPlan(seed=SEED)
    plan.install(fake_openai)
    result = invoke(run_args(fake_openai))
    assert result.exit_code == 0, result.stdout[-2000:] + result.stderr[-2000:]

    injected = plan.injected()
    requests = len(fake_openai.requests)
    assert set(injected) == set(TRANSPORT_FAULTS) | set(ANSWER_FAULTS), injected
    assert 0.15 <= sum(injected.values()) / requests <= 0.35, (injected, requests)

    summary = result.summary()
    assert summary["failed_categories"] == []
    assert summary["skipped_images"] == []
    assert summary["images_analysed"] == sum(len(paths) for paths in made.values())
    assert summary["retries"] >= sum(injected[k] for k in TRANSPORT_FAULTS)
    assert summary["reasks"] >= sum(injected[k] for k in ANSWER_FAULTS)

    answered = fake_openai.successful_image_hashes()
    assert len(answered) == len(set(answered)), "an image was answered twice"
    sent = {h for r in batch_requests(fake_openai) for h in r.image_hashes}
    assert set(answered) == sent
    assert len(sent) == sum(len(paths) for paths in made.values())
    assert_every_json_parses(workdir / "output")
    validate_ok()

    again = invoke(run_args(fake_openai))
    assert again.exit_code == 0
    assert len(fake_openai.requests) == requests, "a rerun after the storm sends nothing"
    assert again.summary()["reused_batches"] == len(sent)
