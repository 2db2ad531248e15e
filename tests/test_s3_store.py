"""S3Store against moto's server mode, and the S3 pieces end to end against SeaweedFS (SigV4 enforced)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from image_analyzer.errors import ConfigError, OutputError, SourceError
from image_analyzer.s3_store import S3Store, parse_s3_url
from image_analyzer.sources.s3 import S3Source

if TYPE_CHECKING:
    from pathlib import Path

    from tests.s3support import FixtureBucket, SeaweedS3

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(moto_bucket: FixtureBucket) -> AsyncIterator[S3Store]:
    store = S3Store.from_url("s3://photos/results/run-a", endpoint_url=moto_bucket.endpoint)
    try:
        yield store
    finally:
        await store.aclose()


# --- URL parsing -----------------------------------------------------------------------------------


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ("s3://", "s3:///prefix", "https://bucket/x", "s3://bucket/a/../b", "s3://bucket/a?x=1"):
        with pytest.raises(ConfigError, match="--output-dir"):
            parse_s3_url(bad)


# --- the OutputStore contract ----------------------------------------------------------------------


async def test_write_then_read_back_under_the_prefix(store: S3Store, moto_bucket: FixtureBucket) -> None:
    assert store.describe() == "s3://photos/results/run-a/"
    await store.write_bytes("0012/layout_1.json", b'{"a": 1}')
    await store.write_bytes("0012/layout_1.json", b'{"a": 2}')  # replaced whole
    assert await store.read_bytes("0012/layout_1.json") == b'{"a": 2}'
    assert moto_bucket.keys() == ["results/run-a/0012/layout_1.json"]
    head = moto_bucket.client.head_object(Bucket="photos", Key="results/run-a/0012/layout_1.json")
    assert head["ContentType"] == "application/json"


async def test_read_of_a_missing_file_is_none(store: S3Store) -> None:
    assert await store.read_bytes("0012/nothing.json") is None


async def test_list_files_gives_direct_children_only_across_pages(
    store: S3Store, moto_bucket: FixtureBucket
) -> None:
    moto_bucket.put_many((f"results/run-a/_runs/{n:04d}.json", b"{}") for n in range(1005))
    moto_bucket.put("results/run-a/_runs/old/deep.json")
    moto_bucket.put("results/run-a/_runs")  # a sibling key, not inside the folder
    moto_bucket.put("results/run-a/_runs2/x.json")
    files = await store.list_files("_runs")
    assert files == [f"_runs/{n:04d}.json" for n in range(1005)]
    assert await store.list_files("nothing-here") == []


async def test_delete_removes_one_file_and_tolerates_a_missing_one(
    store: S3Store, moto_bucket: FixtureBucket
) -> None:
    await store.write_bytes("0012/a.json", b"1")
    await store.write_bytes("0012/b.json", b"2")
    await store.delete("0012/a.json")
    await store.delete("0012/a.json")
    assert moto_bucket.keys("results/") == ["results/run-a/0012/b.json"]


async def test_paths_that_could_escape_the_prefix_are_refused(
    store: S3Store, moto_bucket: FixtureBucket
) -> None:
    for bad in ("../escape.json", "/etc/passwd", "0012/../../x.json", "", "0012/.."):
        with pytest.raises(ConfigError, match="unsafe output path"):
            await store.write_bytes(bad, b"x")
    assert moto_bucket.keys() == []


async def test_writes_to_a_missing_bucket_are_one_line_output_errors(moto_bucket: FixtureBucket) -> None:
    store = S3Store.from_url("s3://gone-bucket/out", endpoint_url=moto_bucket.endpoint)
    try:
        with pytest.raises(OutputError) as caught:
            await store.write_bytes("0012/a.json", b"{}")
        with pytest.raises(ConfigError) as checked:
            await store.check()
    finally:
        await store.aclose()
    assert "\n" not in str(caught.value)
    assert "'gone-bucket' does not exist" in str(caught.value)
    assert str(checked.value).startswith("S3 bucket 'gone-bucket' does not exist at ")
    assert str(checked.value).endswith("(--output-dir)")


async def test_check_passes_on_a_usable_bucket(store: S3Store) -> None:
    await store.check()


# --- retries on 5xx, against a tiny S3 stand-in that always fails ----------------------------------


@pytest.fixture
async def failing_s3() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server answering every request with 503 SlowDown; records the paths asked for."""
    from aiohttp import web

    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        return web.Response(status=503, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_repeated_5xx_is_retried_then_skipped_as_a_source_error(
    aws_env: None, failing_s3: tuple[str, list[str]]
) -> None:
    from image_analyzer.domain import ImageRef

    endpoint, seen = failing_s3
    source = S3Source(bucket="photos", endpoint_url=endpoint, max_attempts=2)
    ref = ImageRef("0012", "kitchen", "a.jpg", "0012/kitchen/a.jpg")
    try:
        with pytest.raises(SourceError) as caught:
            await source.read(ref)
    finally:
        await source.aclose()
    assert seen == ["/photos/0012/kitchen/a.jpg"] * 2
    assert "s3://photos/0012/kitchen/a.jpg" in str(caught.value)
    assert "SlowDown" in str(caught.value)


# --- SeaweedFS: a real S3 implementation that checks SigV4 signatures -----------------------------


async def test_seaweedfs_discovery_read_and_output(
    seaweed: SeaweedS3, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = seaweed.bucket
    bodies = {f"in/0012/kitchen/{n}.jpg": bytes([n]) * 100 for n in range(3)}
    bucket.put_many([*bodies.items(), ("in/0012/kitchen/notes.txt", b"x"), ("in/0100/bath/a.png", b"p")])

    seaweed.use(monkeypatch, seaweed.reader)
    source = S3Source(bucket=bucket.name, prefix="in", endpoint_url=seaweed.endpoint, download_workers=2)
    try:
        await source.check()
        assert [pid async for pid in source.property_ids()] == ["0012", "0100"]
        listing = await source.list_property("0012")
        refs = listing.categories[0].images
        data = await asyncio.gather(*(source.read(ref) for ref in refs))
        assert dict(zip((ref.locator for ref in refs), data, strict=True)) == bodies
        assert [s.reason for s in listing.skipped] == ["not an image extension (.txt)"]
    finally:
        await source.aclose()

    # The reader may list and get, but not put: the store's write fails with a one-line OutputError.
    readonly = S3Store.from_url(f"s3://{bucket.name}/out", endpoint_url=seaweed.endpoint)
    try:
        with pytest.raises(OutputError) as denied:
            await readonly.write_bytes("0012/a.json", b"{}")
    finally:
        await readonly.aclose()
    assert "access denied to s3://photos/out/0012/a.json" in str(denied.value)

    seaweed.use(monkeypatch, seaweed.admin)
    store = S3Store.from_url(f"s3://{bucket.name}/out", endpoint_url=seaweed.endpoint)
    try:
        await store.check()
        await store.write_bytes("_runs/r1.json", json.dumps({"ok": True}).encode())
        assert await store.list_files("_runs") == ["_runs/r1.json"]
        assert json.loads(await store.read_bytes("_runs/r1.json") or b"") == {"ok": True}
    finally:
        await store.aclose()
    assert bucket.get("out/_runs/r1.json") == b'{"ok": true}'


async def test_seaweedfs_rejects_bad_signatures_and_foreign_identities(
    seaweed: SeaweedS3, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seaweed.use(monkeypatch, seaweed.reader)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    source = S3Source(bucket=seaweed.bucket.name, endpoint_url=seaweed.endpoint)
    with pytest.raises(ConfigError) as rejected:
        await source.check()
    assert "AWS credentials rejected" in str(rejected.value)
    assert "not-the-secret" not in str(rejected.value)

    seaweed.use(monkeypatch, seaweed.outsider)
    source = S3Source(bucket=seaweed.bucket.name, endpoint_url=seaweed.endpoint)
    with pytest.raises(SourceError) as denied:
        await source.check()
    assert str(denied.value).startswith("access denied to s3://photos/ at ")


async def test_seaweedfs_explicit_profile_wins_over_environment_keys(
    seaweed: SeaweedS3, aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[photos-reader]\naws_access_key_id = {seaweed.reader.access_key}\n"
        f"aws_secret_access_key = {seaweed.reader.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    seaweed.use(monkeypatch, seaweed.outsider)  # valid keys without rights on the bucket
    with_profile = S3Source(
        bucket=seaweed.bucket.name, endpoint_url=seaweed.endpoint, profile="photos-reader"
    )
    await with_profile.check()
    without = S3Source(bucket=seaweed.bucket.name, endpoint_url=seaweed.endpoint)
    with pytest.raises(SourceError, match="access denied"):
        await without.check()
