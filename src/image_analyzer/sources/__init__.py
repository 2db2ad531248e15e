"""Where photos come from. `local.LocalSource` reads folders, `s3.S3Source` a bucket.

Only the light protocol names are re-exported here; import a concrete source from its own module so
that aioboto3 is loaded only when a bucket is actually used.
"""

from __future__ import annotations

from image_analyzer.domain import (
    IMAGE_SUFFIXES,
    CategoryListing,
    ImageRef,
    ImageSource,
    PropertyListing,
    SkippedFile,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "CategoryListing",
    "ImageRef",
    "ImageSource",
    "PropertyListing",
    "SkippedFile",
]
