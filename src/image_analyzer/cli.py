"""The command line: parse flags, hand them to the use cases, map errors to exit codes.

Only this module imports typer. Everything heavy (openai, aioboto3, Pillow, jsonschema) is imported
inside the commands, so `--help` answers fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="image-analyzer",
    help="Turn real-estate property photos into schema-valid Elephant 'Photo Metadata' data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SOURCE = "Source"
SELECT = "Selection"
SPEED = "Concurrency and timeouts"
MODEL = "Model"
OUTPUT = "Output and run control"
SHOW = "Display"


@app.callback()
def _root() -> None:
    """image-analyzer: property photos in, Elephant data groups out."""


def _given(**flags: Any) -> dict[str, Any]:
    """Only the flags the user gave, so the environment and defaults fill in the rest."""
    return {
        name: value
        for name, value in flags.items()
        if value is not None and value != [] and value is not False
    }


@app.command()
def run(
    all_properties: Annotated[
        bool, typer.Option("--all-properties", help="Every property folder.", rich_help_panel=SELECT)
    ] = False,
    property_id: Annotated[
        list[str] | None,
        typer.Option("--property-id", help="Only this property (repeatable).", rich_help_panel=SELECT),
    ] = None,
    only_seeded: Annotated[
        bool,
        typer.Option(
            "--only-seeded", help="Only properties listed in the seed file.", rich_help_panel=SELECT
        ),
    ] = False,
    seed_csv: Annotated[
        Path | None,
        typer.Option(
            "--seed-csv", help="Seed file [default: seed.csv when present].", rich_help_panel=SELECT
        ),
    ] = None,
    local_folders: Annotated[
        bool,
        typer.Option(
            "--local-folders",
            help="Read local folders (the default without a bucket).",
            rich_help_panel=SOURCE,
        ),
    ] = False,
    images_dir: Annotated[
        Path | None,
        typer.Option(
            "--images-dir",
            help="Root of <property>/<category>/<image> [default: images].",
            rich_help_panel=SOURCE,
        ),
    ] = None,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="S3 bucket [env: S3_BUCKET_NAME].", rich_help_panel=SOURCE)
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="S3 key prefix.", rich_help_panel=SOURCE)
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint URL.", rich_help_panel=SOURCE)
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="AWS region.", rich_help_panel=SOURCE)
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="AWS profile.", rich_help_panel=SOURCE)
    ] = None,
    download_workers: Annotated[
        int | None,
        typer.Option(
            "--download-workers", help="Concurrent S3 downloads [default: 16].", rich_help_panel=SOURCE
        ),
    ] = None,
    parallel_categories: Annotated[
        bool,
        typer.Option("--parallel-categories", help="Run categories concurrently.", rich_help_panel=SPEED),
    ] = False,
    category_workers: Annotated[
        int | None,
        typer.Option(
            "--category-workers",
            help="Categories at once [default: 5]; giving it implies --parallel-categories.",
            rich_help_panel=SPEED,
        ),
    ] = None,
    max_workers: Annotated[
        int | None,
        typer.Option("--max-workers", help="Model requests in flight [default: 12].", rich_help_panel=SPEED),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Images per request [default: 10].", rich_help_panel=SPEED),
    ] = None,
    category_timeout: Annotated[
        float | None,
        typer.Option(
            "--category-timeout", help="Seconds per category [default: 600].", rich_help_panel=SPEED
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option("--request-timeout", help="Seconds per request [default: 120].", rich_help_panel=SPEED),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            "--max-retries", help="Retries on 429/5xx/timeouts [default: 5].", rich_help_panel=SPEED
        ),
    ] = None,
    rpm: Annotated[
        int | None,
        typer.Option(
            "--rpm",
            help="Requests per minute allowed [default: learnt from the server].",
            rich_help_panel=SPEED,
        ),
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option(
            "--tpm",
            help="Tokens per minute allowed [default: learnt from the server].",
            rich_help_panel=SPEED,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Vision model [default: gpt-4o].", rich_help_panel=MODEL)
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", help="OpenAI-compatible endpoint [env: OPENAI_BASE_URL].", rich_help_panel=MODEL
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="API key [env: OPENAI_API_KEY].", rich_help_panel=MODEL, show_default=False
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens", help="Completion token cap per request [default: 4096].", rich_help_panel=MODEL
        ),
    ] = None,
    detail: Annotated[
        str | None,
        typer.Option(
            "--detail", help="Image detail: auto, low or high [default: auto].", rich_help_panel=MODEL
        ),
    ] = None,
    max_image_side: Annotated[
        int | None,
        typer.Option(
            "--max-image-side",
            help="Downscale images to at most this many pixels a side.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    max_image_pixels: Annotated[
        int | None,
        typer.Option(
            "--max-image-pixels",
            help="Refuse images decoding to more pixels [default: 50,000,000].",
            rich_help_panel=MODEL,
        ),
    ] = None,
    prices: Annotated[
        Path | None,
        typer.Option(
            "--prices", help="JSON price table overriding the built-in prices.", rich_help_panel=MODEL
        ),
    ] = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir",
            help="Output folder or s3://bucket/prefix [default: output].",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    schema_set: Annotated[
        Path | None,
        typer.Option(
            "--schema-set", help="Run with another verified schema set (a folder).", rich_help_panel=OUTPUT
        ),
    ] = None,
    county_data_dir: Annotated[
        Path | None,
        typer.Option(
            "--county-data-dir", help="County layout records [default: county-data].", rich_help_panel=OUTPUT
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and estimate only: send nothing.", rich_help_panel=OUTPUT)
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Re-analyse batches an earlier run already answered.", rich_help_panel=OUTPUT
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed", help="Only rerun batches that failed last time.", rich_help_panel=OUTPUT
        ),
    ] = False,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost", help="Stop starting requests past this spend (USD).", rich_help_panel=OUTPUT
        ),
    ] = None,
    grace_seconds: Annotated[
        float | None,
        typer.Option(
            "--grace-seconds",
            help="Grace for in-flight requests on Ctrl-C [default: 30].",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option("--log-file", help="Log file [default: logs/ai-analyzer.log].", rich_help_panel=OUTPUT),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the run summary as one JSON object on stdout.", rich_help_panel=SHOW
        ),
    ] = False,
    events: Annotated[
        Path | None,
        typer.Option("--events", help="Write every event as JSON lines to this file.", rich_help_panel=SHOW),
    ] = None,
    no_dashboard: Annotated[
        bool,
        typer.Option("--no-dashboard", help="Plain progress lines even on a terminal.", rich_help_panel=SHOW),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Only warnings, errors and the final summary.", rich_help_panel=SHOW
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Verbose logs, and tracebacks on errors.", rich_help_panel=SHOW)
    ] = False,
) -> None:
    """Analyse property photos and write Elephant data groups (main usage: --all-properties)."""
    flags = _given(
        all_properties=all_properties, property_ids=property_id, only_seeded=only_seeded, seed_csv=seed_csv,
        local_folders=local_folders, images_dir=images_dir, bucket=bucket, prefix=prefix,
        endpoint_url=endpoint_url, region=region, profile=profile, download_workers=download_workers,
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

    raise typer.Exit(_guarded(work, debug=debug))


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

    raise typer.Exit(_guarded(work, debug=debug))


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

    raise typer.Exit(_guarded(work, debug=debug))


def _guarded(work: Any, *, debug: bool) -> int:
    """Run a command body: our errors become one line on stderr and their exit code, never a traceback."""
    from image_analyzer.errors import ImageAnalyzerError

    try:
        return int(work())
    except ImageAnalyzerError as exc:
        if debug:
            raise
        _error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error_line("interrupted")
        return 130
    except Exception as exc:
        if debug:
            raise
        _error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
        return 1


def _error_line(message: str) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    sys.stderr.write(f"error: {first_line}\n")


def main() -> None:
    app()
