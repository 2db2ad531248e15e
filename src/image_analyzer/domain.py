"""Plain data shared by every stage of a run, and the seams (protocols) between the stages.

No I/O here: sources, the model client and the stores implement these protocols, the pipeline only
talks to them through it, and tests plug real local fakes in behind them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image as the source knows it. `locator` is the source's own handle (a path or an S3 key)."""

    property_id: str
    category: str
    name: str
    locator: str
    size: int | None = None
    etag: str | None = None
    """The object store's content tag (S3 ETag), when the listing gave one: equal tags, equal bytes."""


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file that will not be analysed, and why. Every skipped file ends up in the run summary."""

    location: str
    reason: str
    property_id: str | None = None
    category: str | None = None


@dataclass(frozen=True, slots=True)
class CategoryListing:
    property_id: str
    category: str
    images: tuple[ImageRef, ...]


@dataclass(frozen=True, slots=True)
class PropertyListing:
    property_id: str
    categories: tuple[CategoryListing, ...]
    skipped: tuple[SkippedFile, ...] = ()

    @property
    def image_count(self) -> int:
        return sum(len(c.images) for c in self.categories)


class ImageSource(Protocol):
    """Where photos come from: local folders or an S3 bucket.

    Listing is lazy (`property_ids` streams) so a bucket of millions of keys is never held in memory.
    `read` raises `SourceError` for a single unreadable object; the pipeline turns that into a skip.
    """

    def describe(self) -> str:
        """A short, secret-free description for logs and the summary, e.g. `local:images` or `s3://b/p`."""
        ...

    async def check(self) -> None:
        """Fail fast with a one-line `SourceError`/`ConfigError` if the source cannot be used at all."""
        ...

    def property_ids(self) -> AsyncIterator[str]:
        """Every property id under the source, in a stable (sorted) order."""
        ...

    async def list_property(self, property_id: str) -> PropertyListing:
        """The categories and images of one property, plus the files skipped while listing it."""
        ...

    async def read(self, ref: ImageRef) -> bytes: ...

    def root_skipped(self) -> tuple[SkippedFile, ...]:
        """Files found directly under the root (not inside a property folder) by `property_ids`."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image ready to send: decoded, checked, oriented, resized and re-encoded if needed."""

    ref: ImageRef
    image_id: str
    data: bytes
    mime: str
    width: int
    height: int
    content_hash: str
    """sha256 hex of the original bytes read from the source (resume keys on it)."""
    output_format: str
    """`jpeg` or `png`: the format of `data`, and so of the copy written beside the file object."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One Chat Completions request, ready to send. `request_id` is ours, for logs and events."""

    request_id: str
    model: str
    messages: Sequence[Mapping[str, Any]]
    response_format: Mapping[str, Any] | None
    max_tokens: int
    temperature: float = 0.0
    estimated_prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelResponse:
    content: str | None
    finish_reason: str | None
    refusal: str | None
    usage: Usage | None
    """None when the server sent no usage block: counted as unknown, never as zero spend."""
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None


class VisionModel(Protocol):
    """Sends one request, once. Raises `ModelCallError` with `.retryable`/`.fatal` set; never retries."""

    async def complete(self, request: ModelRequest, *, timeout: float) -> ModelResponse: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a property's data came from, per the seed file; goes into every object written."""

    request_identifier: str | None
    source_http_request: Mapping[str, Any]
    from_seed: bool
