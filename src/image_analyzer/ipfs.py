"""Schema sets from IPFS: fetch by CID from gateways, verify every byte, cache for offline runs.

A gateway is only a courier: every document it returns is hashed and must match the CID it was asked
for (CIDv1, raw codec, sha2-256, the form the Elephant lexicon publishes), so a wrong, stale or hostile
gateway can make a fetch fail but never slip a different schema in. Gateways are tried in turn, each
with its own timeout.

Starting from the CIDs asked for (usually one data-group schema), every `{"type": "string", "cid": X}`
link is followed, so the relationship schemas and then the class schemas they link to come along. A
link that no gateway can serve is left out and reported; the fetch fails only when what was asked for,
or what a run needs, is missing.

Where things live (the cache root is the platformdirs user cache dir, or `$IMAGE_ANALYZER_CACHE_DIR`):

    <cache>/ipfs/<cid>                 verified bytes of each document, reused before any network call
    <cache>/schema-sets/<cid>/         an assembled set (`<name>.json` files + manifest.json), named by its
                                       data-group CID; `--schema-set <that cid>` finds it offline

Documents of the bundled pinned set are taken from the package instead of the network.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from image_analyzer.errors import ConfigError, SchemaError
from image_analyzer.schemas import (
    DATA_GROUP_KIND,
    MANIFEST_NAME,
    SchemaSet,
    bundled_schema_dir,
    compute_cid,
)

if TYPE_CHECKING:
    import httpx2

DEFAULT_GATEWAYS = ("https://ipfs.io", "https://dweb.link", "https://w3s.link")
DEFAULT_TIMEOUT = 30.0
CACHE_ENV = "IMAGE_ANALYZER_CACHE_DIR"
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
"""Schemas are a few kB: a gateway that sends more is not sending a schema."""
CONCURRENT_FETCHES = 8

RELATIONSHIP_KIND = "relationship"
CLASS_KIND = "class"

_CID = re.compile(r"b[a-z2-7]{58}")
_RAW_SHA256_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


# --- CIDs, gateways and the cache -------------------------------------------------------------------------


def looks_like_cid(text: str) -> bool:
    return _CID.fullmatch(text) is not None


def check_cid(cid: str) -> str:
    """`cid` if it is a CIDv1 of raw bytes hashed with sha2-256 in base32 (`bafkrei...`), else ConfigError."""
    if looks_like_cid(cid):
        try:
            raw = base64.b32decode(cid[1:].upper() + "=" * (-len(cid[1:]) % 8))
        except ValueError:
            raw = b""
        if raw[:4] == _RAW_SHA256_PREFIX and len(raw) == 36:
            return cid
    raise ConfigError(
        f"{cid!r} is not a CID this tool can verify: expected CIDv1, raw codec, sha2-256, base32 (bafkrei...)"
    )


def gateway_url(gateway: str, cid: str) -> str:
    """The URL of `cid` on a gateway given as `https://host`, `https://host/ipfs/` or a `{cid}` template."""
    if "{cid}" in gateway:
        return gateway.replace("{cid}", cid)
    base = gateway.rstrip("/")
    return f"{base}/{cid}" if base.endswith("/ipfs") else f"{base}/ipfs/{cid}"


def check_gateways(gateways: Iterable[str]) -> tuple[str, ...]:
    checked = []
    for gateway in gateways:
        parts = urlsplit(gateway.replace("{cid}", "x"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--gateway: {gateway!r} is not an http(s) URL")
        checked.append(gateway)
    if not checked:
        raise ConfigError("--gateway: give at least one gateway URL")
    return tuple(checked)


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    from platformdirs import user_cache_path

    return user_cache_path("image-analyzer")


def cached_set_dir(cid: str, root: Path | None = None) -> Path:
    """Where `schemas fetch` assembles the set whose data-group CID is `cid`."""
    return (root or cache_root()) / "schema-sets" / cid


def resolve_schema_set(value: Path) -> Path:
    """`--schema-set` takes a folder or the data-group CID of a fetched (cached) set."""
    if value.exists() or not looks_like_cid(str(value)):
        return value
    folder = cached_set_dir(str(value))
    if (folder / MANIFEST_NAME).is_file():
        return folder
    raise SchemaError(
        f"schema set {value} is not in the cache ({folder}): run `image-analyzer schemas fetch {value}` first"
    )


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class BlobCache:
    """Verified documents by CID: the bundled set first, then `<cache>/ipfs/<cid>`."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "ipfs"
        self._bundled = _bundled_by_cid()

    def get(self, cid: str) -> tuple[bytes, str] | None:
        """(bytes, where they came from) when a verified copy is at hand."""
        bundled = self._bundled.get(cid)
        if bundled is not None:
            data = bundled.read_bytes()
            if compute_cid(data) == cid:
                return data, "bundled"
        path = self.folder / cid
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if compute_cid(data) != cid:
            path.unlink(missing_ok=True)  # damaged on disk: fetch it again
            return None
        return data, "cache"

    def put(self, cid: str, data: bytes) -> None:
        try:
            _write_atomically(self.folder / cid, data)
        except OSError as exc:
            raise SchemaError(f"cannot write the schema cache {self.folder}: {exc.strerror or exc}") from exc


def _bundled_by_cid() -> dict[str, Path]:
    try:
        root = bundled_schema_dir()
        manifest = json.loads((root / MANIFEST_NAME).read_bytes())
    except (SchemaError, OSError, ValueError):
        return {}
    return {
        entry["cid"]: root / f"{name}.json"
        for name, entry in manifest.items()
        if isinstance(entry, dict) and isinstance(entry.get("cid"), str)
    }


# --- fetching -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    cid: str
    data: bytes
    origin: str
    """`bundled`, `cache` or the gateway that served it."""


class Gateways:
    """Tries each gateway in turn for one CID; the first response whose bytes hash to the CID wins."""

    def __init__(self, client: httpx2.AsyncClient, gateways: Sequence[str], timeout: float) -> None:
        self.client = client
        self.gateways = gateways
        self.timeout = timeout

    async def fetch(self, cid: str) -> Fetched:
        reasons = []
        for gateway in self.gateways:
            try:
                data = await asyncio.wait_for(self._get(gateway_url(gateway, cid)), self.timeout)
            except TimeoutError:
                reasons.append(f"{_host(gateway)}: timed out after {self.timeout:g}s")
                continue
            except _GatewayError as exc:
                reasons.append(f"{_host(gateway)}: {exc}")
                continue
            actual = compute_cid(data)
            if actual == cid:
                return Fetched(cid, data, _host(gateway))
            reasons.append(f"{_host(gateway)}: sent bytes that hash to {actual}, not {cid}")
        raise SchemaError(f"cannot fetch {cid}: {'; '.join(reasons)}")

    async def _get(self, url: str) -> bytes:
        import httpx2

        try:
            async with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise _GatewayError(f"HTTP {response.status_code}")
                chunks = bytearray()
                async for chunk in response.aiter_bytes():
                    chunks += chunk
                    if len(chunks) > MAX_DOCUMENT_BYTES:
                        raise _GatewayError(f"more than {MAX_DOCUMENT_BYTES} bytes: not a schema")
                return bytes(chunks)
        except httpx2.HTTPError as exc:
            raise _GatewayError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


class _GatewayError(Exception):
    pass


def _host(gateway: str) -> str:
    return urlsplit(gateway.replace("{cid}", "x")).netloc or gateway


# --- a schema set from what was fetched -------------------------------------------------------------------


def links_of(document: Any) -> list[str]:
    """The CIDs of every `{"type": "string", "cid": X}` link node in a schema document, in order."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cid = node.get("cid")
            if isinstance(cid, str) and node.get("type") == "string":
                found.append(cid)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return list(dict.fromkeys(found))


def kind_of(document: Any) -> str:
    """`dataGroup` (links under `relationships`), `relationship` (a `from` and a `to` link) or `class`."""
    properties = document.get("properties") if isinstance(document, dict) else None
    if not isinstance(properties, dict):
        return CLASS_KIND
    if isinstance(properties.get("relationships"), dict) and links_of(properties["relationships"]):
        return DATA_GROUP_KIND
    ends = [properties.get(side) for side in ("from", "to")]
    if all(isinstance(end, dict) and links_of(end) for end in ends):
        return RELATIONSHIP_KIND
    return CLASS_KIND


def _name_of(document: Any, cid: str, taken: set[str]) -> str:
    """The schema's title as a file name (`Photo Metadata` -> `Photo_Metadata`), unique in the set."""
    title = document.get("title") if isinstance(document, dict) else None
    name = _NAME_CHARS.sub("_", title).strip("_") if isinstance(title, str) else ""
    name = name or cid
    if name in taken:
        name = f"{name}_{cid[-8:]}"
    return name


@dataclass(frozen=True)
class SetEntry:
    name: str
    kind: str
    cid: str
    origin: str


@dataclass
class FetchResult:
    folder: Path
    entries: list[SetEntry]
    missing: dict[str, str] = field(default_factory=dict)
    """CID -> why it could not be fetched (links no gateway served)."""
    unusable: str | None = None
    """Why a run cannot use the set (None: it can)."""


async def _fetch_all(
    roots: Sequence[str], cache: BlobCache, gateways: Gateways
) -> tuple[dict[str, Fetched], dict[str, str]]:
    """Every root and everything it links to, breadth first; links that fail are reported, roots raise."""
    fetched: dict[str, Fetched] = {}
    missing: dict[str, str] = {}
    slots = asyncio.Semaphore(CONCURRENT_FETCHES)

    async def one(cid: str) -> Fetched:
        cached = cache.get(cid)
        if cached is not None:
            return Fetched(cid, cached[0], cached[1])
        async with slots:
            result = await gateways.fetch(cid)
        cache.put(cid, result.data)
        return result

    level, is_root = list(dict.fromkeys(roots)), True
    while level:
        results = await asyncio.gather(*(one(cid) for cid in level), return_exceptions=True)
        next_level: list[str] = []
        for cid, result in zip(level, results, strict=True):
            if isinstance(result, SchemaError) and not is_root:
                missing[cid] = str(result)
                continue
            if isinstance(result, BaseException):
                raise result
            fetched[cid] = result
            next_level.extend(_links_in_bytes(result))
        level = [c for c in dict.fromkeys(next_level) if c not in fetched and c not in missing]
        is_root = False
    return fetched, missing


def _links_in_bytes(fetched: Fetched) -> Iterator[str]:
    try:
        document = json.loads(fetched.data)
    except ValueError as exc:
        raise SchemaError(f"{fetched.cid} (from {fetched.origin}) is not JSON: not a schema") from exc
    for cid in links_of(document):
        if looks_like_cid(cid):
            yield cid


def _write_set(folder: Path, fetched: dict[str, Fetched]) -> list[SetEntry]:
    entries: list[SetEntry] = []
    taken: set[str] = set()
    for cid in sorted(fetched, key=lambda c: _sort_key(fetched[c])):
        document = json.loads(fetched[cid].data)
        name = _name_of(document, cid, taken)
        taken.add(name)
        entries.append(SetEntry(name, kind_of(document), cid, fetched[cid].origin))
    try:
        for entry in entries:
            _write_atomically(folder / f"{entry.name}.json", fetched[entry.cid].data)
        manifest = {e.name: {"cid": e.cid, "type": e.kind} for e in entries}
        _write_atomically(
            folder / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        )
    except OSError as exc:
        raise SchemaError(f"cannot write the schema set to {folder}: {exc.strerror or exc}") from exc
    return sorted(entries, key=lambda e: e.name)


def _sort_key(fetched: Fetched) -> tuple[str, str]:
    """Names are handed out in a stable order, so a title clash always resolves the same way."""
    document = json.loads(fetched.data)
    title = document.get("title") if isinstance(document, dict) else None
    return (title if isinstance(title, str) else "~", fetched.cid)


def _set_folder(
    dest: Path | None, roots: Sequence[str], entries: dict[str, Fetched], cache_dir: Path
) -> Path:
    if dest is not None:
        return dest
    groups = [cid for cid in roots if kind_of(json.loads(entries[cid].data)) == DATA_GROUP_KIND]
    return cached_set_dir(groups[0] if len(groups) == 1 else roots[0], cache_dir)


async def fetch_schema_set(
    cids: Sequence[str],
    *,
    gateways: Sequence[str] = DEFAULT_GATEWAYS,
    timeout: float = DEFAULT_TIMEOUT,
    dest: Path | None = None,
    cache_dir: Path | None = None,
) -> FetchResult:
    """Fetch `cids` and everything they link to, verify each, and write them as a schema set folder."""
    import httpx2

    roots = [check_cid(cid) for cid in dict.fromkeys(cids)]
    if not roots:
        raise ConfigError("schemas fetch: give at least one CID")
    if timeout <= 0:
        raise ConfigError("--timeout: must be more than 0 seconds")
    checked = check_gateways(gateways)
    cache_dir = cache_dir or cache_root()
    cache = BlobCache(cache_dir)
    async with httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout), follow_redirects=True, headers={"User-Agent": "image-analyzer"}
    ) as client:
        fetched, missing = await _fetch_all(roots, cache, Gateways(client, checked, timeout))
    folder = _set_folder(dest, roots, fetched, cache_dir)
    entries = _write_set(folder, fetched)
    result = FetchResult(folder=folder, entries=entries, missing=missing)
    try:
        SchemaSet.load(folder)
    except SchemaError as exc:
        result.unusable = str(exc)
    return result


def fetch_schema_set_blocking(cids: Sequence[str], **options: Any) -> FetchResult:
    return asyncio.run(fetch_schema_set(cids, **options))
