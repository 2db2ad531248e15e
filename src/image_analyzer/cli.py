"""The command line: parse flags, hand them to the use cases, map errors to exit codes.

Commands and their options live here and in the sub-apps (`batch_cli`, `schemas_cli`); everything heavy
(openai, aioboto3, Pillow, jsonschema) is imported inside the commands, so `--help` answers fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from image_analyzer import cli_options as o
from image_analyzer.batch_cli import batch_app
from image_analyzer.cliutil import given, guarded
from image_analyzer.schemas_cli import schemas_app

app = typer.Typer(
    name="image-analyzer",
    help="Turn real-estate property photos into schema-valid Elephant 'Photo Metadata' data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(batch_app, name="batch")
app.add_typer(schemas_app, name="schemas")


@app.callback()
def _root() -> None:
    """image-analyzer: property photos in, Elephant data groups out."""


@app.command()
def run(
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
    download_workers: o.DownloadWorkers = None,
    parallel_categories: Annotated[
        bool, o.opt("--parallel-categories", "Run categories concurrently.", o.SPEED)
    ] = False,
    category_workers: Annotated[
        int | None,
        o.opt(
            "--category-workers", "Categories at once [default: 5]; implies --parallel-categories.", o.SPEED
        ),
    ] = None,
    max_workers: Annotated[
        int | None, o.opt("--max-workers", "Model requests in flight [default: 12].", o.SPEED)
    ] = None,
    batch_size: o.BatchSize = None,
    category_timeout: Annotated[
        float | None, o.opt("--category-timeout", "Seconds per category [default: 600].", o.SPEED)
    ] = None,
    request_timeout: Annotated[
        float | None, o.opt("--request-timeout", "Seconds per request [default: 120].", o.SPEED)
    ] = None,
    max_retries: Annotated[
        int | None, o.opt("--max-retries", "Retries on 429/5xx/timeouts [default: 5].", o.SPEED)
    ] = None,
    rpm: Annotated[
        int | None, o.opt("--rpm", "Requests per minute allowed [default: learnt].", o.SPEED)
    ] = None,
    tpm: Annotated[
        int | None, o.opt("--tpm", "Tokens per minute allowed [default: learnt].", o.SPEED)
    ] = None,
    model: o.Model = None,
    base_url: o.BaseUrl = None,
    api_key: o.ApiKey = None,
    max_tokens: o.MaxTokens = None,
    detail: o.Detail = None,
    max_image_side: o.MaxImageSide = None,
    max_image_pixels: o.MaxImagePixels = None,
    prices: o.Prices = None,
    output_dir: o.OutputDir = None,
    schema_set: o.SchemaSetOpt = None,
    county_data_dir: o.CountyDataDir = None,
    dry_run: Annotated[bool, o.opt("--dry-run", "Plan and estimate only: send nothing.", o.OUTPUT)] = False,
    force: o.Force = False,
    retry_failed: Annotated[
        bool, o.opt("--retry-failed", "Only rerun batches that failed last time.", o.OUTPUT)
    ] = False,
    max_cost: Annotated[
        float | None, o.opt("--max-cost", "Stop starting requests past this spend (USD).", o.OUTPUT)
    ] = None,
    grace_seconds: Annotated[
        float | None,
        o.opt("--grace-seconds", "Grace for in-flight requests on Ctrl-C [default: 30].", o.OUTPUT),
    ] = None,
    log_file: Annotated[
        Path | None, o.opt("--log-file", "Log file [default: logs/ai-analyzer.log].", o.OUTPUT)
    ] = None,
    json_output: o.JsonOutput = False,
    events: Annotated[
        Path | None, o.opt("--events", "Write every event as JSON lines to this file.", o.SHOW)
    ] = None,
    no_dashboard: Annotated[
        bool, o.opt("--no-dashboard", "Plain progress lines even on a terminal.", o.SHOW)
    ] = False,
    quiet: Annotated[bool, o.opt("--quiet", "Only warnings, errors and the final summary.", o.SHOW)] = False,
    debug: o.Debug = False,
) -> None:
    """Analyse property photos and write Elephant data groups (main usage: --all-properties)."""
    flags = given(
        all_properties=all_properties, property_ids=property_id, only_seeded=only_seeded, seed_csv=seed_csv,
        shard=shard, shards=shards, local_folders=local_folders, images_dir=images_dir, bucket=bucket,
        prefix=prefix, endpoint_url=endpoint_url, region=region, profile=profile,
        download_workers=download_workers,
        parallel_categories=parallel_categories or (category_workers is not None and category_workers > 1),
        category_workers=category_workers, max_workers=max_workers, batch_size=batch_size,
        category_timeout=category_timeout, request_timeout=request_timeout, max_retries=max_retries, rpm=rpm,
        tpm=tpm, model=model, base_url=base_url, api_key=api_key, max_tokens=max_tokens, detail=detail,
        max_image_side=max_image_side, max_image_pixels=max_image_pixels, prices_file=prices,
        output_dir=output_dir, schema_set=schema_set, county_data_dir=county_data_dir, dry_run=dry_run,
        force=force, retry_failed=retry_failed, max_cost=max_cost, grace_seconds=grace_seconds,
        log_file=log_file, debug=debug,
    )  # fmt: skip

    def work() -> int:
        from image_analyzer.runner import Display, execute_run
        from image_analyzer.settings import load_settings

        settings = load_settings(flags)
        display = Display(json_output=json_output, events_file=events, no_dashboard=no_dashboard, quiet=quiet)
        return execute_run(settings, display)

    raise typer.Exit(guarded(work, debug=debug))


@app.command()
def validate(
    output_dir: Annotated[Path, typer.Argument(help="Output folder holding one folder per property.")] = Path(
        "output"
    ),
    schema_set: Annotated[
        Path | None, typer.Option("--schema-set", help="Validate against this schema set.")
    ] = None,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Also write the errors to this CSV file.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks on errors.")] = False,
) -> None:
    """Validate every property folder offline, as the Elephant tools do (links, draft-07, unused files)."""

    def work() -> int:
        from image_analyzer.commands import validate_command

        return validate_command(output_dir, schema_set, csv_file)

    raise typer.Exit(guarded(work, debug=debug))


@app.command()
def report(
    output_dir: Annotated[Path, typer.Argument(help="Output folder with _runs/ summaries.")] = Path("output"),
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Write one row per property per run to this CSV.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks on errors.")] = False,
) -> None:
    """Summarise earlier runs: per run and per property images, failures, tokens, cost and duration."""

    def work() -> int:
        from image_analyzer.commands import report_command

        return report_command(output_dir, json_output=json_output, csv_file=csv_file)

    raise typer.Exit(guarded(work, debug=debug))


def main() -> None:
    app()
