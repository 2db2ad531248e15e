"""Writing one property's output folder from every answered batch of this run and earlier ones."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from image_analyzer.asking import Asker, BatchFailed, NotStarted, Where
from image_analyzer.batches import stop_run
from image_analyzer.consolidate import (
    CONSOLIDATION_VERSION,
    apply_groups,
    build_request_parts,
    identity_groups,
    needs_consolidation,
    parse_groups,
    room_entries,
)
from image_analyzer.cost import CostLedger
from image_analyzer.domain import ModelRequest, Provenance
from image_analyzer.errors import ImageAnalyzerError, ModelCallError
from image_analyzer.estimate import prompt_tokens
from image_analyzer.events import Notice, PropertyFinished
from image_analyzer.jobs import CategoryJob, output_folder_name
from image_analyzer.manifest import ManifestRecord
from image_analyzer.merge import (
    BatchRecord,
    OutputImage,
    build_property_files,
    image_file_name,
    room_assignments,
)
from image_analyzer.validate import validate_property_files

if TYPE_CHECKING:
    from image_analyzer.pipeline import RunDeps, RunTotals


class PropertyWriter:
    def __init__(self, deps: RunDeps, asker: Asker | None, totals: RunTotals, ledger: CostLedger) -> None:
        self.deps = deps
        self.ledger = ledger
        self.settings = deps.settings
        self.bus = deps.bus
        self.asker = asker
        self.totals = totals

    async def write(
        self, property_id: str, jobs: list[CategoryJob], provenance: Provenance, *, allow_requests: bool
    ) -> None:
        if self.settings.dry_run:
            return
        records: list[BatchRecord] = []
        images: list[OutputImage] = []
        for job in jobs:
            job_records, job_images = await self._category_records(job, allow_requests)
            records += job_records
            images += job_images
        failed = sum(1 for job in jobs if _category_failed(job))
        if not records:
            self._finished(property_id, jobs, failed, None, None, ())
            return
        county = self.deps.rooms_on_record(property_id)
        files = build_property_files(records, images, provenance, self.deps.schema_set, county_rooms=county)
        problems = tuple(
            f"{p.file} {p.path}: {p.message}" for p in validate_property_files(files, self.deps.schema_set)
        )
        folder = output_folder_name(property_id)
        await self._replace_json(folder, files, {i.file_name for i in images})
        if problems:
            self.totals.invalid_properties.append(property_id)
        rooms = room_assignments(records)
        self._finished(property_id, jobs, failed, folder, not problems, problems, rooms)

    async def _category_records(
        self, job: CategoryJob, allow_requests: bool
    ) -> tuple[list[BatchRecord], list[OutputImage]]:
        answered = job.answered()
        answers = {o.plan.index: dict(o.answer or {}) for o in answered}
        if needs_consolidation(answers):
            groups = await self._room_groups(job, answers, allow_requests)
            answers = apply_groups(answers, groups)
        records = [
            BatchRecord(
                property_id=job.property_id,
                category=job.category,
                batch_index=o.plan.index,
                image_ids=tuple(image.image_id for image in o.images),
                answer=answers[o.plan.index],
            )
            for o in answered
        ]
        images = [
            OutputImage(
                category=job.category,
                image_id=image_id,
                file_name=image_file_name(job.category, image_id, image.output_format),
                output_format=image.output_format,
            )
            for o in answered
            for image in o.images
            for image_id in (image.image_id, *(d.image_id for d in o.plan.duplicates.get(image.image_id, ())))
        ]
        return records, images

    async def _room_groups(
        self, job: CategoryJob, answers: dict[int, dict[str, Any]], allow_requests: bool
    ) -> list[list[str]]:
        entries = room_entries(answers)
        key = _consolidation_key(job, self.settings.model)
        record = self.deps.manifest.answered(key)
        if record is not None and not self.settings.force:
            return [list(g) for g in record.payload.get("groups", [])] or identity_groups(entries)
        if not allow_requests or self.asker is None:
            return identity_groups(entries)
        system, user, fmt = build_request_parts(job.category, entries)
        request = ModelRequest(
            request_id=f"{job.property_id}/{job.category}/rooms",
            model=self.settings.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_format=fmt,
            max_tokens=self.settings.max_tokens,
            estimated_prompt_tokens=prompt_tokens(texts=(system, user), response_format=fmt, image_tokens=()),
        )
        where = Where(job.property_id, job.category, len(job.plans))
        try:
            groups, _usage = await self.asker.ask(
                where, request, lambda content: {"groups": parse_groups(content, entries)}
            )
        except (BatchFailed, NotStarted, ImageAnalyzerError) as exc:
            if isinstance(exc, ModelCallError) and exc.fatal:
                stop_run(self.deps, self.totals, str(exc))
            self.bus.emit(
                Notice(
                    level="warning",
                    message=f"rooms of {job.property_id}/{job.category} not consolidated ({exc}): "
                    "each batch's rooms kept apart",
                )
            )
            return identity_groups(entries)
        await self.deps.manifest.append_async(
            ManifestRecord(
                key=key,
                kind="consolidation",
                property_id=job.property_id,
                category=job.category,
                batch_index=len(job.plans),
                payload={"groups": groups["groups"], "run_id": self.deps.run_id, "at": time.time()},
            )
        )
        return [list(g) for g in groups["groups"]]

    async def _replace_json(self, folder: str, files: dict[str, bytes], image_names: set[str]) -> None:
        """Write every file (each atomically, the data-group root last), then drop stale ones."""
        root_name = f"{self.deps.schema_set.data_group_cid}.json"
        for name in sorted(files, key=lambda n: n == root_name):
            await self.deps.store.write_bytes(f"{folder}/{name}", files[name])
        keep = set(files) | image_names
        for path in await self.deps.store.list_files(folder):
            if path.rsplit("/", 1)[-1] not in keep:
                await self.deps.store.delete(path)

    def _finished(
        self,
        property_id: str,
        jobs: list[CategoryJob],
        failed: int,
        folder: str | None,
        valid: bool | None,
        problems: tuple[str, ...],
        rooms: dict[str, list[str]] | None = None,
    ) -> None:
        cost = self.ledger.property_cost(property_id)
        self.bus.emit(
            PropertyFinished(
                property_id=property_id,
                categories=len(jobs),
                failed_categories=failed,
                cost_usd=cost,
                output_dir=folder,
                valid=valid,
                problems=problems[:20],
                rooms=rooms or {},
            )
        )


def _category_failed(job: CategoryJob) -> bool:
    return job.failure is not None or any(
        o.status in ("failed", "not_started") for o in job.outcomes.values()
    )


def _consolidation_key(job: CategoryJob, model: str) -> str:
    batch_keys = [job.outcomes[i].key or "" for i in sorted(job.outcomes) if job.outcomes[i].has_answer]
    material = "|".join(["rooms", CONSOLIDATION_VERSION, model, job.property_id, job.category, *batch_keys])
    return hashlib.sha256(material.encode()).hexdigest()
