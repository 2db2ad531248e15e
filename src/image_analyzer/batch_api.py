"""OpenAI Batch API mode: the same requests as `run`, sent as JSONL files at half price.

`submit` plans exactly what `run` would send (the pipeline's own selection and category planning, then
`batches.build_batch_request`), skips batches the manifest already answers or an uncollected job already
carries, writes Batch API JSONL split at the service limits, uploads each file with `purpose="batch"` and
creates a batch with `completion_window="24h"`. `status` shows the saved jobs; `batch_collect.py` fetches
the answers.

Nothing is lost if the machine goes away: a job file under `<state>/batches/<job>.json` is written
(atomically) before and after every API call. A part whose upload never finished is uploaded again; a
batch created but not yet recorded is found again by its `image_analyzer_job` metadata.

Besides `model.py`, this is the only module that imports `openai` (lazily, in `BatchClient`): the
Files and Batches resources are a different boundary from one chat completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from image_analyzer.domain import ModelRequest, PreparedImage
from image_analyzer.errors import (
    ConfigError,
    ModelCallError,
    OutputError,
)
from image_analyzer.events import Event, EventBus, ImageSkipped, Notice
from image_analyzer.jobs import BatchPlan
from image_analyzer.settings import Settings, require_selection
from image_analyzer.store import MANIFEST_NAME, atomic_write, describe_os_error

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from image_analyzer.domain import CategoryListing, ImageSource
    from image_analyzer.jobs import CategoryJob
    from image_analyzer.manifest import Manifest
    from image_analyzer.pipeline import Pipeline
    from image_analyzer.schemas import SchemaSet
    from image_analyzer.store import OutputStore

from image_analyzer.seed import load_seed_for

log = logging.getLogger("image_analyzer.batch")

T = TypeVar("T")

ENDPOINT: Final = "/v1/chat/completions"
COMPLETION_WINDOW: Final = "24h"
MAX_REQUESTS_PER_FILE = 50_000
MAX_FILE_BYTES = 200_000_000
"""OpenAI's limits per batch input file: 50,000 requests and 200 MB (taken as 10^6 bytes, the safe side)."""
MAX_CUSTOM_ID = 64
"""OpenAI documents no limit; some compatible servers reject longer ids, so ours stay within 64."""
JOB_METADATA_KEY = "image_analyzer_job"
BATCHES_DIR = "batches"
JOB_VERSION = 1
TERMINAL = frozenset({"completed", "expired", "failed", "cancelled"})

PLAN_FIELDS = (
    "images_dir", "local_folders", "bucket", "prefix", "endpoint_url", "region", "profile", "seed_csv",
    "county_data_dir", "batch_size", "model", "max_tokens", "detail", "max_image_side", "max_image_pixels",
    "schema_set", "prices_file",
)  # fmt: skip
"""Settings that decide which requests a plan holds: saved with each job so `collect` rebuilds alike."""

_SLUG = re.compile(r"[^A-Za-z0-9-]+")


# --- custom ids -------------------------------------------------------------------------------------------


def custom_id_for(property_id: str, category: str, batch_index: int, key: str) -> str:
    """`<property>_<category>_<batch>_<key prefix>`: readable, unique, at most 64 safe characters.

    The key prefix (64 bits of the content hash) makes it unique; the job file maps it back to the
    full key, image ids and hashes, so the readable parts may be shortened.
    """
    parts = (_slug(property_id, 20), _slug(category, 14), str(batch_index), key[:16])
    return "_".join(parts)


def _slug(text: str, limit: int) -> str:
    return _SLUG.sub("-", text).strip("-")[:limit] or "x"


# --- job files --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """What one JSONL line asks: enough to file its answer under the same key `run` uses."""

    property_id: str
    category: str
    batch_index: int
    image_ids: tuple[str, ...]
    image_hashes: tuple[str, ...]
    key: str

    def as_json(self) -> dict[str, Any]:
        return {
            "property_id": self.property_id,
            "category": self.category,
            "batch_index": self.batch_index,
            "image_ids": list(self.image_ids),
            "image_hashes": list(self.image_hashes),
            "key": self.key,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestEntry:
        return cls(
            property_id=str(data["property_id"]),
            category=str(data["category"]),
            batch_index=int(data["batch_index"]),
            image_ids=tuple(str(i) for i in data["image_ids"]),
            image_hashes=tuple(str(h) for h in data["image_hashes"]),
            key=str(data["key"]),
        )


@dataclass(slots=True)
class BatchJob:
    """One Batch API batch (one input file) and everything needed to collect it.

    `state`: `written` (JSONL on disk), `uploaded` (input file id known), `submitted` (batch id known),
    `collected`, or `lost` (the JSONL vanished before upload: its requests are planned again).
    `status` is the server's batch status.
    """

    name: str
    created_at: float
    model: str
    prompt_version: str
    schema_fingerprint: str
    plan: dict[str, Any]
    requests: dict[str, RequestEntry]
    base_url: str | None = None
    state: str = "written"
    input_file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    request_counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)
    collected: dict[str, Any] | None = None
    resubmitted_in: list[str] = field(default_factory=list)

    @property
    def failures(self) -> dict[str, str]:
        """custom_id -> why, for requests that got no usable answer (after collect)."""
        return dict((self.collected or {}).get("failed", {}))

    def apply_remote(self, batch: Mapping[str, Any]) -> None:
        self.batch_id = str(batch.get("id") or self.batch_id)
        self.status = str(batch.get("status") or self.status)
        counts = batch.get("request_counts") or {}
        self.request_counts = {k: int(counts.get(k) or 0) for k in ("total", "completed", "failed")}
        self.output_file_id = batch.get("output_file_id") or None
        self.error_file_id = batch.get("error_file_id") or None
        errors = (batch.get("errors") or {}).get("data") or []
        self.errors = [_describe_batch_error(e) for e in errors if isinstance(e, Mapping)]

    def as_json(self) -> dict[str, Any]:
        return {
            "version": JOB_VERSION,
            "job": self.name,
            "created_at": self.created_at,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "schema_set": self.schema_fingerprint,
            "plan": self.plan,
            "base_url": self.base_url,
            "state": self.state,
            "input_file_id": self.input_file_id,
            "batch_id": self.batch_id,
            "status": self.status,
            "request_counts": self.request_counts,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": self.errors,
            "collected": self.collected,
            "resubmitted_in": self.resubmitted_in,
            "requests": {cid: entry.as_json() for cid, entry in self.requests.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchJob:
        return cls(
            name=str(data["job"]),
            created_at=float(data["created_at"]),
            model=str(data["model"]),
            prompt_version=str(data["prompt_version"]),
            schema_fingerprint=str(data["schema_set"]),
            plan=dict(data.get("plan") or {}),
            requests={cid: RequestEntry.from_json(e) for cid, e in (data.get("requests") or {}).items()},
            base_url=data.get("base_url"),
            state=str(data.get("state") or "written"),
            input_file_id=data.get("input_file_id"),
            batch_id=data.get("batch_id"),
            status=data.get("status"),
            request_counts=dict(data.get("request_counts") or {}),
            output_file_id=data.get("output_file_id"),
            error_file_id=data.get("error_file_id"),
            errors=list(data.get("errors") or []),
            collected=data.get("collected"),
            resubmitted_in=list(data.get("resubmitted_in") or []),
        )

    def summary(self) -> dict[str, Any]:
        """The job without its request map: what `batch status --json` prints."""
        data = self.as_json()
        data.pop("requests")
        data["requests"] = len(self.requests)
        collected = dict(self.collected or {})
        if collected:
            collected["failed"] = len(collected.get("failed") or {})
            data["collected"] = collected
        return data


def _describe_batch_error(error: Mapping[str, Any]) -> str:
    line = f" (line {error['line']})" if error.get("line") else ""
    return f"{error.get('code') or 'error'}: {error.get('message') or 'no message'}{line}"


class JobStore:
    """Job files under `<state>/batches/`, each replaced atomically on every change."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def jsonl_path(self, name: str) -> Path:
        return self.folder / f"{name}.jsonl"

    def save(self, job: BatchJob) -> None:
        data = json.dumps(job.as_json(), indent=1, sort_keys=True, ensure_ascii=False).encode()
        try:
            atomic_write(self.path(job.name), data + b"\n")
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path(job.name))) from exc

    def load_all(self) -> list[BatchJob]:
        if not self.folder.is_dir():
            return []
        jobs: list[BatchJob] = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                jobs.append(BatchJob.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"batch job file {path} is unreadable ({type(exc).__name__}): move it out of the way"
                ) from exc
        return sorted(jobs, key=lambda j: (j.created_at, j.name))

    def pending_keys(self, jobs: Iterable[BatchJob]) -> set[str]:
        """Keys already on their way in a job that is not collected: never sent twice."""
        return {
            e.key for job in jobs if job.state not in ("collected", "lost") for e in job.requests.values()
        }


# --- writing JSONL parts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileLimits:
    max_requests: int = MAX_REQUESTS_PER_FILE
    max_bytes: int = MAX_FILE_BYTES

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1024:
            raise ConfigError("--max-requests-per-file must be >= 1 and --max-file-bytes >= 1024")


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    custom_id: str
    entry: RequestEntry
    line: bytes


def encode_line(custom_id: str, request: ModelRequest) -> bytes:
    """One Batch API input line: the exact Chat Completions body `run` would send."""
    from image_analyzer.model import request_kwargs

    line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": request_kwargs(request)}
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class PartWriter:
    """Appends lines to the current part; starts a new part at the request or byte limit."""

    def __init__(
        self, store: JobStore, limits: FileLimits, new_job: Callable[[str], BatchJob], prefix: str
    ) -> None:
        self._store = store
        self._limits = limits
        self._new_job = new_job
        self._prefix = prefix
        self._parts = 0
        self._job: BatchJob | None = None
        self._handle: Any = None
        self._bytes = 0

    def add(self, item: PlannedRequest) -> BatchJob | None:
        """Write one line; returns the finished part's job when this line started a new part."""
        if len(item.line) > self._limits.max_bytes:
            entry = item.entry
            raise ConfigError(
                f"the request for {entry.property_id}/{entry.category} batch {entry.batch_index + 1} is "
                f"{len(item.line) / 1e6:.1f} MB, over the {self._limits.max_bytes / 1e6:g} MB file limit: "
                "lower --batch-size or --max-image-side"
            )
        finished = None
        if self._job is not None and (
            len(self._job.requests) >= self._limits.max_requests
            or self._bytes + len(item.line) > self._limits.max_bytes
        ):
            finished = self.close()
        if self._job is None:
            self._open()
        assert self._job is not None
        self._handle.write(item.line)
        self._bytes += len(item.line)
        self._job.requests[item.custom_id] = item.entry
        return finished

    def _open(self) -> None:
        self._parts += 1
        self._job = self._new_job(f"{self._prefix}-{self._parts:03d}")
        self._store.folder.mkdir(parents=True, exist_ok=True)
        self._handle = self._store.jsonl_path(self._job.name).open("wb")
        self._bytes = 0

    def close(self) -> BatchJob | None:
        """Finish the current part: fsync its JSONL, then record the job as `written`."""
        job, handle = self._job, self._handle
        self._job, self._handle = None, None
        if job is None:
            return None
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        self._store.save(job)
        return job

    def abandon(self) -> None:
        """Drop an unfinished part (a failed plan): its requests were never recorded, so none is lost."""
        job, handle = self._job, self._handle
        self._job, self._handle = None, None
        if job is not None:
            handle.close()
            self._store.jsonl_path(job.name).unlink(missing_ok=True)


# --- planning ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PlanReport:
    properties: int = 0
    requests: int = 0
    images: int = 0
    answered: int = 0
    """Batches the manifest already answers (by `run` or an earlier collect)."""
    pending: int = 0
    """Batches already waiting in a job that is not collected yet."""
    empty: int = 0
    skipped_images: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "properties": self.properties,
            "requests": self.requests,
            "images": self.images,
            "already_answered": self.answered,
            "already_pending": self.pending,
            "empty_batches": self.empty,
            "skipped_images": self.skipped_images,
            "notices": self.notices,
        }


class _Collector:
    """Reporter for the planning bus: keeps skipped files and warnings for the submit report."""

    def __init__(self, report: PlanReport) -> None:
        self.report = report

    def handle(self, event: Event) -> None:
        if isinstance(event, ImageSkipped):
            self.report.skipped_images.append(
                {"location": event.location, "reason": event.reason, "property_id": event.property_id}
            )
        elif isinstance(event, Notice) and event.level != "info":
            self.report.notices.append(event.message)

    def close(self) -> None:
        return None


Sink = Callable[[PlannedRequest], Awaitable[None]]


class PipelinePlanning:
    """The pipeline's own property selection and category planning, so `submit` plans what `run` runs.

    Selection (ids, seed filter, shard) and planning (duplicate photos, batches) live in `pipeline.py`;
    going through them here is what keeps batch mode from drifting when they change.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def property_ids(self) -> AsyncIterator[str]:
        return self._pipeline.selected_property_ids()

    async def plan_category(self, listing: CategoryListing) -> CategoryJob:
        return await self._pipeline.plan_category(listing)

    def county_rooms(self, property_id: str) -> Any:
        county = self._pipeline.deps.county_rooms
        return county(property_id) if callable(county) else None


class Planner:
    """Plans `run`'s requests for the selected properties and hands each unanswered one to a sink."""

    def __init__(
        self,
        settings: Settings,
        source: ImageSource,
        schema_set: SchemaSet,
        manifest: Manifest,
        planning: PipelinePlanning,
        *,
        skip_keys: set[str],
        wanted: set[str] | None,
        wanted_categories: set[tuple[str, str]] | None,
        bus: EventBus,
        report: PlanReport,
    ) -> None:
        self.settings = settings
        self.source = source
        self.schema_set = schema_set
        self.manifest = manifest
        self.planning = planning
        self.skip_keys = skip_keys
        self.wanted = wanted
        self.wanted_categories = wanted_categories
        self.bus = bus
        self.report = report
        self._seen: set[str] = set()

    async def run(self, sink: Sink) -> None:
        slots = asyncio.Semaphore(max(1, self.settings.category_workers))

        async def one(property_id: str) -> None:
            try:
                await self._property(property_id, sink)
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as group:
                async for property_id in self.planning.property_ids():
                    await slots.acquire()
                    group.create_task(one(property_id))
        except BaseExceptionGroup as group_error:
            raise _first_leaf(group_error) from None

    async def _property(self, property_id: str, sink: Sink) -> None:
        listing = await self.source.list_property(property_id)
        for skipped in listing.skipped:
            self.bus.emit(
                ImageSkipped(location=skipped.location, reason=skipped.reason, property_id=property_id)
            )
        categories = [c for c in listing.categories if c.images]
        if self.wanted_categories is not None:
            categories = [c for c in categories if (property_id, c.category) in self.wanted_categories]
        if categories:
            self.report.properties += 1
        for category in categories:
            job = await self.planning.plan_category(category)
            for plan in job.plans:
                item = await self._plan_one(plan)
                if item is not None:
                    await sink(item)

    async def _plan_one(self, plan: BatchPlan) -> PlannedRequest | None:
        from image_analyzer.batches import build_batch_request

        images = await self._prepare_all(plan)
        if not images:
            self.report.empty += 1
            return None
        county = self.planning.county_rooms(plan.property_id)
        request, key = build_batch_request(self.settings, self.schema_set, plan, images, county)
        if self.wanted is not None and key not in self.wanted:
            return None
        if key in self._seen:
            return None
        if not self.settings.force and self.manifest.answered(key) is not None:
            self.report.answered += 1
            return None
        if key in self.skip_keys:
            self.report.pending += 1
            return None
        self._seen.add(key)
        entry = RequestEntry(
            property_id=plan.property_id,
            category=plan.category,
            batch_index=plan.index,
            image_ids=tuple(image.image_id for image in images),
            image_hashes=tuple(image.content_hash for image in images),
            key=key,
        )
        custom_id = custom_id_for(plan.property_id, plan.category, plan.index, key)
        self.report.requests += 1
        self.report.images += len(images)
        return PlannedRequest(custom_id, entry, encode_line(custom_id, request))

    async def _prepare_all(self, plan: BatchPlan) -> list[PreparedImage]:
        # The same reading and preparation as `run`, so the bytes and hashes match.
        from image_analyzer.batches import prepare_batch_images

        return await prepare_batch_images(self.source, self.settings, plan, self.bus)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first real error in a task group's bundle (ours say what to do; a bundle says nothing)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# --- the Files and Batches client -------------------------------------------------------------------------


class BatchClient:
    """The Files and Batches resources of one `AsyncOpenAI`, SDK retries off, our retry policy on."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        max_retries: int = 5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not api_key:
            raise ConfigError("no API key: set OPENAI_API_KEY or pass --api-key")
        import httpx2
        import openai

        from image_analyzer.model import CLIENT_TIMEOUT_S
        from image_analyzer.retry import RetryPolicy

        self._secrets = (api_key,)
        self._sleep = sleep
        self._policy = RetryPolicy(max_retries=max_retries)
        self._client: AsyncOpenAI = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=httpx2.Timeout(CLIENT_TIMEOUT_S, connect=10.0),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> BatchClient:
        key = settings.api_key_value()
        if not key:
            raise ConfigError("no API key: set OPENAI_API_KEY or pass --api-key")
        return cls(api_key=key, base_url=settings.base_url, max_retries=settings.max_retries, sleep=sleep)

    def __repr__(self) -> str:
        return "BatchClient()"

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()

    async def upload(self, path: Path) -> str:
        async def call() -> str:
            result = await self._client.files.create(file=path, purpose="batch")
            return str(result.id)

        return await self._call(f"upload {path.name}", call)

    async def create(self, input_file_id: str, job_name: str) -> dict[str, Any]:
        metadata = {JOB_METADATA_KEY: job_name}

        async def call() -> dict[str, Any]:
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            )
            return batch.model_dump()

        async def before_retry() -> dict[str, Any] | None:
            # The first create may have reached the server before the connection broke.
            return await self.find(job_name, since=time.time() - 3600)

        return await self._call(f"create batch for {job_name}", call, before_retry=before_retry)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        async def call() -> dict[str, Any]:
            return (await self._client.batches.retrieve(batch_id)).model_dump()

        return await self._call(f"retrieve batch {batch_id}", call)

    async def find(self, job_name: str, *, since: float) -> dict[str, Any] | None:
        """The batch this tool created for `job_name`, looking back to `since` (newest batches first)."""

        async def call() -> dict[str, Any] | None:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(JOB_METADATA_KEY) == job_name:
                    return batch.model_dump()
                if batch.created_at < since:
                    return None
            return None

        return await self._call(f"list batches for {job_name}", call)

    async def download(self, file_id: str, dest: Path) -> Path:
        async def call() -> Path:
            async with self._client.files.with_streaming_response.content(file_id) as response:
                await response.stream_to_file(dest)
            return dest

        return await self._call(f"download file {file_id}", call)

    async def _call(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        before_retry: Callable[[], Awaitable[T | None]] | None = None,
    ) -> T:
        retries = 0
        while True:
            error: ModelCallError
            try:
                return await call()
            except Exception as exc:
                error = self._translate(operation, exc)
                if error.kind != "auth" and not self._policy.should_retry(retries + 1, error):
                    raise error from exc
            if not self._policy.should_retry(retries + 1, error):
                # Outside the except block: the SDK's 401 text quotes the key, so it must not be chained.
                raise error
            retries += 1
            delay = self._policy.delay_for(retries, error)
            log.info("Batch API %s failed (%s): retry %d in %.1f s", operation, error, retries, delay)
            await self._sleep(delay)
            if before_retry is not None:
                found = await before_retry()
                if found is not None:
                    return found

    def _translate(self, operation: str, exc: Exception) -> ModelCallError:
        import openai

        from image_analyzer.model import classify_error

        if not isinstance(exc, openai.OpenAIError | TimeoutError | ModelCallError):
            raise exc  # our own bug: never retried, never disguised
        error = classify_error(exc, secrets=self._secrets)
        message = str(error)
        if error.status == 404:
            message = (
                "not found (HTTP 404): check --base-url (batches and files live on the server that made them)"
            )
        return ModelCallError(
            f"Batch API {operation}: {message}",
            retryable=error.retryable,
            fatal=error.fatal,
            status=error.status,
            retry_after=error.retry_after,
            kind=error.kind,
        )


# --- launching parts --------------------------------------------------------------------------------------


async def launch(job: BatchJob, client: BatchClient, store: JobStore, *, resuming: bool = False) -> BatchJob:
    """Upload a written part and create its batch, saving the job after each step."""
    if job.state == "written":
        path = store.jsonl_path(job.name)
        if not path.exists():
            job.state = "lost"
            store.save(job)
            return job
        job.input_file_id = await client.upload(path)
        job.state = "uploaded"
        store.save(job)
        resuming = False
    if job.state == "uploaded":
        assert job.input_file_id is not None
        batch = await client.find(job.name, since=job.created_at - 3600) if resuming else None
        if batch is None:
            batch = await client.create(job.input_file_id, job.name)
        job.apply_remote(batch)
        job.state = "submitted"
        store.save(job)
        store.jsonl_path(job.name).unlink(missing_ok=True)
    return job


# --- submit -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SubmitResult:
    jobs: list[BatchJob] = field(default_factory=list)
    resumed: list[BatchJob] = field(default_factory=list)
    report: PlanReport = field(default_factory=PlanReport)

    def as_json(self) -> dict[str, Any]:
        return {
            **self.report.as_json(),
            "jobs": [job.summary() for job in self.jobs],
            "resumed_jobs": [job.summary() for job in self.resumed],
        }


@dataclass(slots=True)
class Workspace:
    """What every batch command shares: the output store, its state folder, the job files, the lock."""

    settings: Settings
    store: OutputStore
    state_dir: Path
    jobs: JobStore

    @classmethod
    def open(cls, settings: Settings) -> Workspace:
        from image_analyzer.runner import make_store

        store, state_dir = make_store(settings)
        return cls(settings, store, state_dir, JobStore(state_dir / BATCHES_DIR))

    @contextlib.asynccontextmanager
    async def locked(self) -> Any:
        from image_analyzer.lock import RunLock

        lock = RunLock(self.state_dir / "lock")
        lock.acquire()
        try:
            yield self
        finally:
            lock.release()

    def manifest(self) -> Manifest:
        from image_analyzer.manifest import Manifest

        manifest = Manifest(self.state_dir / Path(MANIFEST_NAME).name)
        manifest.load()
        return manifest

    async def aclose(self) -> None:
        await self.store.aclose()


def plan_of(settings: Settings) -> dict[str, Any]:
    """The plan-deciding settings as JSON (paths as strings); never a secret."""
    plan: dict[str, Any] = {}
    for name in PLAN_FIELDS:
        value = getattr(settings, name)
        # Absolute, so `collect` finds the same files from another working directory.
        plan[name] = str(value.absolute()) if isinstance(value, Path) else value
    if plan["seed_csv"] is None and Path("seed.csv").exists():
        plan["seed_csv"] = str(Path("seed.csv").absolute())
    return plan


def submission_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


async def submit(
    settings: Settings,
    *,
    limits: FileLimits = FileLimits(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> SubmitResult:
    """`batch submit`: resume unfinished parts, then plan, write, upload and create new batches."""
    require_selection(settings)
    workspace = Workspace.open(settings)
    try:
        async with workspace.locked(), BatchClient.from_settings(settings, sleep) as client:
            return await _submit_locked(workspace, client, settings, limits)
    finally:
        await workspace.aclose()


async def _submit_locked(
    workspace: Workspace,
    client: BatchClient,
    settings: Settings,
    limits: FileLimits,
    *,
    wanted: set[str] | None = None,
    wanted_categories: set[tuple[str, str]] | None = None,
) -> SubmitResult:
    result = SubmitResult()
    existing = workspace.jobs.load_all()
    for job in existing:
        if job.state in ("written", "uploaded"):
            result.resumed.append(await launch(job, client, workspace.jobs, resuming=True))
    skip = workspace.jobs.pending_keys(workspace.jobs.load_all())
    await plan_and_launch(workspace, client, settings, limits, skip, wanted, wanted_categories, result)
    return result


async def plan_and_launch(
    workspace: Workspace,
    client: BatchClient,
    settings: Settings,
    limits: FileLimits,
    skip: set[str],
    wanted: set[str] | None,
    wanted_categories: set[tuple[str, str]] | None,
    result: SubmitResult,
) -> None:
    from image_analyzer.prompts import PROMPT_VERSION
    from image_analyzer.runner import make_source
    from image_analyzer.schemas import SchemaSet

    schema_set = SchemaSet.load(settings.schema_set)
    manifest = workspace.manifest()
    source = make_source(settings)
    bus = EventBus([_Collector(result.report)])
    plan = plan_of(settings)
    base_url = _redact_url(settings.base_url)

    def new_job(name: str) -> BatchJob:
        return BatchJob(
            name=name, created_at=time.time(), model=settings.model, prompt_version=PROMPT_VERSION,
            schema_fingerprint=schema_set.fingerprint, plan=plan, requests={}, base_url=base_url,
        )  # fmt: skip

    writer = PartWriter(workspace.jobs, limits, new_job, submission_id())
    uploading = asyncio.Lock()

    async def sink(item: PlannedRequest) -> None:
        # One at a time: while a finished part uploads, planning waits, so parts never pile up on disk.
        async with uploading:
            finished = writer.add(item)
            if finished is not None:
                result.jobs.append(await launch(finished, client, workspace.jobs))

    try:
        await source.check()
        planning = _planning(settings, source, workspace, schema_set, manifest, bus)
        planner = Planner(
            settings, source, schema_set, manifest, planning, skip_keys=skip, wanted=wanted,
            wanted_categories=wanted_categories, bus=bus, report=result.report,
        )  # fmt: skip
        await planner.run(sink)
        last = writer.close()
        if last is not None:
            result.jobs.append(await launch(last, client, workspace.jobs))
    except BaseException:
        writer.abandon()
        raise
    finally:
        manifest.close()
        await source.aclose()


def _planning(
    settings: Settings,
    source: ImageSource,
    workspace: Workspace,
    schema_set: SchemaSet,
    manifest: Manifest,
    bus: EventBus,
) -> PipelinePlanning:
    """A pipeline that is never run: only its selection and planning are used."""
    from image_analyzer.cost import PriceTable
    from image_analyzer.pipeline import Pipeline, RunDeps

    deps = RunDeps(
        settings=settings, run_id="plan", source=source, store=workspace.store, model=None,
        schema_set=schema_set, prices=PriceTable.builtin(), seed=load_seed_for(settings.seed_csv), bus=bus,
        manifest=manifest,
    )  # fmt: skip
    return PipelinePlanning(Pipeline(deps))


# --- status and waiting -----------------------------------------------------------------------------------


async def refresh(jobs: Sequence[BatchJob], client: BatchClient, store: JobStore | None) -> None:
    """Ask the server for each submitted, uncollected job's status and counts; save them if given a store."""
    for job in jobs:
        if job.state != "submitted" or job.batch_id is None:
            continue
        job.apply_remote(await client.retrieve(job.batch_id))
        if store is not None:
            store.save(job)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Poll intervals: `initial`, then times `factor` each time, at most `maximum` seconds."""

    initial: float = 30.0
    factor: float = 1.5
    maximum: float = 600.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


async def wait_until_done(
    jobs: Sequence[BatchJob],
    client: BatchClient,
    store: JobStore,
    *,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_poll: Callable[[Sequence[BatchJob]], None] | None = None,
) -> None:
    """Poll until every submitted job has a terminal status (completed, expired, failed, cancelled)."""
    delays = backoff.delays()
    while True:
        await refresh(jobs, client, store)
        waiting = [j for j in jobs if j.state == "submitted" and j.status not in TERMINAL]
        if on_poll is not None:
            on_poll(waiting)
        if not waiting:
            return
        await sleep(next(delays))


async def status(settings: Settings, *, refresh_remote: bool = True) -> list[BatchJob]:
    """`batch status`: every saved job, refreshed from the server unless told otherwise."""
    workspace = Workspace.open(settings)
    try:
        jobs = workspace.jobs.load_all()
        if refresh_remote and any(j.state == "submitted" for j in jobs):
            if not settings.api_key_value():
                raise ConfigError(
                    "no API key: set OPENAI_API_KEY or pass --api-key (or --no-refresh for the saved state)"
                )
            async with BatchClient.from_settings(settings) as client:
                # Shown, not saved: only a locked command (submit, collect) writes job files.
                await refresh(jobs, client, None)
        return jobs
    finally:
        await workspace.aclose()


def _redact_url(url: str | None) -> str | None:
    """Scheme, host, port and path only: no credentials or query string in a job file."""
    if url is None:
        return None
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
