"""Identical photos within a category are sent once; the answer applies to every copy.

Only images of the same byte size can be identical, so only those are read and hashed while planning
(for S3 this is the one place an object may be read twice: a same-size candidate is read here and, if
it turns out to be an original, again when its batch is prepared). The first copy in name order is the
original, so the batches, and their resume keys, come out the same on every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from image_analyzer.domain import ImageRef, ImageSource
from image_analyzer.errors import ImageAnalyzerError


async def find_duplicates(source: ImageSource, images: Sequence[ImageRef]) -> dict[ImageRef, ImageRef]:
    """Map each duplicate to its original. Unreadable candidates are left for the batch to report."""
    by_size: dict[int, list[ImageRef]] = {}
    for ref in images:
        if ref.size is not None:
            by_size.setdefault(ref.size, []).append(ref)
    duplicate_of: dict[ImageRef, ImageRef] = {}
    for candidates in by_size.values():
        if len(candidates) > 1:
            duplicate_of.update(await _same_content(source, candidates))
    return duplicate_of


async def _same_content(source: ImageSource, candidates: Sequence[ImageRef]) -> dict[ImageRef, ImageRef]:
    first_with: dict[str, ImageRef] = {}
    duplicate_of: dict[ImageRef, ImageRef] = {}
    for ref in candidates:
        try:
            digest = hashlib.sha256(await source.read(ref)).hexdigest()
        except ImageAnalyzerError:
            continue
        original = first_with.setdefault(digest, ref)
        if original is not ref:
            duplicate_of[ref] = original
    return duplicate_of
