"""`OutputStore` in a bucket: `--output-dir s3://bucket/prefix` writes the same tree as the local store.

Each file is one `PutObject` of the whole body, so a reader sees the old object or the new one, never
half of it (S3's own atomicity replaces the local store's temp-file-and-rename). Relative paths pass
through `store.safe_relpath`, so nothing lands outside the prefix.
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import urlsplit

from image_analyzer.errors import ConfigError, OutputError
from image_analyzer.s3_common import (
    DEFAULT_MAX_ATTEMPTS,
    S3Connection,
    SharedClient,
    classify,
    s3_exceptions,
    s3_url,
)
from image_analyzer.store import safe_relpath

DEFAULT_POOL_SIZE = 16
OUTPUT_SETTING = "--output-dir"


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> (`bucket`, `some/prefix/`); the prefix is empty or ends with `/`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"--output-dir {url!r} is not of the form s3://bucket/prefix")
    prefix = parts.path.strip("/")
    if prefix and any(part in (".", "..") for part in prefix.split("/")):
        raise ConfigError(f"--output-dir {url!r}: the prefix must not contain '.' or '..' parts")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Store:
    """The output tree under `s3://bucket/prefix`."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._connection = S3Connection(endpoint_url=endpoint_url, region=region, profile=profile)
        self._client = SharedClient(self._connection, pool_size=pool_size, max_attempts=max_attempts)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> S3Store:
        bucket, prefix = parse_s3_url(url)
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
            region=region,
            profile=profile,
            pool_size=pool_size,
        )

    def describe(self) -> str:
        return s3_url(self.bucket, self.prefix)

    def _key(self, relpath: str) -> str:
        return self.prefix + safe_relpath(relpath).as_posix()

    def _error(self, exc: BaseException, key: str, action: str) -> OutputError:
        problem = classify(
            exc, bucket=self.bucket, key=key, endpoint=self._client.endpoint, setting=OUTPUT_SETTING
        )
        where = s3_url(self.bucket, key)
        if where in problem.message:
            return OutputError(problem.message)
        return OutputError(f"cannot {action} {where}: {problem.message}")

    async def _open(self, key: str, action: str) -> Any:
        try:
            return await self._client.get()
        except s3_exceptions() as exc:
            raise self._error(exc, key, action) from exc

    async def check(self) -> None:
        """Fail fast (exit 2) when the output bucket cannot be listed: one `ListObjectsV2`, no retries."""
        probe = SharedClient(self._connection, pool_size=1, max_attempts=1)
        try:
            client = await probe.get()
            await client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except s3_exceptions() as exc:
            problem = classify(exc, bucket=self.bucket, endpoint=probe.endpoint, setting=OUTPUT_SETTING)
            raise ConfigError(problem.message) from exc
        finally:
            await probe.aclose()

    async def write_bytes(self, relpath: str, data: bytes) -> None:
        key = self._key(relpath)
        client = await self._open(key, "write")
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        try:
            await client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except s3_exceptions() as exc:
            raise self._error(exc, key, "write") from exc

    async def read_bytes(self, relpath: str) -> bytes | None:
        key = self._key(relpath)
        client = await self._open(key, "read")
        try:
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except s3_exceptions() as exc:
            if classify(exc, bucket=self.bucket, key=key, endpoint="").kind == "missing_key":
                return None
            raise self._error(exc, key, "read") from exc
        return data

    async def delete(self, relpath: str) -> None:
        key = self._key(relpath)
        client = await self._open(key, "delete")
        try:
            await client.delete_object(Bucket=self.bucket, Key=key)  # S3 succeeds for a missing key too
        except s3_exceptions() as exc:
            raise self._error(exc, key, "delete") from exc

    async def list_files(self, relpath: str) -> list[str]:
        folder = self._key(relpath) + "/"
        client = await self._open(folder, "list")
        names: list[str] = []
        try:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/"):
                keys = (entry["Key"] for entry in page.get("Contents", ()))
                names.extend(key[len(folder) :] for key in keys if key != folder)
        except s3_exceptions() as exc:
            raise self._error(exc, folder, "list") from exc
        return sorted(f"{relpath}/{name}" for name in names)

    async def aclose(self) -> None:
        await self._client.aclose()
