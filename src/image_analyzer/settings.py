"""Typed run settings: flags > environment > `.env` > defaults.

The CLI passes only the flags the user actually gave, so anything left out falls back to the
environment (`IMAGE_ANALYZER_<NAME>`, plus the conventional `OPENAI_API_KEY`, `OPENAI_BASE_URL` and
`S3_BUCKET_NAME`) and then to the defaults below. There is no module-level instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMAGE_ANALYZER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- source selection -------------------------------------------------------------------------
    images_dir: Path = Field(Path("images"), description="Root of <property_id>/<category>/<image>.")
    local_folders: bool = Field(False, description="Read local folders even when a bucket is configured.")
    bucket: str | None = Field(
        None,
        validation_alias=AliasChoices("bucket", "S3_BUCKET_NAME", "IMAGE_ANALYZER_BUCKET"),
        description="S3 bucket to read photos from.",
    )
    prefix: str = Field("", description="Key prefix inside the bucket.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, R2, moto...).")
    region: str | None = Field(None, description="AWS region; default from the AWS config chain.")
    profile: str | None = Field(None, description="AWS profile name.")
    download_workers: int = Field(16, ge=1, le=256, description="Concurrent S3 downloads.")

    all_properties: bool = Field(False, description="Process every property folder.")
    property_ids: list[str] = Field(default_factory=list, description="Process only these properties.")
    only_seeded: bool = Field(False, description="Only properties that have a seed.csv row.")
    seed_csv: Path | None = Field(None, description="Seed file; default seed.csv when present.")
    shard: str | None = Field(None, description="This machine's share of the properties: K/N, K from 0.")
    shards: int | None = Field(
        None, ge=1, description="N shards; K from JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX."
    )
    run_id: str | None = Field(None, description="Run id shared by a job's shards (IMAGE_ANALYZER_RUN_ID).")

    # --- concurrency and timeouts ------------------------------------------------------------------
    parallel_categories: bool = Field(False, description="Run categories concurrently.")
    category_workers: int = Field(5, ge=1, le=256, description="Categories in flight at once.")
    max_workers: int = Field(12, ge=1, le=1024, description="Model requests in flight at once.")
    batch_size: int = Field(10, ge=1, le=50, description="Images per model request.")
    category_timeout: float = Field(600.0, gt=0, description="Seconds a category may take.")
    request_timeout: float = Field(120.0, gt=0, description="Seconds one model request may take.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries per request on 429/5xx/timeouts.")

    # --- model ---------------------------------------------------------------------------------------
    model: str = Field("gpt-4o", description="Vision model name.")
    base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("base_url", "OPENAI_BASE_URL", "IMAGE_ANALYZER_BASE_URL"),
        description="OpenAI-compatible endpoint.",
    )
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("api_key", "OPENAI_API_KEY"),
        description="API key (never logged).",
    )
    max_tokens: int = Field(4096, ge=64, description="Completion token cap per request.")
    detail: Literal["auto", "low", "high"] = Field("auto", description="Image detail level.")
    max_image_side: int | None = Field(None, ge=64, description="Downscale images to at most this side.")
    max_image_pixels: int = Field(50_000_000, ge=1, description="Refuse images that decode to more pixels.")
    prices_file: Path | None = Field(None, description="JSON price table overriding the built-in one.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute allowed (default: learnt).")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute allowed (default: learnt).")

    # --- output and run control ----------------------------------------------------------------------
    output_dir: str = Field("output", description="Local folder or s3://bucket/prefix for results.")
    schema_set: Path | None = Field(None, description="Directory of another verified schema set.")
    county_data_dir: Path = Field(Path("county-data"), description="County layout records per property.")
    dry_run: bool = Field(False, description="Plan and estimate only; send nothing.")
    force: bool = Field(False, description="Re-analyse batches an earlier run already answered.")
    retry_failed: bool = Field(False, description="Only rerun what failed last time.")
    max_cost: float | None = Field(None, gt=0, description="Stop starting requests past this spend (USD).")
    grace_seconds: float = Field(30.0, ge=0, description="Grace for in-flight requests on Ctrl-C.")
    log_file: Path = Field(Path("logs/ai-analyzer.log"), description="Log file path.")
    debug: bool = Field(False, description="Verbose logs and tracebacks.")

    @field_validator("prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        value = value.lstrip("/")
        return value if not value or value.endswith("/") else value + "/"

    @property
    def uses_s3_source(self) -> bool:
        return bool(self.bucket) and not self.local_folders

    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


_FLAG_NAMES = {
    "property_ids": "--property-id",
    "prices_file": "--prices",
    "bucket": "--bucket / S3_BUCKET_NAME",
}


def flag_name(field: str) -> str:
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def require_selection(settings: Settings) -> None:
    """A run names its properties: sending every photo in a bucket by accident costs real money."""
    from image_analyzer.errors import ConfigError

    if not (settings.all_properties or settings.property_ids or settings.only_seeded):
        raise ConfigError(
            "choose the properties: --all-properties, --property-id ID (repeatable) or --only-seeded"
        )


def load_settings(flags: dict[str, object]) -> Settings:
    """Build settings from the given flags; a bad value becomes a one-line error naming its flag."""
    from pydantic import ValidationError

    from image_analyzer.errors import ConfigError

    try:
        return Settings(**flags)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else "settings"
        raise ConfigError(f"{flag_name(field)}: {first['msg']}") from None
