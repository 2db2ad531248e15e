"""Fetching schema sets by CID from gateways (a local one on 127.0.0.1, never the internet)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_analyzer.errors import ConfigError, SchemaError
from image_analyzer.ipfs import (
    cached_set_dir,
    check_cid,
    fetch_schema_set,
    gateway_url,
    kind_of,
    links_of,
)
from image_analyzer.schemas import SchemaSet, bundled_schema_dir, compute_cid
from tests.ipfs_gateway import serving
from tests.schema_sets import make_newer_set, set_files_by_cid

CHANGED = ("Photo_Metadata", "layout", "property_to_layout")
"""What `make_newer_set` changes: the layout class and, through their links, two more schemas."""


@pytest.fixture
def newer(tmp_path: Path) -> Path:
    return make_newer_set(tmp_path / "newer")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMAGE_ANALYZER_CACHE_DIR", str(folder))
    return folder


def manifest(root: Path) -> dict[str, dict[str, str]]:
    return dict(json.loads((root / "manifest.json").read_text()))


@pytest.mark.anyio
async def test_a_data_group_comes_with_everything_it_links_to(newer: Path, cache: Path) -> None:
    group = manifest(newer)["Photo_Metadata"]["cid"]
    with serving(set_files_by_cid(newer)) as gateway:
        result = await fetch_schema_set([group], gateways=[gateway.url], timeout=5)
    assert result.folder == cached_set_dir(group, cache)
    assert manifest(result.folder) == manifest(newer)  # same names, kinds and CIDs as the published set
    assert SchemaSet.load(result.folder).fingerprint == SchemaSet.load(newer).fingerprint
    assert result.unusable is None
    origins = {entry.name: entry.origin for entry in result.entries}
    assert {name for name, origin in origins.items() if origin != "bundled"} == set(CHANGED)
    assert origins["layout"] == gateway.url.removeprefix("http://")
    # The fact-sheet slots link to schemas no gateway here holds: reported, not fatal.
    assert len(result.missing) == 7
    assert all("HTTP 404" in reason for reason in result.missing.values())
    asked = set(gateway.requested)
    assert {manifest(newer)[name]["cid"] for name in CHANGED} <= asked
    assert manifest(newer)["lot"]["cid"] not in asked  # unchanged: taken from the package


@pytest.mark.anyio
async def test_gateways_are_tried_in_turn_and_only_verified_bytes_are_kept(
    newer: Path, cache: Path, tmp_path: Path
) -> None:
    layout = manifest(newer)["layout"]["cid"]
    blobs = set_files_by_cid(newer)
    with serving(blobs, "missing") as first, serving(blobs, "wrong") as second, serving(blobs) as third:
        result = await fetch_schema_set(
            [layout], gateways=[first.url, second.url, third.url], timeout=5, dest=tmp_path / "out"
        )
    assert layout in first.requested and layout in second.requested
    (entry,) = result.entries
    assert (entry.name, entry.kind, entry.origin) == ("layout", "class", third.url.removeprefix("http://"))
    assert compute_cid((tmp_path / "out" / "layout.json").read_bytes()) == layout
    assert result.unusable is not None and "lacks the class schema" in result.unusable  # not a set


@pytest.mark.anyio
async def test_when_every_gateway_fails_the_error_names_the_cid_and_each_reason(
    newer: Path, cache: Path
) -> None:
    layout = manifest(newer)["layout"]["cid"]
    blobs = set_files_by_cid(newer)
    with (
        serving(blobs, "missing") as first,
        serving(blobs, "wrong") as second,
        pytest.raises(SchemaError) as caught,
    ):
        await fetch_schema_set([layout], gateways=[first.url, second.url], timeout=5)
    message = str(caught.value)
    assert message.startswith(f"cannot fetch {layout}: ")
    assert "HTTP 404" in message
    assert "sent bytes that hash to" in message
    assert "\n" not in message
    assert not (cache / "ipfs" / layout).exists()


@pytest.mark.anyio
async def test_a_hung_gateway_times_out_and_the_next_one_answers(newer: Path, cache: Path) -> None:
    layout = manifest(newer)["layout"]["cid"]
    blobs = set_files_by_cid(newer)
    with serving(blobs, "hang") as hung, serving(blobs) as good:
        result = await fetch_schema_set([layout], gateways=[hung.url, good.url], timeout=0.3)
    assert hung.requested == [layout]
    assert result.entries[0].origin == good.url.removeprefix("http://")


@pytest.mark.anyio
async def test_a_gateway_sending_too_much_is_refused(newer: Path, cache: Path) -> None:
    layout = manifest(newer)["layout"]["cid"]
    with (
        serving(set_files_by_cid(newer), "huge") as gateway,
        pytest.raises(SchemaError, match="not a schema"),
    ):
        await fetch_schema_set([layout], gateways=[gateway.url], timeout=5)


@pytest.mark.anyio
async def test_later_fetches_and_runs_work_offline(newer: Path, cache: Path) -> None:
    group = manifest(newer)["Photo_Metadata"]["cid"]
    with serving(set_files_by_cid(newer)) as gateway:
        await fetch_schema_set([group], gateways=[gateway.url], timeout=5)
        gone = gateway.url
    # The gateway is closed now: everything comes from the cache or the package.
    again = await fetch_schema_set([group], gateways=[gone], timeout=5)
    assert {entry.origin for entry in again.entries} == {"cache", "bundled"}
    by_cid = SchemaSet.load(Path(group))  # `--schema-set <data-group CID>` finds the cached set
    assert by_cid.data_group_cid == group
    assert by_cid.root == cached_set_dir(group, cache)


@pytest.mark.anyio
async def test_a_damaged_cache_entry_is_fetched_again(newer: Path, cache: Path) -> None:
    layout = manifest(newer)["layout"]["cid"]
    with serving(set_files_by_cid(newer)) as gateway:
        await fetch_schema_set([layout], gateways=[gateway.url], timeout=5)
        (cache / "ipfs" / layout).write_bytes(b'{"tampered": true}')
        result = await fetch_schema_set([layout], gateways=[gateway.url], timeout=5)
    assert gateway.requested == [layout, layout]
    assert result.entries[0].origin != "cache"
    assert compute_cid((cache / "ipfs" / layout).read_bytes()) == layout


def test_an_uncached_cid_as_schema_set_says_what_to_run(cache: Path) -> None:
    cid = compute_cid(b"never fetched")
    with pytest.raises(SchemaError, match=f"schemas fetch {cid}"):
        SchemaSet.load(Path(cid))


@pytest.mark.anyio
async def test_a_root_that_is_not_json_is_refused(cache: Path) -> None:
    data = b"<html>hello</html>"
    with serving({compute_cid(data): data}) as gateway, pytest.raises(SchemaError, match="is not JSON"):
        await fetch_schema_set([compute_cid(data)], gateways=[gateway.url], timeout=5)


def test_only_verifiable_cids_and_http_gateways_are_accepted() -> None:
    good = compute_cid(b"x")
    assert check_cid(good) == good
    for bad in ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "bafy" + "a" * 55, "hello", good.upper()):
        with pytest.raises(ConfigError, match="not a CID this tool can verify"):
            check_cid(bad)
    dag_pb = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
    with pytest.raises(ConfigError):
        check_cid(dag_pb)


def test_gateway_url_forms() -> None:
    cid = compute_cid(b"x")
    assert gateway_url("https://ipfs.io", cid) == f"https://ipfs.io/ipfs/{cid}"
    assert gateway_url("https://ipfs.io/ipfs/", cid) == f"https://ipfs.io/ipfs/{cid}"
    assert gateway_url("https://{cid}.ipfs.dweb.link/", cid) == f"https://{cid}.ipfs.dweb.link/"


@pytest.mark.anyio
async def test_bad_options_are_config_errors(cache: Path) -> None:
    cid = compute_cid(b"x")
    with pytest.raises(ConfigError, match="--gateway"):
        await fetch_schema_set([cid], gateways=["ftp://example.com"])
    with pytest.raises(ConfigError, match="--timeout"):
        await fetch_schema_set([cid], timeout=0)


def test_kinds_and_links_are_read_from_the_documents() -> None:
    root = bundled_schema_dir()
    kinds = {name: entry["type"] for name, entry in manifest(root).items()}
    for name, kind in kinds.items():
        assert kind_of(json.loads((root / f"{name}.json").read_text())) == kind, name
    layout_link = json.loads((root / "property_to_layout.json").read_text())
    assert links_of(layout_link) == [manifest(root)["property"]["cid"], manifest(root)["layout"]["cid"]]
