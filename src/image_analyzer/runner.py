"""The `run` use case: wire the source, model, stores and reporters together and run the pipeline."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from image_analyzer.control import EXIT_INTERRUPTED, EXIT_TERMINATED, StopController
from image_analyzer.domain import ImageSource, VisionModel
from image_analyzer.errors import ConfigError, OutputError
from image_analyzer.events import EventBus, Notice, RateLimitPause, Reporter, RunFinished
from image_analyzer.settings import Settings, require_selection
from image_analyzer.store import RUNS_DIR, STATE_DIR, LocalStore, OutputStore

if TYPE_CHECKING:
    from image_analyzer.runstate import RunState
    from image_analyzer.sharding import Shard

log = logging.getLogger("image_analyzer")
EVENTS_LOGGER = "image_analyzer.run"
"""The logger the event stream goes to (the log file); the dashboard shows events itself."""


@dataclass(frozen=True, slots=True)
class Display:
    json_output: bool = False
    events_file: Path | None = None
    no_dashboard: bool = False
    quiet: bool = False


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def execute_run(settings: Settings, display: Display) -> int:
    require_selection(settings)
    if not settings.dry_run and not settings.api_key_value():
        raise ConfigError("no API key: set OPENAI_API_KEY or pass --api-key (or use --dry-run)")
    setup_logging(settings)
    return asyncio.run(_run(settings, display))


def setup_logging(settings: Settings) -> None:
    path = settings.log_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _QuietFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--log-file: cannot write {path}: {exc.strerror}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("image_analyzer")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    root.propagate = False


class _QuietFileHandler(logging.FileHandler):
    """A log file that, once the disk refuses it, says so in one line instead of a traceback per record."""

    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._warned:
            self._warned = True
            sys.stderr.write(f"warning: log file {self.baseFilename} not written any more (disk full?)\n")


def _reporters(settings: Settings, display: Display) -> list[Reporter]:
    from image_analyzer.reporters import JsonLinesReporter, LogReporter, PlainReporter

    reporters: list[Reporter] = [LogReporter(logging.getLogger(EVENTS_LOGGER))]
    if display.events_file is not None:
        events = JsonLinesReporter(display.events_file)
        events.open()
        reporters.append(events)
    stream = sys.stderr if display.json_output else sys.stdout
    if not display.no_dashboard and stream.isatty():
        from image_analyzer.dashboard import Dashboard

        dashboard = Dashboard.for_stream(stream, settings=settings, quiet=display.quiet)
        reporters.append(dashboard)
        _log_above_dashboard(dashboard)
    else:
        reporters.append(PlainReporter(stream, quiet=display.quiet))
    return reporters


def _log_above_dashboard(dashboard: Any) -> None:
    """Warnings logged outside the event stream print above the live area; events have the footer."""
    handler = dashboard.logging_handler(logging.WARNING)
    handler.addFilter(lambda record: not record.name.startswith(EVENTS_LOGGER))
    log.addHandler(handler)


def make_source(settings: Settings) -> ImageSource:
    if settings.uses_s3_source:
        from image_analyzer.sources.s3 import S3Source

        assert settings.bucket is not None
        return S3Source(
            bucket=settings.bucket,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            profile=settings.profile,
            download_workers=settings.download_workers,
        )
    from image_analyzer.sources.local import LocalSource

    return LocalSource(settings.images_dir)


def make_store(settings: Settings) -> tuple[OutputStore, Path]:
    """The output store and the local folder for run state (manifest, lock)."""
    if settings.output_dir.startswith("s3://"):
        from platformdirs import user_state_path

        from image_analyzer.s3_store import S3Store

        store = S3Store.from_url(
            settings.output_dir,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            profile=settings.profile,
        )
        digest = hashlib.sha256(settings.output_dir.encode()).hexdigest()[:16]
        return store, user_state_path("image-analyzer") / digest
    root = Path(settings.output_dir)
    return LocalStore(root), root / STATE_DIR


def make_model(settings: Settings, bus: EventBus) -> VisionModel | None:
    """The shared client behind the shared rate limiter; None for a dry run (nothing is sent)."""
    if settings.dry_run:
        return None
    from image_analyzer.asking import LimitedModel
    from image_analyzer.model import DeferredModel, OpenAIVisionModel, preload_client_library
    from image_analyzer.ratelimit import RateLimiter

    key = settings.api_key_value()
    assert key is not None

    def paused(resume_at: float, reason: str) -> None:
        # The limiter's clock is monotonic; events carry wall-clock times.
        bus.emit(RateLimitPause(resume_at=time.time() + resume_at - time.monotonic(), reason=reason))

    limiter = RateLimiter(rpm=settings.rpm, tpm=settings.tpm, on_pause=paused)

    def build() -> VisionModel:
        client = OpenAIVisionModel(
            api_key=key, base_url=settings.base_url, max_connections=settings.max_workers + 4
        )
        return LimitedModel(client, limiter, bus)

    # openai takes about half a second to import: load it in a thread while the first images are prepared.
    loaded = asyncio.get_running_loop().run_in_executor(None, preload_client_library)
    return DeferredModel(build, loaded)


ModelFactory = Callable[[Settings, EventBus], "VisionModel | None"]


@dataclass(slots=True)
class RunContext:
    """What one run is made of, before the pipeline starts. `batch collect` builds one too."""

    settings: Settings
    run_id: str
    shard: Shard | None
    state: RunState
    bus: EventBus

    @classmethod
    def create(
        cls, settings: Settings, reporters: list[Reporter], *, run_id: str | None = None
    ) -> RunContext:
        from image_analyzer.runstate import RunState
        from image_analyzer.sharding import resolve_shard, run_id_from_env

        state = RunState()
        run_id = run_id or settings.run_id or run_id_from_env() or new_run_id()
        shard = resolve_shard(settings.shard, settings.shards)
        return cls(settings, run_id, shard, state, EventBus([state, *reporters]))

    @property
    def summary_name(self) -> str:
        """Shards share a run id, so each writes its own summary file (`report` merges them)."""
        if self.shard is None:
            return self.run_id
        return f"{self.run_id}-shard-{self.shard.index}-of-{self.shard.count}"

    @property
    def state_suffix(self) -> str:
        return "" if self.shard is None else f"-shard-{self.shard.index}-of-{self.shard.count}"


async def _run(settings: Settings, display: Display) -> int:
    context = RunContext.create(settings, _reporters(settings, display))
    summary = await run_pipeline(context, make_model, install_signals=True)
    if display.json_output:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    return int(summary["exit_code"])


async def run_pipeline(
    context: RunContext,
    model_factory: ModelFactory,
    *,
    install_signals: bool = False,
    take_lock: bool = True,
    summary_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the pipeline with everything it needs; write and return the run summary."""
    from image_analyzer.cost import PriceTable
    from image_analyzer.county import CountyData
    from image_analyzer.lock import RunLock
    from image_analyzer.manifest import Manifest
    from image_analyzer.pipeline import Pipeline, RunDeps
    from image_analyzer.schemas import SchemaSet
    from image_analyzer.seed import load_seed_for

    settings, bus = context.settings, context.bus
    schema_set = SchemaSet.load(settings.schema_set)
    prices = PriceTable.load(settings.prices_file)
    seed = load_seed_for(settings.seed_csv)
    for warning in seed.warnings if seed is not None else ():
        bus.emit(Notice(level="warning", message=warning))
    _check_prices(settings, prices, bus)
    source = make_source(settings)
    store, state_dir = make_store(settings)
    lock = RunLock(state_dir / f"lock{context.state_suffix}")
    if take_lock and not settings.dry_run:
        lock.acquire()
    manifest = Manifest(state_dir / f"manifest{context.state_suffix}.jsonl")
    model: VisionModel | None = None
    controller = StopController()
    started = time.time()
    try:
        manifest.load()
        if not settings.dry_run:
            await store.check()
        await source.check()
        model = model_factory(settings, bus)
        county = CountyData(settings.county_data_dir, warn=_notice_to(bus))
        deps = RunDeps(
            settings=settings, run_id=context.run_id, source=source, store=store, model=model,
            schema_set=schema_set, prices=prices, seed=seed, bus=bus, manifest=manifest,
            controller=controller, county_rooms=county, shard=context.shard,
        )  # fmt: skip
        if install_signals:
            _install_signal_handlers(controller)
        totals = await Pipeline(deps).run()
        summary = _summary(
            context.state, totals, settings, context.run_id, started, controller, source.describe(), prices
        )
        summary.update(shard=context.shard.label if context.shard else None, **(summary_extra or {}))
        if not settings.dry_run and not await _save_summary(store, context.summary_name, summary, bus):
            summary["exit_code"] = summary["exit_code"] or 1
        bus.emit(RunFinished(run_id=context.run_id, summary=summary, exit_code=summary["exit_code"]))
    finally:
        bus.close()
        manifest.close()
        lock.release()
        await source.aclose()
        if model is not None:
            await model.aclose()
        await store.aclose()
    return summary


def _check_prices(settings: Settings, prices: Any, bus: EventBus) -> None:
    if prices.price_for(settings.model) is not None:
        return
    if settings.max_cost is not None:
        raise ConfigError(
            f"--max-cost: no price known for model {settings.model}, so spend cannot be capped: "
            "pass --prices FILE with its price"
        )
    bus.emit(
        Notice(level="warning", message=f"no price known for model {settings.model}: cost shown as unknown")
    )


def _notice_to(bus: EventBus) -> Callable[[str], None]:
    def warn(message: str) -> None:
        bus.emit(Notice(level="warning", message=message))

    return warn


async def _save_summary(store: OutputStore, name: str, summary: dict[str, Any], bus: EventBus) -> bool:
    """Write the run summary; when the disk refuses, say so and let the caller exit 1 (output stays valid)."""
    try:
        await store.write_bytes(f"{RUNS_DIR}/{name}.json", _json_bytes(summary))
    except OutputError as exc:
        bus.emit(Notice(level="error", message=f"run summary not saved: {exc}"))
        return False
    return True


def _install_signal_handlers(controller: StopController) -> None:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, controller.interrupt, "interrupted (Ctrl-C)", EXIT_INTERRUPTED)
        loop.add_signal_handler(signal.SIGTERM, controller.interrupt, "terminated (SIGTERM)", EXIT_TERMINATED)
    except (ValueError, RuntimeError, NotImplementedError):
        # Not the main thread (an embedding application or a test): the caller handles signals.
        log.debug("signal handlers not installed: not running in the main thread")


def _summary(
    state: Any,
    totals: Any,
    settings: Settings,
    run_id: str,
    started: float,
    controller: StopController,
    source: str,
    prices: Any,
) -> dict[str, Any]:
    summary: dict[str, Any] = dict(state.summary())
    finished = time.time()
    stop = controller.request
    summary.update(
        run_id=run_id,
        started_at=_iso(started),
        finished_at=_iso(finished),
        duration_s=round(finished - started, 3),
        source=source,
        model=settings.model,
        output_dir=settings.output_dir,
        dry_run=settings.dry_run,
        stopped_reason=stop.reason if stop else None,
        fatal_error=totals.fatal_error,
        invalid_properties=totals.invalid_properties,
        reused_batches=totals.reused_batches,
        reanalysed_batches=totals.reanalysed_batches,
        reanalysed_because=totals.reanalysed_because,
        duplicate_images=totals.duplicate_images,
        planned_requests=totals.planned_requests,
        estimated_prompt_tokens=totals.estimated_prompt_tokens,
    )
    if settings.dry_run:
        summary.update(_dry_run_estimate(totals, settings, prices))
    summary["exit_code"] = _exit_code(summary, stop.exit_code if stop else None)
    return summary


def _dry_run_estimate(totals: Any, settings: Settings, prices: Any) -> dict[str, Any]:
    """A dry run's figures are the plan's: requests it would send, tokens and cost it would spend."""
    from image_analyzer.asking import ESTIMATED_COMPLETION_TOKENS
    from image_analyzer.domain import Usage

    usage = Usage(
        prompt_tokens=totals.estimated_prompt_tokens,
        completion_tokens=ESTIMATED_COMPLETION_TOKENS * totals.planned_requests,
    )
    cost = prices.cost(settings.model, usage)
    return {
        "requests": totals.planned_requests,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": round(cost, 6) if cost is not None else None,
        "cost_known": cost is not None,
        "estimated": True,
    }


def _exit_code(summary: dict[str, Any], stop_code: int | None) -> int:
    if stop_code is not None:
        return stop_code
    if summary.get("failed_categories") or summary.get("invalid_properties") or summary.get("fatal_error"):
        return 1
    return 0


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
