"""Read `seed.csv`: where each property's data came from, as Elephant provenance.

Columns: `parcel_id,Address,method,headers,url,multiValueQueryString,body,json,source_identifier,County`.
Every value is read as text (a parcel id like `0012345` keeps its zeros). Each row's request is turned
into a `source_http_request` that satisfies the lexicon's rules (see `schemas/layout.json`): the url has
no query string (it moves to `multiValueQueryString`), GET carries no body, json or headers, and
POST/PUT/PATCH carry either `json` with `content-type: application/json` or a `body` with another
content type. A row that cannot be made valid stops the run with the file, line and column at fault.
"""

from __future__ import annotations

import csv
import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .domain import Provenance
from .errors import ConfigError

REQUIRED_COLUMNS = ("parcel_id", "method", "url")
METHODS = ("GET", "POST", "PUT", "PATCH")
CONTENT_TYPES = ("application/json", "multipart/form-data", "text/xml")
JSON_CONTENT_TYPE = "application/json"
URL_PATTERN = re.compile(r"^https?://[a-zA-Z0-9.-]+(:[0-9]+)?(/[#a-zA-Z0-9._%-]+)*$")
"""Copied from the lexicon's `source_http_request.url` pattern."""
PLACEHOLDER_HOST = "no-seed-row.invalid"
"""`.invalid` is reserved (RFC 2606): a url on it can never be mistaken for a real source."""
_PATH_SAFE = re.compile(r"[^a-zA-Z0-9._%-]")


class _RowError(Exception):
    """A problem with one column of one row; `load_seed` adds the file and line."""

    def __init__(self, column: str, problem: str) -> None:
        super().__init__(problem)
        self.column = column
        self.problem = problem


@dataclass(frozen=True, slots=True)
class SeedRow:
    parcel_id: str
    address: str
    county: str
    source_identifier: str
    request: Mapping[str, Any]
    """The validated `source_http_request`."""
    line: int

    def provenance(self) -> Provenance:
        return Provenance(
            request_identifier=self.source_identifier or self.parcel_id,
            source_http_request=self.request,
            from_seed=True,
        )


class SeedTable(Mapping[str, SeedRow]):
    """Seed rows by parcel id, plus the warnings met while reading them (duplicates, dropped fields)."""

    def __init__(self, path: Path, rows: Mapping[str, SeedRow], warnings: list[str]) -> None:
        self.path = path
        self.rows: dict[str, SeedRow] = dict(rows)
        self.warnings = warnings

    def __getitem__(self, parcel_id: str) -> SeedRow:
        return self.rows[parcel_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def provenance_for(self, property_id: str) -> Provenance:
        """The row's provenance, or the placeholder one (`from_seed=False`) for a property without a row."""
        row = self.rows.get(property_id)
        return row.provenance() if row else default_provenance(property_id)


def default_provenance(property_id: str) -> Provenance:
    """Provenance for a property that has no seed row: a clearly fake, pattern-valid url."""
    segment = _encode_path_segment(property_id) or "unknown"
    return Provenance(
        request_identifier=property_id,
        source_http_request={"method": "GET", "url": f"https://{PLACEHOLDER_HOST}/property/{segment}"},
        from_seed=False,
    )


# --- reading -------------------------------------------------------------------------------------------


def load_seed(path: Path) -> SeedTable:
    """Read and validate a seed file. Raises `ConfigError` naming the file (and line and column)."""
    name = path.name
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return _read_rows(path, csv.reader(handle))
    except FileNotFoundError as exc:
        raise ConfigError(f"seed file not found: {path} (set --seed-csv)") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (save it as UTF-8 CSV)") from exc
    except csv.Error as exc:
        raise ConfigError(f"{name}: not a readable CSV file ({exc})") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{name}: is a folder, not a CSV file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read seed file {path}: {exc.strerror or exc}") from exc


def _header_index(path: Path, header: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for position, column in enumerate(header):
        index.setdefault(column.strip().lower(), position)
    missing = [column for column in REQUIRED_COLUMNS if column not in index]
    if missing:
        raise ConfigError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return index


def _read_rows(path: Path, reader: Iterator[list[str]]) -> SeedTable:
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"{path.name}: empty file (expected a header with {', '.join(REQUIRED_COLUMNS)})")
    index = _header_index(path, header)
    rows: dict[str, SeedRow] = {}
    warnings: list[str] = []
    line = getattr(reader, "line_num", 1)
    for record in reader:
        start_line, line = line + 1, getattr(reader, "line_num", line + 1)
        if not any(cell.strip() for cell in record):
            continue
        values = {column: _cell(record, position) for column, position in index.items()}
        parcel_id = values.get("parcel_id", "")
        where = f"{path.name} line {start_line}"
        if not parcel_id:
            warnings.append(f"{where}: empty parcel_id, row skipped")
            continue
        if parcel_id in rows:
            first = rows[parcel_id].line
            warnings.append(f"{where}: duplicate parcel_id {parcel_id} ignored (first on line {first})")
            continue
        try:
            request, dropped = build_request(values)
        except _RowError as exc:
            raise ConfigError(f"{where}, column {exc.column}: {exc.problem}") from None
        if dropped:
            warnings.append(f"{where}: dropped {', '.join(dropped)} (not allowed in source_http_request)")
        rows[parcel_id] = SeedRow(
            parcel_id=parcel_id,
            address=values.get("address", ""),
            county=values.get("county", ""),
            source_identifier=values.get("source_identifier", ""),
            request=request,
            line=start_line,
        )
    return SeedTable(path, rows, warnings)


def _cell(record: list[str], position: int) -> str:
    return record[position].strip() if position < len(record) else ""


# --- turning a row into a valid source_http_request ------------------------------------------------------


def build_request(values: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The lexicon-valid request for one row's values (lower-case column names), and what was dropped."""
    method = (values.get("method") or "GET").upper()
    if method not in METHODS:
        raise _RowError("method", f"{method!r} is not one of {', '.join(METHODS)}")
    url, query = _split_url(values.get("url", ""))
    query = _merge_query(query, _parse_query_column(values.get("multivaluequerystring", "")))
    request: dict[str, Any] = {"method": method, "url": url}
    if query:
        request["multiValueQueryString"] = query
    headers, dropped = _parse_headers(values.get("headers", ""))
    body = values.get("body", "")
    payload = _parse_json_column(values.get("json", ""))
    if method == "GET":
        dropped += [name for name, present in _payload_parts(headers, body, payload) if present]
        return request, dropped
    request.update(_payload_for_write(method, headers, body, payload))
    return request, dropped


def _payload_parts(headers: dict[str, str], body: str, payload: Any) -> list[tuple[str, bool]]:
    return [("headers", bool(headers)), ("body", bool(body)), ("json", payload is not None)]


def _payload_for_write(method: str, headers: dict[str, str], body: str, payload: Any) -> dict[str, Any]:
    """POST/PUT/PATCH: exactly one of json (with a JSON content type) or body (with another one)."""
    content_type = headers.get("content-type")
    if payload is not None and body:
        raise _RowError("body", f"{method} has both body and json: keep one")
    if payload is None and body and content_type in (None, JSON_CONTENT_TYPE):
        payload = _try_json(body)
        if payload is None and content_type == JSON_CONTENT_TYPE:
            raise _RowError("body", "content-type is application/json but body is not a JSON object or array")
        if payload is None:
            raise _RowError("headers", f"{method} with a body needs a content-type of {_other_types()}")
        body = ""
    if payload is not None:
        if content_type not in (None, JSON_CONTENT_TYPE):
            raise _RowError("json", f"json needs content-type application/json, not {content_type}")
        return {"headers": {"content-type": JSON_CONTENT_TYPE}, "json": payload}
    if body:
        return {"headers": {"content-type": content_type}, "body": body}
    raise _RowError("body", f"{method} needs a body or json value")


def _other_types() -> str:
    return " or ".join(kind for kind in CONTENT_TYPES if kind != JSON_CONTENT_TYPE)


def _split_url(raw: str) -> tuple[str, dict[str, list[str]]]:
    """A pattern-valid url and the query parameters that were in it."""
    if not raw:
        raise _RowError("url", "empty url")
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise _RowError("url", f"not a valid url ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _RowError("url", "must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise _RowError("url", "credentials in the url are not allowed")
    host = _ascii_host(parts.hostname or "")
    segments = [_encode_path_segment(urllib.parse.unquote(s)) for s in parts.path.split("/") if s]
    url = f"{parts.scheme.lower()}://{host}{f':{port}' if port is not None else ''}"
    url += "".join(f"/{segment}" for segment in segments)
    if not URL_PATTERN.match(url):
        raise _RowError("url", "does not match the lexicon url pattern (host letters, digits, dots, dashes)")
    return url, urllib.parse.parse_qs(parts.query, keep_blank_values=True)


def _ascii_host(host: str) -> str:
    if not host:
        raise _RowError("url", "no host in url")
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise _RowError("url", f"host cannot be encoded ({exc})") from None


def _encode_path_segment(segment: str) -> str:
    """Percent-encode every character the lexicon url pattern does not allow in a path segment."""
    return _PATH_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), segment)


def _parse_query_column(raw: str) -> dict[str, list[str]]:
    if not raw:
        return {}
    value = _try_json(raw)
    if not isinstance(value, dict):
        raise _RowError("multiValueQueryString", 'expected a JSON object like {"key": ["value"]}')
    query: dict[str, list[str]] = {}
    for key, item in value.items():
        items = item if isinstance(item, list) else [item]
        if not all(isinstance(v, str | int | float | bool) for v in items):
            raise _RowError("multiValueQueryString", f"values of {key!r} must be strings")
        query[str(key)] = [v if isinstance(v, str) else json.dumps(v) for v in items]
    return query


def _merge_query(first: dict[str, list[str]], second: dict[str, list[str]]) -> dict[str, list[str]]:
    merged = {key: list(values) for key, values in first.items()}
    for key, values in second.items():
        merged.setdefault(key, [])
        merged[key] += [v for v in values if v not in merged[key]]
    return merged


def _parse_headers(raw: str) -> tuple[dict[str, str], list[str]]:
    """The allowed headers (only content-type) and the names of the ones dropped."""
    if not raw:
        return {}, []
    value = _try_json(raw)
    if not isinstance(value, dict):
        raise _RowError("headers", 'expected a JSON object like {"content-type": "application/json"}')
    headers: dict[str, str] = {}
    dropped: list[str] = []
    for key, item in value.items():
        name = str(key).strip().lower()
        if name != "content-type":
            dropped.append(f"header {name}")  # only the name: header values may be secrets
            continue
        kind = str(item).split(";")[0].strip().lower()
        if kind not in CONTENT_TYPES:
            raise _RowError("headers", f"content-type {kind!r} is not one of {', '.join(CONTENT_TYPES)}")
        headers[name] = kind
    return headers, dropped


def _parse_json_column(raw: str) -> Any:
    if not raw:
        return None
    value = _try_json(raw)
    if not isinstance(value, dict | list):
        raise _RowError("json", "expected a JSON object or array")
    return value


def _try_json(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def load_seed_for(seed_csv: Path | None) -> SeedTable | None:
    """The seed table a run uses: `--seed-csv PATH`, else `seed.csv` in the working dir when present."""
    if seed_csv is None:
        default = Path("seed.csv")
        return load_seed(default) if default.exists() else None
    if not seed_csv.exists():
        raise ConfigError(f"--seed-csv: file not found: {seed_csv}")
    return load_seed(seed_csv)
