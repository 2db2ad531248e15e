"""Photos in an S3 bucket laid out `s3://<bucket>/<prefix><property_id>/<category>/<image>`.

Read-only: nothing is ever created or changed in the bucket. Every listing goes through a paginator with
`Delimiter='/'` and is consumed page by page, so memory holds at most one page of keys (1,000) plus the
current property's image refs, however large the bucket. Downloads share one client whose connection
pool matches `download_workers`; a semaphore caps how many bodies are in flight, and a body is never
cached. botocore's "standard" retry mode retries throttling, 5xx and dropped connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

from image_analyzer.domain import IMAGE_SUFFIXES, CategoryListing, ImageRef, PropertyListing, SkippedFile
from image_analyzer.errors import ConfigError, ImageAnalyzerError, SourceError
from image_analyzer.s3_common import (
    DEFAULT_MAX_ATTEMPTS,
    S3Connection,
    S3Problem,
    SharedClient,
    classify,
    s3_exceptions,
    s3_url,
)

LISTING_CONCURRENCY = 4
"""Category listings of one property run this many at a time, on connections of their own."""

_BODY_ATTEMPTS = 2
"""botocore retries a request, not a body that breaks off mid-stream: read such a body once more."""

ROOT_SKIP_LIMIT = 1000
"""Stray keys directly under the prefix are reported one by one up to here, then only counted."""


def _is_plain_name(name: str) -> bool:
    """Usable as one folder name: not empty, `.` or `..`, and no separator or NUL (as in local mode)."""
    return name not in ("", ".", "..") and not any(char in name for char in "/\\\0")


def _is_hidden(name: str) -> bool:
    """`.DS_Store`, `._photo.jpg`, `.thumbs/`: not photos, passed over quietly as in local mode."""
    return name.startswith(".")


class _SkipLog:
    """Skipped entries up to a limit, then a count, so a bucket root full of stray keys stays small."""

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._entries: list[SkippedFile] = []
        self._more = 0

    def add(self, location: str, reason: str) -> None:
        if len(self._entries) < self._limit:
            self._entries.append(SkippedFile(location, reason))
        else:
            self._more += 1

    def entries(self, where: str) -> tuple[SkippedFile, ...]:
        if not self._more:
            return tuple(self._entries)
        return (
            *self._entries,
            SkippedFile(where, f"{self._more} more keys left out (not listed one by one)"),
        )


def normalize_prefix(prefix: str) -> str:
    """`photos` and `/photos/` both mean the folder `photos/`; the empty prefix is the bucket root."""
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _fatal(problem: S3Problem) -> ImageAnalyzerError:
    """Settings the user must fix are `ConfigError`; a bucket that cannot be used is `SourceError`."""
    if problem.kind in ("credentials", "invalid"):
        return ConfigError(problem.message)
    return SourceError(problem.message)


class S3Source:
    """`ImageSource` over one bucket and prefix, through aioboto3."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        download_workers: int = 16,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if not bucket:
            raise ConfigError("no S3 bucket given: pass --bucket or set S3_BUCKET_NAME")
        if download_workers < 1:
            raise ConfigError(f"--download-workers must be at least 1, not {download_workers}")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self._connection = S3Connection(endpoint_url=endpoint_url, region=region, profile=profile)
        self._client = SharedClient(
            self._connection, pool_size=download_workers + LISTING_CONCURRENCY, max_attempts=max_attempts
        )
        self._downloads = asyncio.Semaphore(download_workers)
        self._root_skipped = _SkipLog(limit=ROOT_SKIP_LIMIT)

    def describe(self) -> str:
        return s3_url(self.bucket, self.prefix)

    # --- checks and errors ------------------------------------------------------------------------

    async def check(self) -> None:
        """One `ListObjectsV2` (max 1 key) under the prefix: the very right the run needs.

        It runs on a throwaway client without retries, so a wrong endpoint or missing bucket fails at
        once instead of after the shared client's backoff.
        """
        probe = SharedClient(self._connection, pool_size=1, max_attempts=1)
        try:
            client = await probe.get()
            await client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except s3_exceptions() as exc:
            raise _fatal(classify(exc, bucket=self.bucket, endpoint=probe.endpoint)) from exc
        finally:
            await probe.aclose()

    async def _open_client(self) -> Any:
        try:
            return await self._client.get()
        except s3_exceptions() as exc:
            raise _fatal(classify(exc, bucket=self.bucket, endpoint=self._client.endpoint)) from exc

    # --- listing ------------------------------------------------------------------------------------

    async def _pages(
        self, prefix: str
    ) -> AsyncIterator[tuple[list[str], list[tuple[str, int | None, str | None]]]]:
        """Each page under `prefix`: sub-prefixes and (key, size, etag) entries, one page in memory."""
        client = await self._open_client()
        pages = aiter(
            client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        )
        while True:
            try:
                page = await anext(pages)
            except StopAsyncIteration:
                return
            except s3_exceptions() as exc:
                raise _fatal(
                    classify(exc, bucket=self.bucket, key=prefix, endpoint=self._client.endpoint)
                ) from exc
            yield (
                [entry["Prefix"] for entry in page.get("CommonPrefixes", ())],
                [(entry["Key"], entry.get("Size"), entry.get("ETag")) for entry in page.get("Contents", ())],
            )

    async def property_ids(self) -> AsyncIterator[str]:
        self._root_skipped = _SkipLog(limit=ROOT_SKIP_LIMIT)
        async for sub_prefixes, keys in self._pages(self.prefix):
            for key, _size, _etag in keys:
                if key != self.prefix and not _is_hidden(key[len(self.prefix) :]):
                    self._root_skipped.add(s3_url(self.bucket, key), "not inside a property folder")
            for sub_prefix in sub_prefixes:
                property_id = sub_prefix[len(self.prefix) : -1]
                if not _is_plain_name(property_id):
                    self._root_skipped.add(s3_url(self.bucket, sub_prefix), "unusable folder name")
                elif not _is_hidden(property_id):
                    yield property_id

    def root_skipped(self) -> tuple[SkippedFile, ...]:
        """What the last `property_ids` pass found directly under the prefix and left out (capped)."""
        return self._root_skipped.entries(s3_url(self.bucket, self.prefix))

    async def list_property(self, property_id: str) -> PropertyListing:
        base = f"{self.prefix}{property_id}/"
        missing = SkippedFile(s3_url(self.bucket, base), f"no folder for property {property_id}", property_id)
        if not _is_plain_name(property_id):
            return PropertyListing(property_id, (), (missing,))
        category_prefixes: list[str] = []
        skipped: list[SkippedFile] = []
        found_anything = False
        async for sub_prefixes, keys in self._pages(base):
            found_anything = found_anything or bool(sub_prefixes or keys)
            for key, _size, _etag in keys:
                # `key == base` is the zero-byte "folder" marker some consoles create.
                if key != base and not _is_hidden(key[len(base) :]):
                    skipped.append(
                        SkippedFile(s3_url(self.bucket, key), "not inside a category folder", property_id)
                    )
            for sub_prefix in sub_prefixes:
                category = sub_prefix[len(base) : -1]
                if not _is_plain_name(category):
                    skipped.append(
                        SkippedFile(s3_url(self.bucket, sub_prefix), "unusable folder name", property_id)
                    )
                elif not _is_hidden(category):
                    category_prefixes.append(sub_prefix)
        if not found_anything:
            return PropertyListing(property_id, (), (missing,))
        categories = await self._list_categories(property_id, base, category_prefixes, skipped)
        if not categories:
            where = s3_url(self.bucket, base)
            skipped.append(SkippedFile(where, "no category folder with images", property_id))
        return PropertyListing(property_id, categories, tuple(skipped))

    async def _list_categories(
        self, property_id: str, base: str, category_prefixes: list[str], skipped: list[SkippedFile]
    ) -> tuple[CategoryListing, ...]:
        """List categories concurrently; results and skips keep S3's (lexicographic) order."""
        limit = asyncio.Semaphore(LISTING_CONCURRENCY)

        async def list_one(category_prefix: str) -> tuple[CategoryListing | None, list[SkippedFile]]:
            async with limit:
                category = category_prefix[len(base) : -1]
                return await self._list_category(property_id, category, category_prefix)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(list_one(prefix)) for prefix in category_prefixes]
        categories: list[CategoryListing] = []
        for task in tasks:
            listing, category_skips = task.result()
            skipped.extend(category_skips)
            if listing is not None:
                categories.append(listing)
        return tuple(categories)

    async def _list_category(
        self, property_id: str, category: str, folder: str
    ) -> tuple[CategoryListing | None, list[SkippedFile]]:
        images: list[ImageRef] = []
        skipped: list[SkippedFile] = []

        def skip(location: str, reason: str) -> None:
            skipped.append(SkippedFile(s3_url(self.bucket, location), reason, property_id, category))

        saw_entries = False
        async for nested_prefixes, keys in self._pages(folder):
            for key, size, etag in keys:
                name = key[len(folder) :]
                if key == folder or _is_hidden(name):
                    continue
                saw_entries = True
                suffix = PurePosixPath(name).suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    images.append(ImageRef(property_id, category, name, key, size, etag))
                else:
                    skip(key, f"not an image extension ({suffix or 'none'})")
            for nested in nested_prefixes:
                nested_name = nested[len(folder) : -1]
                if _is_plain_name(nested_name) and _is_hidden(nested_name):
                    continue  # `.thumbs/` and the like; `..` is reported, it is no hidden folder
                saw_entries = True
                skip(nested, "nested folder ignored")
        if not images:
            skip(folder, "no images in category folder" if saw_entries else "empty category folder")
            return None, skipped
        return CategoryListing(property_id, category, tuple(images)), skipped

    # --- reading ------------------------------------------------------------------------------------

    async def read(self, ref: ImageRef) -> bytes:
        """The whole object. Safe to call from many tasks: at most `download_workers` run at once."""
        client = await self._open_client()
        async with self._downloads:
            for attempt in range(1, _BODY_ATTEMPTS + 1):
                try:
                    return await self._get_body(client, ref.locator)
                except s3_exceptions() as exc:
                    if attempt < _BODY_ATTEMPTS and _is_broken_body(exc):
                        continue
                    raise self._read_error(exc, ref.locator) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    async def _get_body(self, client: Any, key: str) -> bytes:
        response = await client.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    def _read_error(self, exc: BaseException, key: str) -> ImageAnalyzerError:
        problem = classify(exc, bucket=self.bucket, key=key, endpoint=self._client.endpoint)
        if problem.kind == "credentials":
            # Not this object's fault: every read would fail the same way, so end the run.
            return ConfigError(problem.message)
        where = s3_url(self.bucket, key)
        if where in problem.message:
            return SourceError(problem.message)
        return SourceError(f"cannot read {where}: {problem.message}")

    async def aclose(self) -> None:
        await self._client.aclose()


def _is_broken_body(exc: BaseException) -> bool:
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    return isinstance(exc, IncompleteReadError | ReadTimeoutError | ResponseStreamingError)
