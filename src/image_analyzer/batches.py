"""One batch: read and prepare its images, reuse an earlier answer or ask the model, checkpoint it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from image_analyzer.asking import ESTIMATED_COMPLETION_TOKENS, Asker, BatchFailed, NotStarted, Where
from image_analyzer.domain import ImageRef, ImageSource, ModelRequest, PreparedImage, Usage
from image_analyzer.errors import ImageAnalyzerError, ModelCallError, OutputError, SourceError
from image_analyzer.events import (
    BatchFailed as BatchFailedEvent,
)
from image_analyzer.events import (
    BatchFinished,
    BatchPlanned,
    BatchReused,
    BatchStarted,
    EventBus,
    ImageSkipped,
    Notice,
)
from image_analyzer.jobs import BatchOutcome, BatchPlan, output_folder_name
from image_analyzer.manifest import ManifestRecord, batch_key, content_key
from image_analyzer.merge import image_file_name
from image_analyzer.prompts import PROMPT_VERSION, build_prompt
from image_analyzer.schemas import SchemaSet, parse_answer, response_format
from image_analyzer.settings import Settings

if TYPE_CHECKING:
    from image_analyzer.pipeline import RunDeps, RunTotals


class BatchRunner:
    def __init__(self, deps: RunDeps, asker: Asker | None, totals: RunTotals) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.bus = deps.bus
        self.asker = asker
        self.totals = totals
        # Prepared images wait for a request slot; bounding both keeps memory flat.
        self._request_slots = asyncio.Semaphore(self.settings.max_workers)
        self._prepare_slots = asyncio.Semaphore(self.settings.max_workers + 2)

    async def run(self, plan: BatchPlan) -> BatchOutcome:
        try:
            return await self._run(plan)
        except OutputError as exc:
            # Nowhere to save answers (disk full, unwritable): paying for more would only lose them.
            self.stop_run(str(exc))
            return BatchOutcome(plan=plan, status="failed", reason=str(exc))

    def stop_run(self, message: str) -> None:
        stop_run(self.deps, self.totals, message)

    async def _run(self, plan: BatchPlan) -> BatchOutcome:
        async with self._prepare_slots:
            if self.deps.controller.stopping:
                return BatchOutcome(plan=plan, status="not_started", reason=self._stop_reason())
            images = await self._prepare_all(plan)
            if not images:
                return BatchOutcome(plan=plan, status="empty", reason="no usable image in this batch")
            request, key = self._build_request(plan, images)
            planned = BatchOutcome(
                plan=plan,
                status="planned",
                images=images,
                key=key,
                estimated_prompt_tokens=request.estimated_prompt_tokens,
            )
            reused = self._reuse(planned)
            if reused is not None:
                if not self.settings.dry_run:
                    await self._write_images(plan, images)
                return reused
            if self.settings.retry_failed and not self.deps.manifest.failed_last_time(key):
                planned.status, planned.reason = "not_started", "not failed last time (--retry-failed)"
                return planned
            self._note_reanalysis(planned)
            self.totals.planned_requests += 1
            self.totals.estimated_prompt_tokens += request.estimated_prompt_tokens
            if self.settings.dry_run:
                self._report_planned(planned)
                return planned
            return await self._ask(planned, request)

    # --- preparation ---------------------------------------------------------------------------------

    async def _prepare_all(self, plan: BatchPlan) -> list[PreparedImage]:
        return await prepare_batch_images(self.deps.source, self.settings, plan, self.bus)

    def _skip(self, plan: BatchPlan, location: str, reason: str) -> None:
        self.bus.emit(
            ImageSkipped(
                location=location, reason=reason, property_id=plan.property_id, category=plan.category
            )
        )

    # --- request ---------------------------------------------------------------------------------------

    def _build_request(self, plan: BatchPlan, images: list[PreparedImage]) -> tuple[ModelRequest, str]:
        county = self.deps.rooms_on_record(plan.property_id)
        return build_batch_request(self.settings, self.deps.schema_set, plan, images, county)

    def _reuse(self, planned: BatchOutcome) -> BatchOutcome | None:
        if self.settings.force or planned.key is None:
            return None
        record = self.deps.manifest.answered(planned.key)
        if record is None:
            return None
        self.totals.reused_batches += 1
        planned.status, planned.answer = "reused", record.payload.get("answer")
        return planned

    def _note_reanalysis(self, planned: BatchOutcome) -> None:
        """Count a batch an earlier run answered that is asked again, and say what changed."""
        hashes = [image.content_hash for image in planned.images]
        plan = planned.plan
        earlier = self.deps.manifest.answered_before(
            content_key(property_id=plan.property_id, category=plan.category, image_hashes=hashes)
        )
        if earlier is None:
            return
        reasons = self._changes_since(earlier.payload) or (["--force"] if self.settings.force else [])
        if not reasons:
            return
        self.totals.reanalysed_batches += 1
        for reason in reasons:
            if reason not in self.totals.reanalysed_because:
                self.totals.reanalysed_because.append(reason)

    def _changes_since(self, earlier: Mapping[str, Any]) -> list[str]:
        now = {
            "model": self.settings.model,
            "prompt version": PROMPT_VERSION,
            "schema set": self.deps.schema_set.fingerprint,
        }
        then = {
            "model": earlier.get("model"),
            "prompt version": earlier.get("prompt_version"),
            "schema set": earlier.get("schema_set"),
        }
        return [
            f"{name} {_short(then[name])} -> {_short(now[name])}" for name in now if then[name] != now[name]
        ]

    async def _ask(self, planned: BatchOutcome, request: ModelRequest) -> BatchOutcome:
        assert self.asker is not None
        assert planned.key is not None
        plan, ids = planned.plan, [image.image_id for image in planned.images]
        self.bus.emit(
            BatchStarted(
                property_id=plan.property_id,
                category=plan.category,
                batch_index=plan.index,
                batch_count=plan.count,
                images=len(ids),
                estimated_prompt_tokens=request.estimated_prompt_tokens,
            )
        )

        def parse(content: str | None) -> dict[str, Any]:
            return parse_batch_answer(self.deps.schema_set, content, ids)

        where = Where(plan.property_id, plan.category, plan.index)
        try:
            async with self._request_slots:
                answer, usage = await self.asker.ask(where, request, parse)
        except NotStarted:
            planned.status, planned.reason = "not_started", self._stop_reason()
            return planned
        except BatchFailed as exc:
            await self._checkpoint(planned, "failure", {"reason": str(exc)})
            planned.status, planned.reason = "failed", str(exc)
            return planned
        except ModelCallError as exc:
            # Fatal for the whole run (bad key, no quota): stop starting anything, keep what is done.
            self.stop_run(str(exc))
            planned.status, planned.reason = "failed", str(exc)
            return planned
        await self._checkpoint(planned, "batch", {"answer": answer, "usage": _usage_dict(usage)})
        await self._write_images(plan, planned.images)
        planned.status, planned.answer, planned.usage = "answered", answer, usage
        return planned

    async def _checkpoint(self, planned: BatchOutcome, kind: str, payload: dict[str, Any]) -> None:
        assert planned.key is not None
        plan = planned.plan
        await self.deps.manifest.append_async(
            ManifestRecord(
                key=planned.key,
                kind=kind,
                property_id=plan.property_id,
                category=plan.category,
                batch_index=plan.index,
                payload={
                    **payload,
                    "image_ids": [image.image_id for image in planned.images],
                    "image_hashes": [image.content_hash for image in planned.images],
                    "model": self.settings.model,
                    "prompt_version": PROMPT_VERSION,
                    "schema_set": self.deps.schema_set.fingerprint,
                    "run_id": self.deps.run_id,
                    "at": time.time(),
                },
            )
        )

    async def _write_images(self, plan: BatchPlan, images: list[PreparedImage]) -> None:
        """Copy each analysed image, and each identical copy of it, beside its file object."""
        folder = output_folder_name(plan.property_id)
        for image in images:
            image_ids = [image.image_id, *(d.image_id for d in plan.duplicates.get(image.image_id, ()))]
            for image_id in image_ids:
                name = image_file_name(plan.category, image_id, image.output_format)
                await self.deps.store.write_bytes(f"{folder}/{name}", image.data)

    # --- events ----------------------------------------------------------------------------------------

    def _report_planned(self, planned: BatchOutcome) -> None:
        plan = planned.plan
        usage = Usage(
            prompt_tokens=planned.estimated_prompt_tokens, completion_tokens=ESTIMATED_COMPLETION_TOKENS
        )
        self.bus.emit(
            BatchPlanned(
                property_id=plan.property_id,
                category=plan.category,
                batch_index=plan.index,
                batch_count=plan.count,
                images=len(planned.images),
                estimated_prompt_tokens=usage.prompt_tokens,
                estimated_completion_tokens=usage.completion_tokens,
                estimated_cost_usd=self.deps.prices.cost(self.settings.model, usage),
            )
        )

    def report_outcome(self, outcome: BatchOutcome) -> None:
        plan = outcome.plan
        pid, category, index = plan.property_id, plan.category, plan.index
        if outcome.status == "answered":
            self.bus.emit(
                BatchFinished(
                    property_id=pid,
                    category=category,
                    batch_index=index,
                    batch_count=plan.count,
                    images=_with_duplicates(outcome),
                )
            )
        elif outcome.status == "reused":
            self.bus.emit(
                BatchReused(
                    property_id=pid, category=category, batch_index=index, images=_with_duplicates(outcome)
                )
            )
        elif outcome.status == "failed":
            reason = outcome.reason or "failed"
            self.bus.emit(
                BatchFailedEvent(property_id=pid, category=category, batch_index=index, reason=reason)
            )
            self._skip_images(outcome, f"batch failed: {outcome.reason}")
        elif outcome.status == "not_started":
            self._skip_images(outcome, f"not analysed: {outcome.reason}")

    def _skip_images(self, outcome: BatchOutcome, reason: str) -> None:
        refs = [image.ref for image in outcome.images] or list(outcome.plan.refs)
        for ref in refs:
            self._skip(outcome.plan, ref.locator, reason)

    def _stop_reason(self) -> str:
        request = self.deps.controller.request
        return f"run stopped ({request.reason})" if request else "run stopped"


def _with_duplicates(outcome: BatchOutcome) -> int:
    """Images the answer covers: those sent, plus the identical copies that ride on them."""
    sent = {image.image_id for image in outcome.images}
    riders = sum(len(d) for image_id, d in outcome.plan.duplicates.items() if image_id in sent)
    return len(sent) + riders


def stop_run(deps: RunDeps, totals: RunTotals, message: str) -> None:
    """A fatal error: no new request starts, in-flight ones finish, the summary names it."""
    if totals.fatal_error is None:
        totals.fatal_error = message
        deps.bus.emit(Notice(level="error", message=message))
    deps.controller.stop(message, exit_code=1)


def _short(value: Any) -> str:
    """Schema fingerprints are long hashes: their first 12 characters tell two sets apart."""
    text = str(value)
    return text[:12] if len(text) > 40 else text


def _usage_dict(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
    }


def build_batch_request(
    settings: Settings,
    schema_set: SchemaSet,
    plan: BatchPlan,
    images: Sequence[PreparedImage],
    county_rooms: Mapping[str, int] | None = None,
) -> tuple[ModelRequest, str]:
    """The request for one batch and its resume key. `run` and `batch submit` both build requests here."""
    from image_analyzer.estimate import prompt_tokens
    from image_analyzer.images import estimate_image_tokens
    from image_analyzer.model import build_messages

    shown = request_image_ids(len(images))
    labels = [f"image_id: {n} (photo {image.image_id})" for n, image in zip(shown, images, strict=True)]
    system, user = build_prompt(schema_set, plan.category, shown, [], county_rooms)
    fmt = response_format(schema_set, plan.category, shown)
    estimate = prompt_tokens(
        texts=(system, user, *labels),
        response_format=fmt,
        image_tokens=(
            estimate_image_tokens(settings.model, i.width, i.height, settings.detail) for i in images
        ),
    )
    key = batch_key(
        property_id=plan.property_id,
        category=plan.category,
        image_hashes=[image.content_hash for image in images],
        model=settings.model,
        prompt_version=PROMPT_VERSION,
        schema_fingerprint=schema_set.fingerprint,
    )
    request = ModelRequest(
        request_id=f"{plan.property_id}/{plan.category}/{plan.index + 1}",
        model=settings.model,
        messages=build_messages(system, user, images, settings.detail, labels),
        response_format=fmt,
        max_tokens=settings.max_tokens,
        estimated_prompt_tokens=estimate,
    )
    return request, key


def request_image_ids(count: int) -> list[str]:
    """The ids the model sees: `img_1`..`img_n` by position in the batch.

    The response schema lists them as an enum, so with positional ids it depends only on the batch size:
    every full batch sends the very same schema, which the service can then cache as a prompt prefix
    (the schema is thousands of tokens). The photo's own id rides in the label before each image.
    """
    return [f"img_{n + 1}" for n in range(count)]


def parse_batch_answer(
    schema_set: SchemaSet, content: str | None, image_ids: Sequence[str]
) -> dict[str, Any]:
    """Check an answer against the request's schema, then give its images their own ids back."""
    shown = request_image_ids(len(image_ids))
    answer = parse_answer(schema_set, content, shown)
    real = dict(zip(shown, image_ids, strict=True))
    for item in [*(answer.get("rooms") or []), *(answer.get("appliances") or [])]:
        item["image_ids"] = [real[i] for i in item.get("image_ids") or []]
    return answer


async def prepare_batch_images(
    source: ImageSource, settings: Settings, plan: BatchPlan, bus: EventBus
) -> list[PreparedImage]:
    """Read and prepare a batch's images concurrently; each one that cannot be used is a named skip.

    `run` and `batch submit` both prepare here, so the bytes sent and the resume hashes are the same.
    """
    results = await asyncio.gather(
        *(
            _prepare_one(source, settings, plan, bus, ref, image_id)
            for ref, image_id in zip(plan.refs, plan.image_ids, strict=True)
        )
    )
    return [image for image in results if image is not None]


async def _prepare_one(
    source: ImageSource, settings: Settings, plan: BatchPlan, bus: EventBus, ref: ImageRef, image_id: str
) -> PreparedImage | None:
    from image_analyzer.images import prepare_image

    try:
        data = await source.read(ref)
        return await asyncio.to_thread(
            prepare_image,
            ref,
            data,
            image_id=image_id,
            model=settings.model,
            detail=settings.detail,
            max_side=settings.max_image_side,
            max_pixels=settings.max_image_pixels,
        )
    except SourceError as exc:
        reason = f"unreadable: {exc}"
    except ImageAnalyzerError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
    bus.emit(
        ImageSkipped(
            location=ref.locator, reason=reason, property_id=plan.property_id, category=plan.category
        )
    )
    return None
