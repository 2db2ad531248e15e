"""S3Source against moto's server mode on 127.0.0.1, through the real aioboto3 client."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from image_analyzer.domain import PropertyListing
from image_analyzer.errors import ConfigError, SourceError
from image_analyzer.naming import sanitize_component, unique_image_ids
from image_analyzer.sources.s3 import S3Source

if TYPE_CHECKING:
    from pathlib import Path

    from tests.s3support import FixtureBucket

pytestmark = pytest.mark.anyio


def tiny_png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


async def collect(ids: AsyncIterator[str]) -> list[str]:
    return [property_id async for property_id in ids]


def source_for(bucket: FixtureBucket, **options: object) -> S3Source:
    return S3Source(bucket=bucket.name, endpoint_url=bucket.endpoint, **options)  # type: ignore[arg-type]


def image_keys(listing: PropertyListing) -> dict[str, list[str]]:
    return {c.category: [ref.locator for ref in c.images] for c in listing.categories}


def skip_reasons(listing: PropertyListing) -> dict[str, str]:
    return {skip.location: skip.reason for skip in listing.skipped}


# --- discovery -------------------------------------------------------------------------------------


async def test_property_ids_are_the_prefixes_under_the_prefix_in_s3_order(moto_bucket: FixtureBucket) -> None:
    for key in (
        "batch-7/0100/kitchen/a.jpg",
        "batch-7/0012/kitchen/a.jpg",
        "batch-7/0012/bedroom/b.png",
        "batch-7/0099/exterior/c.webp",
        "batch-7/readme.txt",
        "batch-7/.hidden/kitchen/a.jpg",
        "batch-70/0001/kitchen/a.jpg",
        "elsewhere/0002/kitchen/a.jpg",
    ):
        moto_bucket.put(key)
    source = source_for(moto_bucket, prefix="batch-7")
    try:
        assert source.describe() == "s3://photos/batch-7/"
        assert await collect(source.property_ids()) == ["0012", "0099", "0100"]
        assert [(s.location, s.reason) for s in source.root_skipped()] == [
            ("s3://photos/batch-7/readme.txt", "not inside a property folder")
        ]
    finally:
        await source.aclose()


async def test_property_ids_page_past_1000_prefixes(moto_bucket: FixtureBucket) -> None:
    moto_bucket.put_many((f"{n:05d}/kitchen/a.jpg", b"x") for n in range(1050))
    source = source_for(moto_bucket)
    try:
        ids = await collect(source.property_ids())
    finally:
        await source.aclose()
    assert ids == [f"{n:05d}" for n in range(1050)]


async def test_category_of_1050_images_is_listed_whole(moto_bucket: FixtureBucket) -> None:
    moto_bucket.put_many((f"0012/kitchen/img{n:04d}.JPG", b"xy") for n in range(1050))
    source = source_for(moto_bucket)
    try:
        listing = await source.list_property("0012")
    finally:
        await source.aclose()
    (kitchen,) = listing.categories
    assert len(kitchen.images) == 1050
    last = kitchen.images[-1]
    assert (last.property_id, last.category, last.name, last.locator, last.size) == (
        "0012", "kitchen", "img1049.JPG", "0012/kitchen/img1049.JPG", 2,
    )  # fmt: skip
    assert last.etag == '"' + hashlib.md5(b"xy").hexdigest() + '"'
    assert listing.skipped == ()


async def test_list_property_selects_one_id_and_keeps_leading_zeros(moto_bucket: FixtureBucket) -> None:
    moto_bucket.put("0012/kitchen/a.jpg")
    moto_bucket.put("12/kitchen/b.jpg")
    moto_bucket.put("00120/kitchen/c.jpg")
    source = source_for(moto_bucket)
    try:
        listing = await source.list_property("0012")
    finally:
        await source.aclose()
    assert listing.property_id == "0012"
    assert image_keys(listing) == {"kitchen": ["0012/kitchen/a.jpg"]}


async def test_listing_reports_what_does_not_fit_the_layout(moto_bucket: FixtureBucket) -> None:
    for key in (
        "0012/",  # folder markers, as the S3 console creates them: not skips
        "0012/kitchen/",
        "0012/loose.jpg",
        "0012/kitchen/A.JPG",
        "0012/kitchen/notes.txt",
        "0012/kitchen/README",
        "0012/kitchen/.DS_Store",
        "0012/kitchen/deeper/x.jpg",
        "0012/kitchen/deeper/y.jpg",
        "0012/empty/",
        "0012/docs/plan.pdf",
    ):
        moto_bucket.put(key)
    source = source_for(moto_bucket)
    try:
        listing = await source.list_property("0012")
    finally:
        await source.aclose()
    assert image_keys(listing) == {"kitchen": ["0012/kitchen/A.JPG"]}
    assert skip_reasons(listing) == {
        "s3://photos/0012/loose.jpg": "not inside a category folder",
        "s3://photos/0012/docs/plan.pdf": "not an image extension (.pdf)",
        "s3://photos/0012/docs/": "no images in category folder",
        "s3://photos/0012/empty/": "empty category folder",
        "s3://photos/0012/kitchen/notes.txt": "not an image extension (.txt)",
        "s3://photos/0012/kitchen/README": "not an image extension (none)",
        "s3://photos/0012/kitchen/deeper/": "nested folder ignored",
    }
    assert {(s.property_id, s.category) for s in listing.skipped if "kitchen" in s.location} == {
        ("0012", "kitchen")
    }


async def test_unknown_property_id_is_an_empty_listing_with_a_skip(moto_bucket: FixtureBucket) -> None:
    moto_bucket.put("0012/kitchen/a.jpg")
    source = source_for(moto_bucket)
    try:
        listing = await source.list_property("9999")
    finally:
        await source.aclose()
    assert listing.categories == ()
    assert [(s.location, s.reason) for s in listing.skipped] == [
        ("s3://photos/9999/", "no folder for property 9999")
    ]


async def test_hostile_keys_become_distinct_refs_with_plain_names(moto_bucket: FixtureBucket) -> None:
    images = [
        "0012/kitchen/Küche 1.jpg",
        "0012/kitchen/kuche_1.png",  # sanitises like the one above
        "0012/kitchen/x\\..\\..\\evil.jpg",
        "0012/kitchen/ photo\t<>|?*.jpeg",
        "0012/kitchen/%2e%2e%2fup.jpg",
    ]
    others = [
        "0012/kitchen/..jpg",  # hidden (leading dot): passed over quietly, as in local mode
        "0012/kitchen//etc/passwd.jpg",
        "0012/kitchen/../../etc/passwd.jpg",
        "0012/../kitchen/x.jpg",
        "0012//kitchen/y.jpg",
    ]
    for key in images + others:
        moto_bucket.put(key)
    assert sorted(moto_bucket.keys()) == sorted(images + others)  # the server kept every key verbatim
    source = source_for(moto_bucket)
    try:
        listing = await source.list_property("0012")
    finally:
        await source.aclose()
    (kitchen,) = listing.categories
    assert sorted(ref.locator for ref in kitchen.images) == sorted(images)
    names = [ref.name for ref in kitchen.images]
    assert all("/" not in name and name not in ("", ".", "..") for name in names)
    ids = unique_image_ids(names)
    assert len(set(ids)) == len(ids) == len(images)
    assert all(image_id == sanitize_component(image_id) for image_id in ids)
    assert skip_reasons(listing) == {
        "s3://photos/0012/kitchen//": "nested folder ignored",
        "s3://photos/0012/kitchen/../": "nested folder ignored",
        "s3://photos/0012/../": "unusable folder name",
        "s3://photos/0012//": "unusable folder name",
    }


async def test_unusable_property_prefixes_are_not_yielded(moto_bucket: FixtureBucket) -> None:
    moto_bucket.put("../kitchen/a.jpg")
    moto_bucket.put("/kitchen/a.jpg")
    moto_bucket.put("0012/kitchen/a.jpg")
    source = source_for(moto_bucket)
    try:
        assert await collect(source.property_ids()) == ["0012"]
        assert {s.location: s.reason for s in source.root_skipped()} == {
            "s3://photos/../": "unusable folder name",
            "s3://photos//": "unusable folder name",
        }
        assert skip_reasons(await source.list_property("..")) == {
            "s3://photos/../": "no folder for property .."
        }
    finally:
        await source.aclose()


# --- reading ---------------------------------------------------------------------------------------


async def test_concurrent_reads_return_each_body(moto_bucket: FixtureBucket) -> None:
    bodies = {f"0012/kitchen/{n:02d}.png": tiny_png((n * 6, 10, 20)) for n in range(40)}
    moto_bucket.put_many(bodies.items())
    source = source_for(moto_bucket, download_workers=4)
    try:
        listing = await source.list_property("0012")
        refs = listing.categories[0].images
        data = await asyncio.gather(*(source.read(ref) for ref in refs))
    finally:
        await source.aclose()
    assert {ref.locator: body for ref, body in zip(refs, data, strict=True)} == bodies


async def test_an_object_gone_since_listing_is_a_source_error_naming_it(moto_bucket: FixtureBucket) -> None:
    moto_bucket.put("0012/kitchen/a.jpg", tiny_png())
    moto_bucket.put("0012/kitchen/b.jpg", tiny_png())
    source = source_for(moto_bucket)
    try:
        refs = (await source.list_property("0012")).categories[0].images
        moto_bucket.client.delete_object(Bucket=moto_bucket.name, Key="0012/kitchen/a.jpg")
        with pytest.raises(SourceError) as caught:
            await source.read(refs[0])
        assert await source.read(refs[1]) == tiny_png()  # the shared client is still fine
    finally:
        await source.aclose()
    assert str(caught.value) == "s3://photos/0012/kitchen/a.jpg does not exist"


# --- errors: each one line, the right type, naming the setting at fault -----------------------------


def assert_one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message


async def test_no_credentials_is_a_config_error(moto_endpoint: str, no_aws_credentials: None) -> None:
    source = S3Source(bucket="photos", endpoint_url=moto_endpoint)
    try:
        with pytest.raises(ConfigError) as caught:
            await source.check()
    finally:
        await source.aclose()
    assert_one_line(caught.value, "no AWS credentials found", "AWS_ACCESS_KEY_ID", "--profile")


async def test_unknown_profile_is_a_config_error(moto_bucket: FixtureBucket) -> None:
    source = source_for(moto_bucket, profile="nobody")
    with pytest.raises(ConfigError) as caught:
        await source.check()
    assert_one_line(caught.value, "'nobody'", "--profile")


async def test_profile_from_the_shared_credentials_file_is_used(
    moto_bucket: FixtureBucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[photos-reader]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = s3cr3t\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    moto_bucket.put("0012/kitchen/a.jpg")
    source = source_for(moto_bucket, profile="photos-reader")
    try:
        await source.check()
        assert await collect(source.property_ids()) == ["0012"]
    finally:
        await source.aclose()


async def test_missing_bucket_is_a_source_error_naming_it(moto_bucket: FixtureBucket) -> None:
    source = S3Source(bucket="no-such-bucket", endpoint_url=moto_bucket.endpoint)
    with pytest.raises(SourceError) as caught:
        await source.check()
    assert_one_line(
        caught.value, "'no-such-bucket'", "does not exist", moto_bucket.endpoint, "S3_BUCKET_NAME"
    )


async def test_unreachable_endpoint_is_a_source_error_naming_the_url(
    aws_env: None, closed_endpoint: str
) -> None:
    endpoint = closed_endpoint
    source = S3Source(bucket="photos", endpoint_url=endpoint)
    with pytest.raises(SourceError) as caught:
        await source.check()
    assert_one_line(caught.value, f"cannot connect to S3 endpoint {closed_endpoint}", "--endpoint-url")


async def test_endpoint_credentials_in_the_url_never_reach_a_message(
    aws_env: None, closed_endpoint: str
) -> None:
    host = closed_endpoint.removeprefix("http://")
    source = S3Source(bucket="photos", endpoint_url=f"http://user:hunter2@{host}")
    with pytest.raises(SourceError) as caught:
        await source.check()
    assert "hunter2" not in str(caught.value)
    assert host in str(caught.value)


async def test_invalid_bucket_name_is_a_config_error(moto_bucket: FixtureBucket) -> None:
    source = S3Source(bucket="Not A Bucket!", endpoint_url=moto_bucket.endpoint)
    with pytest.raises(ConfigError) as caught:
        await source.check()
    assert str(caught.value) == "invalid S3 bucket name 'Not A Bucket!' (--bucket / S3_BUCKET_NAME)"


def test_settings_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="S3_BUCKET_NAME"):
        S3Source(bucket="")
    with pytest.raises(ConfigError, match="--download-workers"):
        S3Source(bucket="photos", download_workers=0)


async def test_check_creates_nothing_in_the_bucket(moto_bucket: FixtureBucket) -> None:
    moto_bucket.put("0012/kitchen/a.jpg")
    source = source_for(moto_bucket, prefix="0012")
    try:
        await source.check()
        await source.list_property("kitchen")
    finally:
        await source.aclose()
    assert moto_bucket.keys() == ["0012/kitchen/a.jpg"]
