"""Deterministic sharding: N machines split the properties with no coordinator and no overlap.

A property belongs to shard `sha256(property_id) mod N`. The hash is the id's own (not Python's
`hash()`, which is salted per process), so every machine, every run and every Python version puts a
property in the same shard; shards never overlap and together cover every property.

Shards count from 0, like `JOB_COMPLETION_INDEX` (Kubernetes Indexed Job) and
`AWS_BATCH_JOB_ARRAY_INDEX` (AWS Batch array job), so `--shard 0/4` .. `--shard 3/4` are the four
shards and `--shards 4` reads K from whichever of those variables is set.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

from image_analyzer.errors import ConfigError

INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")
"""Where a shard index comes from when only `--shards N` is given, in the order they are tried."""

MAX_SHARDS = 100_000

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"--shard: N must be between 1 and {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"--shard {self.index}/{self.count}: K counts from 0 (like JOB_COMPLETION_INDEX), "
                f"so it must be between 0 and {self.count - 1}"
            )

    @property
    def label(self) -> str:
        """`K/N`, as written on the command line and in the run summary."""
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`"2/8"` -> `Shard(2, 8)`. Raises `ConfigError` naming `--shard` for anything else."""
    match = _SHARD.match(text)
    if match is None:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. --shard 0/4 (K counts from 0)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_env(shards: int, environ: Mapping[str, str] | None = None) -> Shard:
    """Shard K of `shards`, K read from `JOB_COMPLETION_INDEX` or `AWS_BATCH_JOB_ARRAY_INDEX`."""
    env = os.environ if environ is None else environ
    for name in INDEX_VARIABLES:
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        if not raw.strip().isdigit():
            raise ConfigError(f"{name}={raw!r} is not a shard index (a whole number from 0)")
        index = int(raw)
        if index >= shards:
            raise ConfigError(
                f"{name}={index} but --shards {shards}: the job runs more workers than shards "
                f"(set completions/array size to {shards}, or --shards to match)"
            )
        return Shard(index, shards)
    raise ConfigError(
        f"--shards {shards} needs JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or "
        "AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job) in the environment; elsewhere pass --shard K/N"
    )


def resolve_shard(
    shard: str | None, shards: int | None, environ: Mapping[str, str] | None = None
) -> Shard | None:
    """The shard from `--shard K/N` and/or `--shards N` (index from the environment); None: no sharding."""
    if shard is not None:
        parsed = parse_shard(shard)
        if shards is not None and shards != parsed.count:
            raise ConfigError(f"--shard {shard} and --shards {shards} disagree on N: give one of them")
        return parsed
    if shards is not None:
        return shard_from_env(shards, environ)
    return None


def shard_of(property_id: str, count: int) -> int:
    """The shard (0..count-1) a property id belongs to: sha256 of its UTF-8 bytes, mod count."""
    if count < 1:
        raise ValueError("count must be at least 1")
    digest = hashlib.sha256(property_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(property_id: str, shard: Shard | None) -> bool:
    """Whether this machine takes the property; everything belongs to the only shard of an unsharded run."""
    return shard is None or shard_of(property_id, shard.count) == shard.index


async def select(property_ids: AsyncIterable[str], shard: Shard | None) -> AsyncIterator[str]:
    """The ids of `property_ids` that fall in `shard`, in their original order."""
    async for property_id in property_ids:
        if in_shard(property_id, shard):
            yield property_id


def partition(property_ids: Iterable[str], count: int) -> list[list[str]]:
    """Every shard's ids, in input order: what `count` machines would each take."""
    shards: list[list[str]] = [[] for _ in range(count)]
    for property_id in property_ids:
        shards[shard_of(property_id, count)].append(property_id)
    return shards


def run_id_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """A run id every shard of one job shares, so `report` merges their summaries into one run.

    `IMAGE_ANALYZER_RUN_ID` wins (set it from the Kubernetes job name with the downward API); an AWS
    Batch array child's `AWS_BATCH_JOB_ID` is `<parent id>:<index>`, and the parent id is shared.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("IMAGE_ANALYZER_RUN_ID", "").strip()
    if explicit:
        return explicit
    aws_job = env.get("AWS_BATCH_JOB_ID", "").strip()
    if aws_job and ":" in aws_job:
        return aws_job.split(":", 1)[0]
    return None
