"""Command-line options shared by `run` and `batch submit`, defined once so their help cannot drift.

Each alias is `Annotated[type, typer.Option(...)]`; a command takes it as `name: Alias = default`.
Defaults shown in the help are the settings' defaults: a flag left out falls back to the environment
and then to `Settings`, which is why every default here is None or False.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

SOURCE = "Source"
SELECT = "Selection"
SPEED = "Concurrency and timeouts"
MODEL = "Model"
OUTPUT = "Output and run control"
SHOW = "Display"


def opt(flag: str, text: str, panel: str, *, show_default: bool = True) -> Any:
    """One option's metadata for `Annotated[...]`."""
    return typer.Option(flag, help=text, rich_help_panel=panel, show_default=show_default)


AllProperties = Annotated[bool, opt("--all-properties", "Every property folder.", SELECT)]
PropertyIds = Annotated[list[str] | None, opt("--property-id", "Only this property (repeatable).", SELECT)]
OnlySeeded = Annotated[bool, opt("--only-seeded", "Only properties listed in the seed file.", SELECT)]
SeedCsv = Annotated[Path | None, opt("--seed-csv", "Seed file [default: seed.csv when present].", SELECT)]
ShardOpt = Annotated[str | None, opt("--shard", "This machine's share: K/N with K from 0.", SELECT)]
ShardsOpt = Annotated[
    int | None,
    opt("--shards", "N shards; K from JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX.", SELECT),
]

LocalFolders = Annotated[
    bool, opt("--local-folders", "Read local folders (the default without a bucket).", SOURCE)
]
ImagesDir = Annotated[
    Path | None, opt("--images-dir", "Root of <property>/<category>/<image> [default: images].", SOURCE)
]
Bucket = Annotated[str | None, opt("--bucket", "S3 bucket [env: S3_BUCKET_NAME].", SOURCE)]
Prefix = Annotated[str | None, opt("--prefix", "S3 key prefix.", SOURCE)]
EndpointUrl = Annotated[str | None, opt("--endpoint-url", "S3-compatible endpoint URL.", SOURCE)]
Region = Annotated[str | None, opt("--region", "AWS region.", SOURCE)]
Profile = Annotated[str | None, opt("--profile", "AWS profile.", SOURCE)]
DownloadWorkers = Annotated[
    int | None, opt("--download-workers", "Concurrent S3 downloads [default: 16].", SOURCE)
]

BatchSize = Annotated[int | None, opt("--batch-size", "Images per request [default: 10].", SPEED)]
Model = Annotated[str | None, opt("--model", "Vision model [default: gpt-4o].", MODEL)]
BaseUrl = Annotated[
    str | None, opt("--base-url", "OpenAI-compatible endpoint [env: OPENAI_BASE_URL].", MODEL)
]
ApiKey = Annotated[str | None, opt("--api-key", "API key [env: OPENAI_API_KEY].", MODEL, show_default=False)]
MaxTokens = Annotated[
    int | None, opt("--max-tokens", "Completion token cap per request [default: 4096].", MODEL)
]
Detail = Annotated[str | None, opt("--detail", "Image detail: auto, low or high [default: auto].", MODEL)]
MaxImageSide = Annotated[
    int | None, opt("--max-image-side", "Downscale images to at most this many pixels a side.", MODEL)
]
MaxImagePixels = Annotated[
    int | None,
    opt("--max-image-pixels", "Refuse images decoding to more pixels [default: 50,000,000].", MODEL),
]
Prices = Annotated[Path | None, opt("--prices", "JSON price table overriding the built-in prices.", MODEL)]

OutputDir = Annotated[
    str | None, opt("--output-dir", "Output folder or s3://bucket/prefix [default: output].", OUTPUT)
]
SchemaSetOpt = Annotated[
    str | None, opt("--schema-set", "Another verified schema set: a folder or a cached CID.", OUTPUT)
]
CountyDataDir = Annotated[
    Path | None, opt("--county-data-dir", "County layout records [default: county-data].", OUTPUT)
]
Force = Annotated[bool, opt("--force", "Re-analyse batches an earlier run already answered.", OUTPUT)]
JsonOutput = Annotated[bool, opt("--json", "Print the result as one JSON object on stdout.", SHOW)]
Debug = Annotated[bool, opt("--debug", "Verbose logs, and tracebacks on errors.", SHOW)]
