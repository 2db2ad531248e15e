"""`image-analyzer batch submit | status | collect`: the OpenAI Batch API mode, as a Typer sub-app.

The lead's `cli.py` mounts it with `app.add_typer(batch_app, name="batch")`. Like `cli.py`, only typer is
imported at the top; the work (openai, Pillow, Rich) loads inside the commands.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from image_analyzer import cli_options as o
from image_analyzer.cliutil import given, guarded

if TYPE_CHECKING:
    from rich.console import Console

    from image_analyzer.batch_api import BatchJob, SubmitResult
    from image_analyzer.batch_collect import CollectResult

batch_app = typer.Typer(
    name="batch",
    help="Send the same requests as `run` through the OpenAI Batch API: half price, a separate rate limit, "
    "answers within 24 hours.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FILES = "Batch files"
SHOW = "Display"

OutputDir = o.OutputDir
BaseUrl = o.BaseUrl
ApiKey = o.ApiKey
JsonOutput = o.JsonOutput
Debug = o.Debug


@batch_app.callback()
def _batch_root() -> None:
    """OpenAI Batch API mode: submit, status, collect."""


@batch_app.command()
def submit(
    all_properties: o.AllProperties = False,
    property_id: o.PropertyIds = None,
    only_seeded: o.OnlySeeded = False,
    seed_csv: o.SeedCsv = None,
    shard: o.ShardOpt = None,
    shards: o.ShardsOpt = None,
    local_folders: o.LocalFolders = False,
    images_dir: o.ImagesDir = None,
    bucket: o.Bucket = None,
    prefix: o.Prefix = None,
    endpoint_url: o.EndpointUrl = None,
    region: o.Region = None,
    profile: o.Profile = None,
    batch_size: o.BatchSize = None,
    model: o.Model = None,
    base_url: o.BaseUrl = None,
    api_key: o.ApiKey = None,
    max_tokens: o.MaxTokens = None,
    detail: o.Detail = None,
    max_image_side: o.MaxImageSide = None,
    max_image_pixels: o.MaxImagePixels = None,
    prices: o.Prices = None,
    max_requests_per_file: Annotated[
        int, o.opt("--max-requests-per-file", "Requests per batch file (the Batch API allows 50,000).", FILES)
    ] = 50_000,
    max_file_bytes: Annotated[
        int, o.opt("--max-file-bytes", "Bytes per batch file (the Batch API allows 200 MB).", FILES)
    ] = 200_000_000,
    output_dir: o.OutputDir = None,
    schema_set: o.SchemaSetOpt = None,
    county_data_dir: o.CountyDataDir = None,
    force: o.Force = False,
    json_output: o.JsonOutput = False,
    debug: o.Debug = False,
) -> None:
    """Plan the same requests as `run`, write them as Batch API files, upload them and create the batches."""
    flags = given(
        all_properties=all_properties, property_ids=property_id, only_seeded=only_seeded, seed_csv=seed_csv,
        shard=shard, shards=shards, county_data_dir=county_data_dir, local_folders=local_folders,
        images_dir=images_dir, bucket=bucket, prefix=prefix,
        endpoint_url=endpoint_url, region=region, profile=profile, batch_size=batch_size, model=model,
        base_url=base_url, api_key=api_key, max_tokens=max_tokens, detail=detail,
        max_image_side=max_image_side, max_image_pixels=max_image_pixels, prices_file=prices,
        output_dir=output_dir, schema_set=schema_set, force=force, debug=debug,
    )  # fmt: skip

    def work() -> int:
        import asyncio

        from image_analyzer.batch_api import FileLimits
        from image_analyzer.batch_api import submit as submit_batches
        from image_analyzer.settings import load_settings

        settings = load_settings(flags)
        limits = FileLimits(max_requests=max_requests_per_file, max_bytes=max_file_bytes)
        result = asyncio.run(submit_batches(settings, limits=limits))
        if json_output:
            _print_json(result.as_json())
        else:
            _render_submit(result, _console())
        return 0

    raise typer.Exit(guarded(work, debug=debug))


@batch_app.command()
def status(
    output_dir: OutputDir = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    no_refresh: Annotated[
        bool,
        typer.Option(
            "--no-refresh", help="Show the saved state; ask the server nothing.", rich_help_panel=SHOW
        ),
    ] = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Show each saved batch job: its state on the server and its request counts."""
    flags = given(output_dir=output_dir, base_url=base_url, api_key=api_key)

    def work() -> int:
        import asyncio

        from image_analyzer.batch_api import status as job_status
        from image_analyzer.settings import load_settings

        jobs = asyncio.run(job_status(load_settings(flags), refresh_remote=not no_refresh))
        if json_output:
            _print_json({"jobs": [job.summary() for job in jobs]})
        elif not jobs:
            sys.stdout.write("no batch jobs yet: run `image-analyzer batch submit`\n")
        else:
            _console().print(_jobs_table(jobs))
        return 0

    raise typer.Exit(guarded(work, debug=debug))


@batch_app.command()
def collect(
    output_dir: OutputDir = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    prices: o.Prices = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Poll (with backoff) until every batch has finished.", rich_help_panel=FILES
        ),
    ] = False,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            help="First wait between polls, in seconds; it grows 1.5x up to 10 minutes.",
            rich_help_panel=FILES,
        ),
    ] = 30.0,
    resubmit: Annotated[
        bool,
        typer.Option(
            "--resubmit",
            help="Send the failed and expired requests again, as new batches.",
            rich_help_panel=FILES,
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Only warnings, errors and the summary.", rich_help_panel=SHOW),
    ] = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Download finished batches, save their answers like `run`, and rebuild the property folders."""
    flags = given(output_dir=output_dir, base_url=base_url, api_key=api_key, prices_file=prices, debug=debug)

    def work() -> int:
        import asyncio

        from image_analyzer.batch_api import Backoff
        from image_analyzer.batch_collect import CollectOptions
        from image_analyzer.batch_collect import collect as collect_batches
        from image_analyzer.errors import ConfigError
        from image_analyzer.settings import load_settings

        if poll_interval < 0:
            raise ConfigError("--poll-interval must be >= 0 seconds")
        settings = load_settings(flags)
        options = CollectOptions(
            wait=wait,
            resubmit=resubmit,
            backoff=Backoff(initial=poll_interval, maximum=max(poll_interval, 600.0)),
            stream=sys.stderr if json_output else sys.stdout,
            quiet=quiet,
        )
        result = asyncio.run(collect_batches(settings, flags, options))
        if json_output:
            _print_json(result.as_json())
        else:
            _render_collect(result, _console())
        return result.exit_code

    raise typer.Exit(guarded(work, debug=debug))


# --- rendering ------------------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    return Console(soft_wrap=False)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True, indent=2, default=str) + "\n")


def _jobs_table(jobs: list[BatchJob]) -> Any:
    from rich.table import Table

    from image_analyzer.runstate import format_cost

    table = Table(title="Batch jobs", title_justify="left")
    for name in ("Job", "Batch", "State", "Status", "Requests", "Done", "Failed", "Cost (batch)"):
        table.add_column(
            name, overflow="fold", justify="right" if name in ("Requests", "Done", "Failed") else "left"
        )
    for job in jobs:
        counts = job.request_counts
        collected = job.collected or {}
        cost = format_cost(collected.get("cost_usd")) if collected else ""
        table.add_row(
            job.name, job.batch_id or "-", job.state, job.status or "-", str(len(job.requests)),
            str(collected.get("answered", counts.get("completed", 0))),
            str(len(collected.get("failed") or {}) if collected else counts.get("failed", 0)), cost,
        )  # fmt: skip
    return table


def _render_submit(result: SubmitResult, console: Console) -> None:
    report = result.report
    console.print(
        f"Planned {report.requests} request(s) with {report.images} image(s) for {report.properties} "
        f"propert{'y' if report.properties == 1 else 'ies'}; {report.answered} batch(es) already answered, "
        f"{report.pending} already waiting in earlier jobs."
    )
    for skipped in report.skipped_images:
        console.print(f"skipped {skipped['location']}: {skipped['reason']}", markup=False, highlight=False)
    for notice in report.notices:
        console.print(f"warning: {notice}", markup=False, highlight=False)
    jobs = result.resumed + result.jobs
    if jobs:
        console.print(_jobs_table(jobs))
        console.print(
            "Check with `image-analyzer batch status`; fetch answers with `image-analyzer batch collect`."
        )
    else:
        console.print("Nothing to send.")


def _render_collect(result: CollectResult, console: Console) -> None:
    from image_analyzer.runstate import format_cost

    if result.collected:
        console.print(_jobs_table(result.collected))
    console.print(
        f"Collected {len(result.collected)} job(s): {result.answered} answer(s) saved, "
        f"{len(result.failed)} request(s) without an answer; "
        f"cost at batch prices {format_cost(result.cost_usd)}."
    )
    for notice in result.notices:
        console.print(f"warning: {notice}", markup=False, highlight=False)
    for row in result.failed:
        console.print(
            f"failed: {row['property_id']}/{row['category']} batch {row['batch_index'] + 1} "
            f"({row['images']} images): {row['reason']}",
            markup=False,
            highlight=False,
        )
    if result.waiting:
        console.print(
            f"{len(result.waiting)} job(s) still running: "
            "run `image-analyzer batch collect` later, or add --wait."
        )
    if result.unsent:
        console.print(
            f"{len(result.unsent)} job(s) not sent yet: run `image-analyzer batch submit` to resume them."
        )
    if result.resubmitted is not None:
        names = ", ".join(job.name for job in result.resubmitted.jobs) or "none (nothing left to send)"
        console.print(f"Resubmitted {result.resubmitted.report.requests} request(s) as: {names}")
    elif result.failed:
        console.print(
            "Send them again with `image-analyzer batch collect --resubmit` (or `run --retry-failed`)."
        )
