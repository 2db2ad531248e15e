"""The plan of a run, as plain data: batches per category, and what became of each."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from image_analyzer.domain import CategoryListing, ImageRef, PreparedImage, Usage
from image_analyzer.naming import sanitize_component, unique_image_ids

_PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def output_folder_name(property_id: str) -> str:
    """A property id as a folder name: kept as is when already plain (leading zeros and case kept).

    Any other id is sanitised and gets a short hash of the original, so two ids that sanitise alike
    (`a b` and `a_b`) never share, and overwrite, one folder.
    """
    if _PLAIN_ID.match(property_id) and ".." not in property_id:
        return property_id
    digest = hashlib.sha256(property_id.encode()).hexdigest()[:8]
    return f"{sanitize_component(property_id, fallback='property')[:64]}-{digest}"


def chunk(items: Sequence[ImageRef], size: int) -> list[tuple[ImageRef, ...]]:
    """Split into batches of at most `size`, in order: 23 images with size 10 give 10, 10, 3."""
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An image identical to one sent in a batch: not sent again, the original's answer applies to it."""

    ref: ImageRef
    image_id: str


@dataclass(frozen=True, slots=True)
class BatchPlan:
    property_id: str
    category: str
    index: int
    count: int
    refs: tuple[ImageRef, ...]
    image_ids: tuple[str, ...]
    duplicates: Mapping[str, tuple[Duplicate, ...]] = field(default_factory=dict)
    """Identical images riding on an original of this batch, keyed by the original's image id."""


@dataclass(slots=True)
class BatchOutcome:
    plan: BatchPlan
    status: str
    """`answered`, `reused`, `failed`, `not_started`, `planned` (dry run) or `empty` (no usable image)."""
    images: list[PreparedImage] = field(default_factory=list)
    answer: dict[str, Any] | None = None
    key: str | None = None
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    estimated_prompt_tokens: int = 0

    @property
    def has_answer(self) -> bool:
        return self.answer is not None and self.status in ("answered", "reused")


@dataclass(slots=True)
class CategoryJob:
    listing: CategoryListing
    plans: list[BatchPlan]
    outcomes: dict[int, BatchOutcome] = field(default_factory=dict)
    failure: str | None = None

    @classmethod
    def plan(
        cls,
        listing: CategoryListing,
        batch_size: int,
        duplicate_of: Mapping[ImageRef, ImageRef] | None = None,
    ) -> CategoryJob:
        """Batches of the category's images; duplicates ride along with their original, unsent."""
        duplicate_of = duplicate_of or {}
        ids = unique_image_ids([ref.name for ref in listing.images])
        id_of = {ref: image_id for ref, image_id in zip(listing.images, ids, strict=True)}
        riders: dict[ImageRef, list[Duplicate]] = {}
        for copy, original in duplicate_of.items():
            riders.setdefault(original, []).append(Duplicate(copy, id_of[copy]))
        batches = chunk([ref for ref in listing.images if ref not in duplicate_of], batch_size)
        plans = [
            BatchPlan(
                property_id=listing.property_id,
                category=listing.category,
                index=i,
                count=len(batches),
                refs=batch,
                image_ids=tuple(id_of[ref] for ref in batch),
                duplicates={id_of[ref]: tuple(riders[ref]) for ref in batch if ref in riders},
            )
            for i, batch in enumerate(batches)
        ]
        return cls(listing=listing, plans=plans)

    @property
    def property_id(self) -> str:
        return self.listing.property_id

    @property
    def category(self) -> str:
        return self.listing.category

    def answered(self) -> list[BatchOutcome]:
        return [self.outcomes[i] for i in sorted(self.outcomes) if self.outcomes[i].has_answer]
