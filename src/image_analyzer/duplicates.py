"""Identical photos within a category are sent once; the answer applies to every copy.

Only images of the same byte size can be identical. Where the listing gave content tags (S3 ETags),
same size and same tag means same bytes, and nothing is read; otherwise (local folders) the same-size
candidates are read and hashed while planning. So an S3 object is still read once per run. The first
copy in name order is the original, so the batches, and their resume keys, come out the same every run.
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
            digest = ref.etag or hashlib.sha256(await source.read(ref)).hexdigest()
        except ImageAnalyzerError:
            continue
        original = first_with.setdefault(digest, ref)
        if original is not ref:
            duplicate_of[ref] = original
    return duplicate_of
