"""The orchestration of a run: properties, categories, batches, semaphores, timeouts and stopping.

Knows nothing of Typer or Rich: it talks to the outside through the seams in `domain.py` and reports
through the event bus. Concurrency model:

- properties are listed lazily and at most `category_workers` of them are in progress at once
  (one when categories run sequentially), so memory stays flat however many properties there are;
- categories wait on one `asyncio.Semaphore` shared by all properties (`--category-workers`, or 1);
- each category runs under `asyncio.wait_for(--category-timeout)`; in parallel mode its batches go out
  concurrently, in sequential mode one after another;
- model requests wait on a second semaphore (`--max-workers`) and the shared rate limiter;
- every answered batch is checkpointed to the manifest before anything else happens with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from image_analyzer.asking import Asker
from image_analyzer.control import StopController
from image_analyzer.cost import CostLedger, PriceTable
from image_analyzer.domain import CategoryListing, ImageSource, PropertyListing, Provenance, VisionModel
from image_analyzer.duplicates import find_duplicates
from image_analyzer.errors import ConfigError, ImageAnalyzerError, OutputError
from image_analyzer.events import (
    CategoryFailed,
    CategoryFinished,
    CategoryQueued,
    CategoryStarted,
    EventBus,
    ImageSkipped,
    Notice,
    PropertyDiscovered,
    PropertyFinished,
    RunStarted,
)
from image_analyzer.jobs import BatchOutcome, BatchPlan, CategoryJob
from image_analyzer.manifest import Manifest
from image_analyzer.retry import RetryPolicy
from image_analyzer.schemas import SchemaSet
from image_analyzer.seed import SeedTable, default_provenance
from image_analyzer.settings import Settings
from image_analyzer.sharding import Shard, in_shard
from image_analyzer.store import OutputStore


@dataclass(slots=True)
class RunDeps:
    settings: Settings
    run_id: str
    source: ImageSource
    store: OutputStore
    model: VisionModel | None
    schema_set: SchemaSet
    prices: PriceTable
    seed: SeedTable | None
    bus: EventBus
    manifest: Manifest
    controller: StopController = field(default_factory=StopController)
    county_rooms: Callable[[str], Mapping[str, int] | None] | None = None
    shard: Shard | None = None

    def rooms_on_record(self, property_id: str) -> Mapping[str, int] | None:
        """The county's room counts for a property, when county data was given and has it."""
        return self.county_rooms(property_id) if self.county_rooms is not None else None


@dataclass(slots=True)
class RunTotals:
    properties: int = 0
    categories: int = 0
    failed_categories: int = 0
    invalid_properties: list[str] = field(default_factory=list)
    reused_batches: int = 0
    reanalysed_batches: int = 0
    duplicate_images: int = 0
    planned_requests: int = 0
    estimated_prompt_tokens: int = 0
    fatal_error: str | None = None
    reanalysed_because: list[str] = field(default_factory=list)
    """What changed since an earlier run answered the re-analysed batches (`model a -> b`, `--force`)."""


class Pipeline:
    def __init__(self, deps: RunDeps) -> None:
        from image_analyzer.batches import BatchRunner
        from image_analyzer.finalize import PropertyWriter

        self.deps = deps
        self.settings = deps.settings
        self.bus = deps.bus
        self.controller = deps.controller
        self.ledger = CostLedger()
        self.totals = RunTotals()
        self.parallel = self.settings.parallel_categories
        workers = self.settings.category_workers if self.parallel else 1
        self._property_slots = asyncio.Semaphore(workers)
        self._category_slots = asyncio.Semaphore(workers)
        self._pending: dict[str, list[CategoryJob]] = {}
        asker = self._make_asker()
        self.batches = BatchRunner(deps, asker, self.totals)
        self.writer = PropertyWriter(deps, asker, self.totals, self.ledger)

    def _make_asker(self) -> Asker | None:
        if self.deps.model is None:
            return None
        return Asker(
            model=self.deps.model,
            bus=self.bus,
            ledger=self.ledger,
            prices=self.deps.prices,
            policy=RetryPolicy(max_retries=self.settings.max_retries),
            timeout=self.settings.request_timeout,
            controller=self.controller,
            max_cost=self.settings.max_cost,
        )

    # --- the run -----------------------------------------------------------------------------------

    async def run(self) -> RunTotals:
        self.bus.emit(
            RunStarted(
                run_id=self.deps.run_id,
                source=self.deps.source.describe(),
                model=self.settings.model,
                dry_run=self.settings.dry_run,
                parallel_categories=self.parallel,
                category_workers=self.settings.category_workers if self.parallel else 1,
                max_workers=self.settings.max_workers,
                max_cost_usd=self.settings.max_cost,
                rpm_limit=self.settings.rpm,
                tpm_limit=self.settings.tpm,
            )
        )
        if self.deps.seed is None:
            self.bus.emit(
                Notice(
                    level="warning",
                    message="no seed file (seed.csv or --seed-csv): properties get placeholder provenance",
                )
            )
        work = asyncio.create_task(self._run_all_properties())
        await self._supervise(work)
        await self._flush_unfinished()
        return self.totals

    async def _supervise(self, work: asyncio.Task[None]) -> None:
        """Wait for the work; on a stop request allow the grace period, then cancel what is left."""
        stopping = asyncio.create_task(self.controller.wait_stopping())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                self._announce_stop()
                await self._wait_grace(work)
            if work.done() and not work.cancelled() and work.exception() is not None:
                raise _first_error(work.exception())  # type: ignore[arg-type]
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work

    def _announce_stop(self) -> None:
        reason = self.controller.request.reason if self.controller.request else "stop requested"
        self.bus.emit(
            Notice(
                level="warning",
                message=f"stopping ({reason}): no new requests; in-flight ones get up to "
                f"{self.settings.grace_seconds:g} s to finish (Ctrl-C to stop at once)",
            )
        )

    async def _wait_grace(self, work: asyncio.Task[None]) -> None:
        immediate = asyncio.create_task(self.controller.wait_immediate())
        try:
            await asyncio.wait(
                {work, immediate}, timeout=self.settings.grace_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            immediate.cancel()
        if not work.done():
            self.bus.emit(Notice(level="warning", message="stopping now: in-flight requests cancelled"))

    async def _run_all_properties(self) -> None:
        async with asyncio.TaskGroup() as group:
            async for property_id in self.selected_property_ids():
                if self.controller.stopping:
                    break
                await self._property_slots.acquire()
                if self.controller.stopping:
                    # The stop came while waiting for a slot: this property is not started at all.
                    self._property_slots.release()
                    break
                group.create_task(self._run_property_slot(property_id))

    async def _run_property_slot(self, property_id: str) -> None:
        try:
            await self._run_property(property_id)
        finally:
            self._property_slots.release()

    async def selected_property_ids(self) -> AsyncIterator[str]:
        seeded = self._seeded_ids()
        seen: set[str] = set()
        async for property_id in self._candidate_ids():
            if property_id in seen:
                continue
            seen.add(property_id)
            if not in_shard(property_id, self.deps.shard):
                continue
            if seeded is not None and property_id not in seeded:
                continue
            yield property_id
        if seeded is not None and self.settings.all_properties:
            for missing in sorted(m for m in seeded - seen if in_shard(m, self.deps.shard)):
                self.bus.emit(
                    Notice(level="warning", message=f"seed.csv lists {missing} but it has no folder")
                )

    def _seeded_ids(self) -> set[str] | None:
        if not self.settings.only_seeded:
            return None
        if self.deps.seed is None:
            raise ConfigError("--only-seeded needs a seed file: pass --seed-csv PATH or add seed.csv")
        return set(self.deps.seed.rows)

    async def _candidate_ids(self) -> AsyncIterator[str]:
        if self.settings.property_ids:
            for property_id in self.settings.property_ids:
                yield property_id
            return
        async for property_id in self.deps.source.property_ids():
            yield property_id
        for skipped in self.deps.source.root_skipped():
            self.bus.emit(ImageSkipped(location=skipped.location, reason=skipped.reason))

    # --- one property --------------------------------------------------------------------------------

    async def _run_property(self, property_id: str) -> None:
        listing = await self.deps.source.list_property(property_id)
        self._report_listing(listing)
        jobs = [await self.plan_category(c) for c in listing.categories if c.images]
        if not jobs:
            return
        self._warn_without_seed_row(property_id)
        self.totals.properties += 1
        self._pending[property_id] = jobs
        for job in jobs:
            self.bus.emit(
                CategoryQueued(
                    property_id=property_id,
                    category=job.category,
                    images=len(job.listing.images),
                    batches=len(job.plans),
                )
            )
        if self.parallel:
            async with asyncio.TaskGroup() as group:
                for job in jobs:
                    group.create_task(self._run_category(job))
        else:
            for job in jobs:
                await self._run_category(job)
        await self._finish_property(property_id)

    async def plan_category(self, listing: CategoryListing) -> CategoryJob:
        duplicate_of = await find_duplicates(self.deps.source, listing.images)
        if duplicate_of:
            self.totals.duplicate_images += len(duplicate_of)
            self.bus.emit(
                Notice(
                    level="info",
                    message=f"{len(duplicate_of)} identical image(s) in {listing.property_id}/"
                    f"{listing.category} are sent once; the answer applies to each copy",
                )
            )
        return CategoryJob.plan(listing, self.settings.batch_size, duplicate_of)

    def _report_listing(self, listing: PropertyListing) -> None:
        for skipped in listing.skipped:
            self.bus.emit(
                ImageSkipped(
                    location=skipped.location,
                    reason=skipped.reason,
                    property_id=skipped.property_id or listing.property_id,
                    category=skipped.category,
                )
            )
        categories = tuple(c.category for c in listing.categories if c.images)
        if categories:
            self.bus.emit(
                PropertyDiscovered(
                    property_id=listing.property_id,
                    categories=categories,
                    images=listing.image_count,
                    parallel=self.parallel,
                )
            )

    def _warn_without_seed_row(self, property_id: str) -> None:
        if self.deps.seed is not None and property_id not in self.deps.seed.rows:
            placeholder = default_provenance(property_id).source_http_request.get("url")
            self.bus.emit(
                Notice(
                    level="warning",
                    message=f"no seed.csv row for {property_id}: placeholder provenance {placeholder}",
                )
            )

    def provenance(self, property_id: str) -> Provenance:
        row = self.deps.seed.rows.get(property_id) if self.deps.seed else None
        return row.provenance() if row else default_provenance(property_id)

    async def _finish_property(self, property_id: str) -> None:
        jobs = self._pending.pop(property_id, None)
        if jobs is None:
            return
        for job in jobs:
            self._report_unprocessed(job, self._stop_reason())
        await self._write_property(property_id, jobs, allow_requests=True)

    async def _flush_unfinished(self) -> None:
        """After a stop: save every property that has answers, without sending anything more."""
        for property_id in list(self._pending):
            jobs = self._pending.pop(property_id)
            for job in jobs:
                self._report_unprocessed(job, self._stop_reason())
            await self._write_property(property_id, jobs, allow_requests=False)

    async def _write_property(
        self, property_id: str, jobs: list[CategoryJob], *, allow_requests: bool
    ) -> None:
        try:
            await self.writer.write(
                property_id, jobs, self.provenance(property_id), allow_requests=allow_requests
            )
        except OutputError as exc:
            # Answers stay in the manifest: the rerun rebuilds this folder without asking again.
            self.batches.stop_run(str(exc))

    def _stop_reason(self) -> str:
        request = self.controller.request
        return f"run stopped ({request.reason})" if request else "run stopped"

    # --- one category ---------------------------------------------------------------------------------

    async def _run_category(self, job: CategoryJob) -> None:
        async with self._category_slots:
            if self.controller.stopping:
                self._report_unprocessed(job, self._stop_reason())
                return
            self.bus.emit(CategoryStarted(property_id=job.property_id, category=job.category))
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._run_batches(job), timeout=self.settings.category_timeout)
            except TimeoutError:
                job.failure = f"TimeoutError after {self.settings.category_timeout:g} s"
            except ImageAnalyzerError as exc:
                job.failure = f"{type(exc).__name__}: {exc}"
            self._report_unprocessed(job, job.failure or self._stop_reason())
            self._finish_category(job, time.monotonic() - started)

    async def _run_batches(self, job: CategoryJob) -> None:
        if self.parallel and len(job.plans) > 1:
            async with asyncio.TaskGroup() as group:
                for plan in job.plans:
                    group.create_task(self._run_one_batch(job, plan))
        else:
            for plan in job.plans:
                await self._run_one_batch(job, plan)

    async def _run_one_batch(self, job: CategoryJob, plan: BatchPlan) -> None:
        outcome = await self.batches.run(plan)
        job.outcomes[plan.index] = outcome
        self.batches.report_outcome(outcome)

    def _report_unprocessed(self, job: CategoryJob, reason: str) -> None:
        """Images of batches that never finished are listed as skipped with why: nothing goes missing."""
        for plan in job.plans:
            if plan.index in job.outcomes:
                continue
            job.outcomes[plan.index] = BatchOutcome(plan=plan, status="not_started", reason=reason)
            for ref in plan.refs:
                self.bus.emit(
                    ImageSkipped(
                        location=ref.locator,
                        reason=f"not analysed: {reason}",
                        property_id=plan.property_id,
                        category=plan.category,
                    )
                )

    def _finish_category(self, job: CategoryJob, elapsed: float) -> None:
        self.totals.categories += 1
        outcomes = [job.outcomes[i] for i in sorted(job.outcomes)]
        failure = job.failure or _first_failure(outcomes)
        if failure is not None:
            self.totals.failed_categories += 1
            self.bus.emit(CategoryFailed(property_id=job.property_id, category=job.category, reason=failure))
            return
        usage = self.ledger.category_usage(job.property_id, job.category)
        self.bus.emit(
            CategoryFinished(
                property_id=job.property_id,
                category=job.category,
                images=sum(len(o.images) for o in outcomes if o.status != "empty"),
                cost_usd=self.ledger.category_cost(job.property_id, job.category),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
        )


def _first_error(exc: BaseException) -> BaseException:
    """The error to report from a task group's failure: our own one-line error when there is one."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    ours = exc.subgroup(lambda e: isinstance(e, ImageAnalyzerError))
    group = ours if ours is not None else exc
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _first_failure(outcomes: Sequence[BatchOutcome]) -> str | None:
    for outcome in outcomes:
        if outcome.status in ("failed", "not_started"):
            return outcome.reason or outcome.status
    return None


__all__ = ["Pipeline", "PropertyFinished", "RunDeps", "RunTotals"]
