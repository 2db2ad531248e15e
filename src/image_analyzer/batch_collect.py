"""`batch collect`: download finished batches, file their answers like `run`, rebuild the folders.

Result lines are matched to requests by `custom_id` (the service does not keep the input order) and each
answer is checked exactly as `run` checks it (`asking.check_response`, `schemas.parse_answer`). Accepted
answers go into the run manifest under the same keys and fields as `run`'s, so either mode resumes the
other. Then the normal pipeline rebuilds the folders of the properties involved with every batch reused
from the manifest; a batch the Batch API did not answer is listed as failed, never sent at full price.
Usage is costed at batch prices and lands in the run summary, so `report` shows what the batch cost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from image_analyzer.batch_api import (
    PLAN_FIELDS,
    TERMINAL,
    Backoff,
    BatchClient,
    BatchJob,
    FileLimits,
    RequestEntry,
    SubmitResult,
    Workspace,
    plan_and_launch,
    refresh,
    wait_until_done,
)
from image_analyzer.domain import ModelRequest, ModelResponse, Usage
from image_analyzer.errors import AnswerError, ModelCallError
from image_analyzer.events import EventBus, RequestCost
from image_analyzer.manifest import ManifestRecord
from image_analyzer.settings import Settings, load_settings

if TYPE_CHECKING:
    from image_analyzer.cost import PriceTable
    from image_analyzer.domain import VisionModel
    from image_analyzer.manifest import Manifest
    from image_analyzer.schemas import SchemaSet


# --- collect ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CollectedCost:
    job: str
    entry: RequestEntry
    usage: Usage
    cost_usd: float | None


@dataclass(slots=True)
class CollectResult:
    collected: list[BatchJob] = field(default_factory=list)
    waiting: list[BatchJob] = field(default_factory=list)
    unsent: list[BatchJob] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    costs: list[CollectedCost] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    rebuilds: list[dict[str, Any]] = field(default_factory=list)
    resubmitted: SubmitResult | None = None

    @property
    def answered(self) -> int:
        return sum(int((job.collected or {}).get("answered", 0)) for job in self.collected)

    @property
    def cost_usd(self) -> float | None:
        costs = [c.cost_usd for c in self.costs]
        return None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 6)

    @property
    def exit_code(self) -> int:
        still_failed = self.failed and self.resubmitted is None
        return 1 if still_failed or any(r.get("exit_code") for r in self.rebuilds) else 0

    def as_json(self) -> dict[str, Any]:
        usage = sum((c.usage for c in self.costs), Usage())
        return {
            "collected_jobs": [job.summary() for job in self.collected],
            "waiting_jobs": [job.summary() for job in self.waiting],
            "unsent_jobs": [job.name for job in self.unsent],
            "answered": self.answered,
            "failed": self.failed,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": usage.cached_tokens,
            "cost_usd": self.cost_usd,
            "cost_known": self.cost_usd is not None,
            "notices": self.notices,
            "runs": self.rebuilds,
            "resubmitted": self.resubmitted.as_json() if self.resubmitted is not None else None,
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True, slots=True)
class CollectOptions:
    wait: bool = False
    resubmit: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    limits: FileLimits = field(default_factory=FileLimits)
    stream: TextIO | None = None
    quiet: bool = False


def settings_for(job: BatchJob, overrides: Mapping[str, Any]) -> Settings:
    """The settings the job was planned with, plus the caller's connection and output flags."""
    flags = {k: v for k, v in job.plan.items() if k in PLAN_FIELDS and v is not None}
    flags.update(overrides)
    return load_settings(flags)


async def collect(
    settings: Settings,
    overrides: Mapping[str, Any],
    options: CollectOptions = CollectOptions(),
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> CollectResult:
    """`batch collect`: download finished batches, file answers in the manifest, rebuild folders."""
    workspace = Workspace.open(settings)
    result = CollectResult()
    try:
        async with workspace.locked(), BatchClient.from_settings(settings, sleep) as client:
            jobs = workspace.jobs.load_all()
            result.unsent = [j for j in jobs if j.state in ("written", "uploaded")]
            active = [j for j in jobs if j.state == "submitted"]
            if options.wait:
                await wait_until_done(active, client, workspace.jobs, backoff=options.backoff, sleep=sleep)
            else:
                await refresh(active, client, workspace.jobs)
            result.waiting = [j for j in active if j.status not in TERMINAL]
            done = [j for j in active if j.status in TERMINAL]
            run_id = _new_run_id()
            if done:
                await _collect_jobs(done, client, workspace, run_id, result)
                await _rebuild_all(done, workspace, overrides, run_id, result, options)
            manifest = workspace.manifest()
            try:
                result.failed = _open_failures(workspace.jobs.load_all(), manifest)
            finally:
                manifest.close()
            if options.resubmit and result.failed:
                result.resubmitted = await _resubmit(
                    workspace, client, overrides, options.limits, result.failed
                )
        return result
    finally:
        await workspace.aclose()


def _new_run_id() -> str:
    from image_analyzer.runner import new_run_id

    return new_run_id()


async def _collect_jobs(
    jobs: Sequence[BatchJob], client: BatchClient, workspace: Workspace, run_id: str, result: CollectResult
) -> None:
    from image_analyzer.prompts import PROMPT_VERSION

    manifest = workspace.manifest()
    try:
        for job in jobs:
            settings = settings_for(job, {})
            collector = _JobCollector(job, settings, manifest, run_id)
            for file_id, kind in ((job.output_file_id, "output"), (job.error_file_id, "error")):
                if file_id:
                    path = workspace.jobs.folder / f"{job.name}.{kind}.jsonl"
                    try:
                        collector.read(await client.download(file_id, path))
                    finally:
                        path.unlink(missing_ok=True)
            collector.finish()
            job.collected = collector.as_json()
            job.state = "collected"
            workspace.jobs.save(job)
            result.collected.append(job)
            result.costs.extend(collector.costs)
            result.notices.extend(collector.notices)
            if job.prompt_version != PROMPT_VERSION:
                result.notices.append(
                    f"job {job.name} was planned with prompt version {job.prompt_version}, this version uses "
                    f"{PROMPT_VERSION}: its answers are saved but `run` will ask again"
                )
    finally:
        manifest.close()


class _JobCollector:
    """Matches one job's output and error lines to its requests by `custom_id` and files the answers."""

    def __init__(self, job: BatchJob, settings: Settings, manifest: Manifest, run_id: str) -> None:
        from image_analyzer.cost import PriceTable
        from image_analyzer.schemas import SchemaSet

        self.job = job
        self.manifest = manifest
        self.run_id = run_id
        self.schema_set = SchemaSet.load(settings.schema_set)
        self.prices: PriceTable = PriceTable.load(settings.prices_file)
        self.answered: set[str] = set()
        self.failed: dict[str, str] = {}
        self.costs: list[CollectedCost] = []
        self.notices: list[str] = []

    def read(self, path: Path) -> None:
        with path.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    data = json.loads(raw)
                except ValueError:
                    self.notices.append(f"job {self.job.name}: an unreadable result line was ignored")
                    continue
                if isinstance(data, dict):
                    self._line(data)

    def _line(self, data: Mapping[str, Any]) -> None:
        custom_id = str(data.get("custom_id"))
        entry = self.job.requests.get(custom_id)
        if entry is None:
            self.notices.append(f"job {self.job.name}: result for unknown custom_id {custom_id!r} ignored")
            return
        if custom_id in self.answered:
            return
        problem = _line_problem(data)
        if problem is not None:
            self.failed[custom_id] = problem
            return
        body = data["response"]["body"]
        response = response_from_body(body)
        self._cost(entry, response.usage)
        try:
            answer = _accept(self.schema_set, response, entry.image_ids)
        except AnswerError as exc:
            self.failed[custom_id] = f"{exc.kind}: {exc}"
            return
        self._file(entry, answer, response.usage)
        self.answered.add(custom_id)
        self.failed.pop(custom_id, None)

    def _cost(self, entry: RequestEntry, usage: Usage | None) -> None:
        cost = self.prices.cost(self.job.model, usage, batch=True) if usage is not None else None
        self.costs.append(CollectedCost(self.job.name, entry, usage or Usage(), cost))

    def _file(self, entry: RequestEntry, answer: dict[str, Any], usage: Usage | None) -> None:
        spent = usage or Usage()
        self.manifest.append(
            ManifestRecord(
                key=entry.key,
                kind="batch",
                property_id=entry.property_id,
                category=entry.category,
                batch_index=entry.batch_index,
                payload={
                    "answer": answer,
                    "usage": {
                        "prompt_tokens": spent.prompt_tokens,
                        "completion_tokens": spent.completion_tokens,
                        "cached_tokens": spent.cached_tokens,
                    },
                    "image_ids": list(entry.image_ids),
                    "image_hashes": list(entry.image_hashes),
                    "model": self.job.model,
                    "prompt_version": self.job.prompt_version,
                    "schema_set": self.job.schema_fingerprint,
                    "run_id": self.run_id,
                    "at": time.time(),
                    "batch_id": self.job.batch_id,
                },
            )
        )

    def finish(self) -> None:
        """Every request without a result line failed with the batch's own reason."""
        reason = _missing_reason(self.job)
        for custom_id in self.job.requests:
            if custom_id not in self.answered and custom_id not in self.failed:
                self.failed[custom_id] = reason

    def as_json(self) -> dict[str, Any]:
        usage = sum((c.usage for c in self.costs), Usage())
        costs = [c.cost_usd for c in self.costs]
        return {
            "at": time.time(),
            "run_id": self.run_id,
            "answered": len(self.answered),
            "failed": dict(sorted(self.failed.items())),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": usage.cached_tokens,
            "cost_usd": None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 6),
        }


def _line_problem(data: Mapping[str, Any]) -> str | None:
    """Why a result line carries no answer, or None when it holds a 200 response body."""
    error = data.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('code') or 'error'}: {error.get('message') or 'no message'}"
    response = data.get("response")
    if not isinstance(response, Mapping):
        return "no response in the result line"
    status = response.get("status_code")
    body = response.get("body")
    if status != 200 or not isinstance(body, Mapping):
        detail = (body.get("error") or {}).get("message") if isinstance(body, Mapping) else None
        return f"HTTP {status}" + (f": {str(detail)[:200]}" if detail else "")
    return None


def _missing_reason(job: BatchJob) -> str:
    if job.status == "expired":
        return "batch_expired: not run within the 24h completion window"
    if job.status == "failed":
        return "batch failed: " + ("; ".join(job.errors[:3]) or "no reason given")
    if job.status == "cancelled":
        return "batch cancelled"
    return f"no result line (batch {job.status})"


def response_from_body(body: Mapping[str, Any]) -> ModelResponse:
    """A Chat Completions response body (a Batch API output line's `response.body`) as a ModelResponse."""
    usage = _usage(body.get("usage"))
    choices = body.get("choices") or []
    model = body.get("model")
    if not choices or not isinstance(choices[0], Mapping):
        return ModelResponse(None, "empty", None, usage, {}, model)
    choice = choices[0]
    message = choice.get("message") or {}
    return ModelResponse(
        content=message.get("content"),
        finish_reason=choice.get("finish_reason"),
        refusal=message.get("refusal"),
        usage=usage,
        model=model,
    )


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, Mapping):
        return None
    details = data.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0,
    )


def _accept(schema_set: SchemaSet, response: ModelResponse, image_ids: Sequence[str]) -> dict[str, Any]:
    """The answer checked exactly as `run` checks it (refused, truncated, empty, schema)."""
    from image_analyzer.asking import check_response
    from image_analyzer.batches import parse_batch_answer

    return parse_batch_answer(schema_set, check_response(response), image_ids)


def _open_failures(jobs: Sequence[BatchJob], manifest: Manifest) -> list[dict[str, Any]]:
    """Failed requests of collected jobs that no later job resubmitted and nothing answered since."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        if job.state != "collected" or job.resubmitted_in:
            continue
        for custom_id, reason in sorted(job.failures.items()):
            entry = job.requests.get(custom_id)
            if entry is None or manifest.answered(entry.key) is not None:
                continue
            rows.append(
                {
                    "job": job.name,
                    "custom_id": custom_id,
                    "property_id": entry.property_id,
                    "category": entry.category,
                    "batch_index": entry.batch_index,
                    "images": len(entry.image_ids),
                    "reason": reason,
                }
            )
    return rows


# --- rebuilding property folders --------------------------------------------------------------------------


class CollectedOnlyModel:
    """The model for the rebuild after collect: batches must come from the manifest, never from here.

    A batch request (one that carries images) is refused with a clear reason, so a batch the Batch API
    did not answer shows as failed instead of being sent at full price. Text-only requests (joining
    rooms across batches of one category) go to the real model: they are small and not worth a day.
    """

    def __init__(self, inner: VisionModel | None) -> None:
        self._inner = inner

    async def complete(self, request: ModelRequest, *, timeout: float) -> ModelResponse:
        if self._inner is None or _has_images(request):
            raise ModelCallError(
                "not answered by the Batch API: run `image-analyzer batch collect --resubmit` (or `run`)",
                retryable=False,
                kind="not_collected",
            )
        return await self._inner.complete(request, timeout=timeout)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


def _has_images(request: ModelRequest) -> bool:
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") == "image_url" for part in content
        ):
            return True
    return False


async def _rebuild_all(
    jobs: Sequence[BatchJob],
    workspace: Workspace,
    overrides: Mapping[str, Any],
    run_id: str,
    result: CollectResult,
    options: CollectOptions,
) -> None:
    """Rebuild the folders of every property these jobs answered, one pipeline run per plan."""
    groups: dict[str, list[BatchJob]] = {}
    for job in jobs:
        groups.setdefault(json.dumps(job.plan, sort_keys=True), []).append(job)
    for number, group in enumerate(groups.values()):
        properties = sorted({e.property_id for job in group for e in job.requests.values()})
        if not properties:
            continue
        names = {job.name for job in group}
        costs = [c for c in result.costs if c.job in names]
        settings = settings_for(group[0], {**overrides, "property_ids": properties})
        group_run_id = run_id if number == 0 else f"{run_id}-{number + 1}"
        summary = await rebuild(
            settings, costs, run_id=group_run_id, jobs=[j.name for j in group], options=options
        )
        result.rebuilds.append(summary)


async def rebuild(
    settings: Settings,
    costs: Sequence[CollectedCost],
    *,
    run_id: str,
    jobs: Sequence[str],
    options: CollectOptions,
) -> dict[str, Any]:
    """Run the normal pipeline over `settings.property_ids`, every batch reused from the manifest.

    The run gets the usual summary under `_runs/` (mode `batch`), with the collected answers' usage at
    batch prices, so `report` shows what the batch cost. The caller already holds the output dir's lock.
    """
    import sys

    from image_analyzer.reporters import PlainReporter
    from image_analyzer.runner import RunContext, make_model, run_pipeline

    stream = options.stream or sys.stderr
    context = RunContext.create(
        _rebuild_settings(settings), [PlainReporter(stream, quiet=options.quiet)], run_id=run_id
    )
    for cost in costs:
        entry = cost.entry
        context.bus.emit(
            RequestCost(
                property_id=entry.property_id, category=entry.category, batch_index=entry.batch_index,
                prompt_tokens=cost.usage.prompt_tokens, completion_tokens=cost.usage.completion_tokens,
                cached_tokens=cost.usage.cached_tokens, cost_usd=cost.cost_usd,
            )
        )  # fmt: skip

    def collected_only(run_settings: Settings, bus: EventBus) -> CollectedOnlyModel:
        return CollectedOnlyModel(make_model(run_settings, bus))

    return await run_pipeline(
        context, collected_only, take_lock=False, summary_extra={"mode": "batch", "batch_jobs": list(jobs)}
    )


def _rebuild_settings(settings: Settings) -> Settings:
    update: dict[str, Any] = {
        "all_properties": False, "only_seeded": False, "dry_run": False, "force": False,
        "retry_failed": False,
    }  # fmt: skip
    # The properties are named explicitly: a shard filter (when the CLI has one) must not drop any.
    for name in ("shard", "shards"):
        if name in Settings.model_fields:
            update[name] = None
    return settings.model_copy(update=update)


# --- resubmit ---------------------------------------------------------------------------------------------


async def _resubmit(
    workspace: Workspace,
    client: BatchClient,
    overrides: Mapping[str, Any],
    limits: FileLimits,
    failed: Sequence[Mapping[str, Any]],
) -> SubmitResult:
    """Plan and send again only the failed requests (same keys), then mark their old jobs."""
    jobs = {job.name: job for job in workspace.jobs.load_all()}
    by_plan: dict[str, list[BatchJob]] = {}
    for name in sorted({row["job"] for row in failed}):
        by_plan.setdefault(json.dumps(jobs[name].plan, sort_keys=True), []).append(jobs[name])
    total = SubmitResult()
    for group in by_plan.values():
        names = {job.name for job in group}
        entries = [jobs[row["job"]].requests[row["custom_id"]] for row in failed if row["job"] in names]
        settings = settings_for(
            group[0], {**overrides, "property_ids": sorted({e.property_id for e in entries}), "force": False}
        )
        result = SubmitResult(report=total.report)
        skip = workspace.jobs.pending_keys(workspace.jobs.load_all())
        await plan_and_launch(
            workspace, client, settings, limits, skip, {e.key for e in entries},
            {(e.property_id, e.category) for e in entries}, result,
        )  # fmt: skip
        for job in group:
            job.resubmitted_in = [new.name for new in result.jobs] or ["(nothing to resend)"]
            workspace.jobs.save(job)
        total.jobs.extend(result.jobs)
    return total
