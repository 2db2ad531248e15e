"""The resume manifest: an append-only, fsync'd JSON-lines record of every answered batch.

One line per answered (or finally failed) batch, written as soon as the answer arrives. A rerun with the
same output dir loads it and skips every batch whose key (property, category, image bytes, model, prompt
version, schema set) is already answered. The reader tolerates a torn last line (a `kill -9` mid-write)
and duplicated lines (the last record for a key wins).

The manifest always lives on local disk: for local output under `<output>/_state/`, for S3 output in a
local state folder, because an object store cannot append.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_analyzer.errors import OutputError
from image_analyzer.store import describe_os_error

MANIFEST_VERSION = 1


def batch_key(
    *,
    property_id: str,
    category: str,
    image_hashes: Sequence[str],
    model: str,
    prompt_version: str,
    schema_fingerprint: str,
) -> str:
    """Content-addressed identity of one batch request: same inputs, same key, same answer reused."""
    material = json.dumps(
        [
            MANIFEST_VERSION,
            property_id,
            category,
            list(image_hashes),
            model,
            prompt_version,
            schema_fingerprint,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode()).hexdigest()


def content_key(*, property_id: str, category: str, image_hashes: Sequence[str]) -> str:
    """The same batch of pictures whatever model, prompt or schemas answered it (to say why it is redone)."""
    material = json.dumps([property_id, category, list(image_hashes)], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    key: str
    kind: str
    """`batch` (an accepted answer), `consolidation` (a room grouping answer) or `failure`."""
    property_id: str
    category: str
    batch_index: int
    payload: dict[str, Any] = field(default_factory=dict)

    def to_line(self) -> bytes:
        data = {
            "v": MANIFEST_VERSION,
            "key": self.key,
            "kind": self.kind,
            "property_id": self.property_id,
            "category": self.category,
            "batch_index": self.batch_index,
            **self.payload,
        }
        return (json.dumps(data, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestRecord:
        fixed = {"v", "key", "kind", "property_id", "category", "batch_index"}
        return cls(
            key=str(data["key"]),
            kind=str(data["kind"]),
            property_id=str(data["property_id"]),
            category=str(data["category"]),
            batch_index=int(data["batch_index"]),
            payload={k: v for k, v in data.items() if k not in fixed},
        )

    @property
    def content(self) -> str | None:
        """`content_key` of a batch answer, or None for records that carry no image hashes."""
        hashes = self.payload.get("image_hashes")
        if self.kind != "batch" or not isinstance(hashes, list):
            return None
        return content_key(property_id=self.property_id, category=self.category, image_hashes=hashes)


def parse_manifest_lines(lines: Iterable[bytes]) -> Iterator[ManifestRecord]:
    """Yield every well-formed record; skip torn, partial or foreign lines instead of failing the run."""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or data.get("v") != MANIFEST_VERSION:
                continue
            yield ManifestRecord.from_json(data)
        except (ValueError, KeyError, TypeError):
            continue


@dataclass(frozen=True, slots=True)
class _Line:
    """Where a record is on disk: the index keeps this, not the answer, so memory stays flat."""

    path: Path
    offset: int


class Manifest:
    """Loads what earlier runs answered and appends what this run answers.

    Only an index (key -> file and offset) is held in memory; a record is read back from disk when it
    is needed, so a manifest of a million batches costs tens of megabytes, not gigabytes.
    Appends are serialised by a lock, so they may run in worker threads (fsync never blocks the loop).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._answers: dict[str, _Line] = {}
        self._failures: set[str] = set()
        self._by_content: dict[str, _Line] = {}
        self._handle: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read every manifest in the state folder (one per shard), this run's own file last."""
        others = sorted(p for p in self.path.parent.glob("manifest*.jsonl") if p != self.path)
        for path in [*others, self.path]:
            if path.exists():
                self._load_file(path)

    def _load_file(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                offset = 0
                for raw in handle:
                    for record in parse_manifest_lines([raw]):
                        self._remember(record, _Line(path, offset))
                    offset += len(raw)
        except OSError as exc:
            raise OutputError(f"cannot read the resume manifest {path}: {exc.strerror or exc}") from exc

    def _remember(self, record: ManifestRecord, line: _Line) -> None:
        if record.kind == "failure":
            self._failures.add(record.key)
        else:
            self._answers[record.key] = line
            self._failures.discard(record.key)
        content = record.content
        if content is not None:
            self._by_content[content] = line

    def _read(self, line: _Line | None) -> ManifestRecord | None:
        if line is None:
            return None
        try:
            with line.path.open("rb") as handle:
                handle.seek(line.offset)
                records = list(parse_manifest_lines([handle.readline()]))
        except OSError as exc:
            raise OutputError(f"cannot read the resume manifest {line.path}: {exc.strerror or exc}") from exc
        return records[0] if records else None

    def answered(self, key: str) -> ManifestRecord | None:
        return self._read(self._answers.get(key))

    def answered_before(self, content: str) -> ManifestRecord | None:
        """The latest answer for these pictures under any model, prompt version or schema set."""
        return self._read(self._by_content.get(content))

    def failed_last_time(self, key: str) -> bool:
        return key in self._failures

    @property
    def answered_count(self) -> int:
        return len(self._answers)

    def append(self, record: ManifestRecord) -> None:
        """Write one record durably (write + fsync) before the run moves on."""
        with self._lock:
            try:
                handle = self._open()
                offset = handle.tell()
                handle.write(record.to_line())
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise OutputError(describe_os_error(exc, self.path)) from exc
            self._remember(record, _Line(self.path, offset))

    async def append_async(self, record: ManifestRecord) -> None:
        """`append` in a worker thread: a slow disk's fsync does not hold up the event loop."""
        await asyncio.to_thread(self.append, record)

    def _open(self) -> Any:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
            if self._handle.tell() > 0 and not _ends_with_newline(self.path):
                # A torn last line from a killed run: terminate it so our record starts on a fresh line.
                self._handle.write(b"\n")
        return self._handle

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                with contextlib.suppress(OSError):
                    self._handle.close()
                self._handle = None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
