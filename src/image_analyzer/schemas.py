"""The pinned Elephant schema set: load and verify it, derive the strict response schema, check answers.

A schema set is a folder of lexicon JSON Schemas (draft-07) plus `manifest.json` (name -> cid, kind). Each
file's bytes must hash to its CID, so a set is verified before anything uses it.

The response schema sent to the model is derived from whatever the set's class schemas declare, so a newer
set with new fields or enum values flows through without code changes. OpenAI's strict mode accepts only a
subset of JSON Schema, so the derivation:

- lists every property in `required` and sets `additionalProperties: false` on every object;
- turns optional lexicon fields into nullable ones (the key is dropped again when the answer says null);
- keeps `type`, `enum` (`const` becomes a one-member enum), the numeric/array/`pattern` keywords and the
  string `format`s strict mode understands, and descriptions that say more than the field name;
- reads the types of scalar `anyOf`/`oneOf` unions; drops the rest (`minLength`, `uri` formats,
  class-level `allOf`/`if`/`then`, ...). Those are enforced after the answer: on a nullable field a value
  that breaks them becomes null (e.g. `""` for a `minLength: 1` string); on a required, non-nullable
  field the request carries what it can (`minLength`/`maxLength` and `format: uri` become a `pattern`) and
  the lexicon check below rejects anything else, so the batch is asked again.

Fields the tool fills itself (provenance, `space_index`/`space_type_index`, file objects) are never asked
of the model. After normalising, every object is checked against the real lexicon class schema as well.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from image_analyzer.errors import AnswerError, SchemaError
from image_analyzer.naming import sanitize_component

if TYPE_CHECKING:
    from jsonschema import FormatChecker
    from jsonschema.exceptions import ValidationError

MANIFEST_NAME = "manifest.json"
RESPONSE_NAME = "property_photo_batch"
DATA_GROUP_KIND = "dataGroup"

ROOM_CLASS = "layout"
APPLIANCE_CLASS = "appliance"
PROPERTY_CLASSES = ("structure", "lot", "utility")
"""Classes written once per property, merged across every category."""
FILE_CLASS = "file"
WRITTEN_CLASSES = (ROOM_CLASS, APPLIANCE_CLASS, *PROPERTY_CLASSES, FILE_CLASS)
"""Classes a property folder holds, each linked from the property through `property_to_<class>`."""
REQUIRED_CLASSES = (*WRITTEN_CLASSES, "property")

PROVENANCE_FIELDS = ("source_http_request", "request_identifier")
TOOL_FIELDS: Mapping[str, tuple[str, ...]] = {"layout": ("space_index", "space_type_index")}
"""Per class, the room numbers the tool fills itself (when the class declares them), see `tool_values`."""
PLACEHOLDER_PROVENANCE: Mapping[str, Any] = {
    "source_http_request": {"method": "GET", "url": "https://example.com/placeholder"},
    "request_identifier": "placeholder",
}

_CID_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw codec, sha2-256, 32-byte digest
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]+")


def compute_cid(data: bytes) -> str:
    """The CIDv1 (raw codec, sha2-256) of `data`, base32 lower case with the multibase `b` prefix."""
    raw = _CID_PREFIX + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def bundled_schema_dir() -> Path:
    """The schema set shipped with the package (wheel: `image_analyzer/_schemas`; checkout: `schemas/`)."""
    packaged = resources.files("image_analyzer") / "_schemas"
    if packaged.is_dir():
        return Path(str(packaged))
    source_tree = Path(__file__).resolve().parents[2] / "schemas"
    if source_tree.is_dir():
        return source_tree
    raise SchemaError("the bundled schema set is missing: reinstall image-analyzer")


def _read_manifest(root: Path) -> dict[str, tuple[str, str]]:
    path = root / MANIFEST_NAME
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise SchemaError(f"schema manifest not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read schema manifest {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"schema manifest {path} is not a JSON object")
    entries: dict[str, tuple[str, str]] = {}
    for name, entry in raw.items():
        if not _SCHEMA_NAME.fullmatch(name) or not isinstance(entry, dict):
            raise SchemaError(f"schema manifest {path}: bad entry {name!r}")
        cid, kind = entry.get("cid"), entry.get("type")
        if not isinstance(cid, str) or not isinstance(kind, str):
            raise SchemaError(f"schema manifest {path}: entry {name!r} needs string 'cid' and 'type'")
        entries[name] = (cid, kind)
    return entries


def _load_entry(root: Path, name: str, cid: str) -> dict[str, Any]:
    """Read one schema file, check its bytes against `cid`, parse it."""
    path = root / f"{name}.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SchemaError(f"schema file missing: {path}") from exc
    except OSError as exc:
        raise SchemaError(f"cannot read schema file {path}: {exc.strerror or exc}") from exc
    actual = compute_cid(data)
    if actual != cid:
        raise SchemaError(f"schema file {path} does not match its CID {cid} (its bytes hash to {actual})")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise SchemaError(f"schema file {path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise SchemaError(f"schema file {path} is not a JSON object")
    return document


def verify_schema_dir(root: Path) -> list[tuple[str, str, bool, str]]:
    """Check every manifest entry of the set in `root`: (name, cid, ok, message) per entry, by name.

    Raises `SchemaError` only when the manifest itself cannot be read.
    """
    results: list[tuple[str, str, bool, str]] = []
    for name, (cid, _kind) in sorted(_read_manifest(root).items()):
        try:
            _load_entry(root, name, cid)
        except SchemaError as exc:
            results.append((name, cid, False, str(exc)))
        else:
            results.append((name, cid, True, "ok"))
    return results


@dataclass
class SetReport:
    """What `verify_schema_set` found: one entry per manifest name, and what a run would trip over."""

    root: Path
    entries: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    """(name, kind, cid, problem or None), by name."""
    unusable: str | None = None
    """Why a run cannot use the set, or None."""
    outside_links: list[str] = field(default_factory=list)
    """CIDs the set links to but does not hold (e.g. fact-sheet slots; data using them is reported)."""

    @property
    def ok(self) -> bool:
        return self.unusable is None and all(problem is None for *_rest, problem in self.entries)

    def lines(self) -> list[str]:
        out = []
        for name, kind, cid, problem in self.entries:
            out.append(f"ok   {name:<24} {kind:<12} {cid}" if problem is None else f"BAD  {problem}")
        good = sum(1 for *_rest, problem in self.entries if problem is None)
        out.append(f"{good} of {len(self.entries)} schema files match their CIDs in {self.root}")
        if self.outside_links:
            count = len(self.outside_links)
            out.append(
                f"note: {count} linked schema(s) not in the set (validate reports data that uses them):"
            )
            out.extend(f"  {cid}" for cid in self.outside_links)
        out.append("usable for runs" if self.unusable is None else f"not usable for runs: {self.unusable}")
        return out


def verify_schema_set(root: Path) -> SetReport:
    """Check every file of the set in `root` (CID, JSON, draft-07 schema) and whether a run can use it.

    Raises `SchemaError` only when the manifest itself cannot be read.
    """
    from jsonschema import Draft7Validator
    from jsonschema.exceptions import SchemaError as InvalidSchema

    report = SetReport(root=root)
    manifest = _read_manifest(root)
    linked: dict[str, None] = {}
    for name, (cid, kind) in sorted(manifest.items()):
        try:
            document = _load_entry(root, name, cid)
            Draft7Validator.check_schema(document)
        except SchemaError as exc:
            report.entries.append((name, kind, cid, str(exc)))
            continue
        except InvalidSchema as exc:
            report.entries.append(
                (name, kind, cid, f"{root / (name + '.json')} is not a valid draft-07 schema: {exc.message}")
            )
            continue
        report.entries.append((name, kind, cid, None))
        linked.update(dict.fromkeys(_linked_cids(document)))
    known = {cid for cid, _kind in manifest.values()}
    report.outside_links = sorted(cid for cid in linked if cid not in known)
    try:
        SchemaSet.load(root)
    except SchemaError as exc:
        report.unusable = str(exc)
    return report


def _linked_cids(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        if isinstance(node.get("cid"), str) and node.get("type") == "string":
            yield node["cid"]
        for value in node.values():
            yield from _linked_cids(value)
    elif isinstance(node, list):
        for value in node:
            yield from _linked_cids(value)


@dataclass(frozen=True, eq=False)
class SchemaSet:
    """A verified schema set. `documents`, `cids` and `kinds` are keyed by manifest name.

    Compared and hashed by identity (the dicts inside are not hashable); compare `fingerprint` instead.
    """

    root: Path
    documents: dict[str, dict[str, Any]] = field(repr=False)
    cids: dict[str, str] = field(repr=False)
    kinds: dict[str, str] = field(repr=False)

    @classmethod
    def load(cls, root: Path | None = None) -> SchemaSet:
        """Load and verify the set in `root` (None: the bundled set). Raises `SchemaError` naming the file.

        `root` may also be the data-group CID of a set `image-analyzer schemas fetch` cached earlier.
        """
        if root is None:
            folder = bundled_schema_dir()
        else:
            from image_analyzer.ipfs import resolve_schema_set

            folder = resolve_schema_set(root)
        manifest = _read_manifest(folder)
        documents = {name: _load_entry(folder, name, cid) for name, (cid, _kind) in manifest.items()}
        schema_set = cls(
            root=folder,
            documents=documents,
            cids={name: cid for name, (cid, _kind) in manifest.items()},
            kinds={name: kind for name, (_cid, kind) in manifest.items()},
        )
        missing = [name for name in REQUIRED_CLASSES if name not in documents]
        if missing:
            raise SchemaError(f"schema set {folder} lacks the class schema(s) {', '.join(missing)}")
        for name in WRITTEN_CLASSES:  # fails early on a set a run could not write
            schema_set.relationship_key(name)
        return schema_set

    @property
    def fingerprint(self) -> str:
        """A short stable hash of the set's name=cid pairs; resume keys on it."""
        text = "\n".join(f"{name}={cid}" for name, cid in sorted(self.cids.items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def data_group_name(self) -> str:
        groups = sorted(name for name, kind in self.kinds.items() if kind == DATA_GROUP_KIND)
        if len(groups) != 1:
            raise SchemaError(f"schema set {self.root} must hold exactly one dataGroup, found {len(groups)}")
        return groups[0]

    @property
    def data_group_cid(self) -> str:
        return self.cids[self.data_group_name]

    @property
    def cid_to_name(self) -> dict[str, str]:
        return {cid: name for name, cid in self.cids.items()}

    def relationship_key(self, class_name: str) -> str:
        """The data-group slot (e.g. `property_has_layout`) whose items link to `property_to_<class>`."""
        relationship = f"property_to_{class_name}"
        cid = self.cids.get(relationship)
        if cid is None:
            raise SchemaError(f"schema set {self.root} lacks the relationship schema {relationship}")
        group = self.documents[self.data_group_name]
        slots = ((group.get("properties") or {}).get("relationships") or {}).get("properties") or {}
        for key, slot in slots.items():
            if isinstance(slot, dict) and (slot.get("items") or {}).get("cid") == cid:
                return str(key)
        raise SchemaError(f"the data group {self.data_group_name} has no slot for {relationship} ({cid})")

    @cached_property
    def _request_parts(self) -> dict[str, dict[str, Any]]:
        """Strict versions of the classes the model fills, minus the fields the tool fills."""
        return {
            name: _strict_class(self.documents[name], name)
            for name in (ROOM_CLASS, APPLIANCE_CLASS, *PROPERTY_CLASSES)
        }

    def request_part(self, class_name: str) -> dict[str, Any]:
        """A fresh copy of the strict request schema of one class."""
        return copy.deepcopy(self._request_parts[class_name])


# ---------------------------------------------------------------------------------------------------------
# Strict response schema


_IGNORED_KEYWORDS = frozenset({"title", "$schema", "$id", "$comment", "examples", "default", "description"})
_STRUCTURAL_KEYWORDS = frozenset({"type", "enum", "properties", "required", "additionalProperties", "items"})
_CARRIED_BY_TYPE: Mapping[str, frozenset[str]] = {
    "string": frozenset({"pattern"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
    "array": frozenset({"minItems", "maxItems"}),
    "object": frozenset(),
    "boolean": frozenset(),
}
STRICT_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
"""String formats OpenAI's strict mode accepts; other formats are checked after the answer."""
_URI_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$"
# Keywords that only ever constrain values of one JSON type: elsewhere they are harmless to drop.
_KEYWORD_TYPES: Mapping[str, str] = {
    "minLength": "string",
    "maxLength": "string",
    "pattern": "string",
    "format": "string",
    "minimum": "number",
    "maximum": "number",
    "exclusiveMinimum": "number",
    "exclusiveMaximum": "number",
    "multipleOf": "number",
    "minItems": "array",
    "maxItems": "array",
    "uniqueItems": "array",
    "contains": "array",
    "minProperties": "object",
    "maxProperties": "object",
    "patternProperties": "object",
    "propertyNames": "object",
    "dependencies": "object",
}
_JSON_TYPES: Mapping[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_UNIONS = ("anyOf", "oneOf")


def _declared_types(node: Mapping[str, Any]) -> list[str]:
    declared = node.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list) and all(isinstance(t, str) for t in declared):
        return list(declared)
    return []


def _types_of(node: Mapping[str, Any], where: str) -> list[str]:
    declared = _declared_types(node)
    if declared:
        return declared
    if isinstance(node.get("enum"), list):
        found = ["null" if v is None else _JSON_TYPES.get(type(v), "string") for v in node["enum"]]
        return list(dict.fromkeys(found))
    hint = " ($ref is not supported)" if "$ref" in node else ""
    raise SchemaError(
        f"schema field {where} declares no type{hint}: it cannot go into a strict response schema"
    )


def _without_unions(node: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """`const` as a one-member enum, and a field given as `anyOf`/`oneOf` branches as one typed node.

    One branch plus `{"type": "null"}` becomes that branch made nullable, constraints and all. With
    several branches only their types (and enums, when every branch has one) are kept: what else they
    say is checked against the real schema after the answer.
    """
    if "const" in node and "enum" not in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    union = next((node[k] for k in _UNIONS if isinstance(node.get(k), list)), None)
    if union is None or "type" in node or "enum" in node:
        return node
    branches = [_without_unions(b, where) for b in union if isinstance(b, Mapping)]
    outer = {k: v for k, v in node.items() if k not in _UNIONS}
    nulls = [b for b in branches if _types_of(b, where) == ["null"]]
    others = [b for b in branches if b not in nulls]
    if len(others) == 1:
        merged = {**others[0], **outer}
        if nulls:
            merged["type"] = [*_types_of(others[0], where), "null"]
            if isinstance(merged.get("enum"), list):
                merged["enum"] = [*merged["enum"], None]
        return merged
    types = list(dict.fromkeys(t for b in branches for t in _types_of(b, where)))
    merged = {**outer, "type": types}
    if all(isinstance(b.get("enum"), list) for b in others):
        members = [m for b in others for m in b["enum"]]
        merged["enum"] = list(dict.fromkeys([*members, *([None] if nulls else [])]))
    return merged


def allows_null(node: Mapping[str, Any]) -> bool:
    """Whether the lexicon accepts null for this field (its type and, if present, its enum allow it)."""
    enum = node.get("enum")
    if "const" in node:
        return node["const"] is None
    if "type" not in node and any(isinstance(node.get(k), list) for k in _UNIONS):
        return any(allows_null(b) for k in _UNIONS for b in node.get(k) or () if isinstance(b, Mapping))
    types = _declared_types(node)
    if not types and isinstance(enum, list):
        return None in enum
    return "null" in types and (not isinstance(enum, list) or None in enum)


def non_nullable_booleans(class_schema: Mapping[str, Any]) -> list[str]:
    """The fields of a class that must be true or false (never null), e.g. `utility.solar_panel_present`."""
    properties = class_schema.get("properties") or {}
    return [key for key, spec in properties.items() if spec.get("type") in ("boolean", ["boolean"])]


def tool_values(class_schema: Mapping[str, Any], class_name: str, index: int) -> dict[str, Any]:
    """The tool-filled room numbers the class declares for the `index`-th room of its type.

    `space_index` is the integer and `space_type_index` (newer sets) the same number as text, so
    `layout_bedroom_2.json` says 2 or "2"; a set that declares the field as a number gets a number.
    """
    properties = class_schema.get("properties") or {}
    values: dict[str, Any] = {}
    for key in TOOL_FIELDS.get(class_name, ()):
        spec = properties.get(key)
        if isinstance(spec, Mapping):
            types = set(_declared_types(spec))
            numeric = bool(types & {"integer", "number"}) and "string" not in types
            values[key] = index if numeric else str(index)
    return values


def _applies_to(keyword: str, base_types: Sequence[str]) -> bool:
    kind = _KEYWORD_TYPES.get(keyword)
    if kind is None:
        return True
    return kind in base_types or (kind == "number" and "integer" in base_types)


# Words that say nothing the field name does not: a description made only of these and of the name's
# own words is left out of the request (it costs tokens on every request and teaches the model nothing).
_FILLER_TEXT = (
    "a an the of to in on at for and or is are be it its this that if any as by with from into "
    "whether indicates indicate refers refer specifies specify describes describe used use made type "
    "types kind field value list system structure property room space observed visible visual overall "
    "present applicable json schema class elephant lexicon"
)
_FILLER_WORDS = frozenset(_FILLER_TEXT.split())


def _same_word(word: str, name_word: str) -> bool:
    if word.rstrip("s") == name_word.rstrip("s"):
        return True
    return len(word) >= 5 and len(name_word) >= 5 and word[:5] == name_word[:5]


_SHORT_ENUM_DESCRIPTION_WORDS = 10
_EXAMPLES = re.compile(r"[(':;]|e\.g\.|such as|\bif\b", re.IGNORECASE)


def concise_description(field_name: str, text: object, *, enum: bool = False) -> str | None:
    """`text`, or None when it tells the model nothing the request does not already say.

    Left out: a description that only restates the field name (`flooring_material_type`: "Refers to
    the type of material used for a floor."), and on an enum field a short one without examples or
    conditions ("Visual state of paint within the room."), because there the listed values say what
    may be answered. Descriptions with units, examples, conditions or what the values mean are kept
    whole. Every description is sent with every request, so each one left out saves tokens each time.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    name_words = re.findall(r"[a-z]+", field_name.lower())
    words = re.findall(r"[a-z]+", text.lower())
    restates = all(w in _FILLER_WORDS or any(_same_word(w, n) for n in name_words) for w in words)
    plain = len(words) <= _SHORT_ENUM_DESCRIPTION_WORDS and not _EXAMPLES.search(text)
    return None if restates or (enum and plain) else " ".join(text.split())


def _strict(node: Mapping[str, Any], *, nullable: bool, where: str) -> dict[str, Any]:
    """One lexicon field as strict mode accepts it. `nullable` forces null in (for optional fields)."""
    node = _without_unions(node, where)
    types = _types_of(node, where)
    nullable = nullable or allows_null(node)
    base = [t for t in types if t != "null"] or ["null"]
    if len(base) > 1 and {"object", "array"} & set(base):
        raise SchemaError(f"schema field {where} mixes {'/'.join(base)}: not expressible in strict mode")
    carried = set().union(*(_CARRIED_BY_TYPE.get(t, frozenset()) for t in base))
    if node.get("format") in STRICT_FORMATS and "string" in base:
        carried.add("format")
    out: dict[str, Any] = {}
    enum = isinstance(node.get("enum"), list) or (
        isinstance(node.get("items"), Mapping) and isinstance(node["items"].get("enum"), list)
    )
    description = concise_description(where.rsplit(".", 1)[-1], node.get("description"), enum=enum)
    if description:
        out["description"] = description
    out.update({k: node[k] for k in sorted(carried) if k in node})
    if base[0] == "object":
        out.update(_strict_object(node, where))
    elif base[0] == "array":
        items = node.get("items")
        # Strict mode needs an item schema; an array of strings is a subset of an unconstrained array.
        out["items"] = (
            _strict(items, nullable=False, where=f"{where}[]")
            if isinstance(items, Mapping)
            else {"type": "string"}
        )
        out["type"] = "array"
    else:
        scalar_types = [*base, "null"] if nullable and base != ["null"] else base
        out["type"] = scalar_types[0] if len(scalar_types) == 1 else scalar_types
        if isinstance(node.get("enum"), list):
            # A null member the field's type refuses would only invite an answer the lexicon rejects.
            members = [m for m in node["enum"] if m is not None]
            out["enum"] = [*members, None] if nullable else members
    kept = _IGNORED_KEYWORDS | _STRUCTURAL_KEYWORDS | carried
    dropped = {k for k in node if k not in kept and _applies_to(k, base)}
    if dropped and not nullable:
        _carry_required_constraints(node, out, dropped)
    if nullable and base[0] in ("object", "array"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _carry_required_constraints(node: Mapping[str, Any], out: dict[str, Any], dropped: set[str]) -> None:
    """A non-nullable field cannot be normalised to null, so carry what a `pattern` can say.

    Anything left over (a second pattern, class-level rules) is enforced by the lexicon check after the
    answer, which rejects the answer so the batch is asked again.
    """
    if out.get("type") != "string" or "pattern" in out:
        return
    if dropped & {"minLength", "maxLength"}:
        low = int(node.get("minLength", 0))
        high = node.get("maxLength")
        out["pattern"] = f"^[\\s\\S]{{{low},{int(high) if high is not None else ''}}}$"
    elif node.get("format") == "uri":
        out["pattern"] = _URI_PATTERN


def _strict_object(node: Mapping[str, Any], where: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
    skip = set(exclude)
    properties = {k: v for k, v in (node.get("properties") or {}).items() if k not in skip}
    required = set(node.get("required") or ())
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            key: _strict(value, nullable=key not in required, where=f"{where}.{key}")
            for key, value in properties.items()
        },
        "required": list(properties),
    }


def _strict_class(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A class schema minus the tool-filled fields. Class-level allOf/if/then are dropped (see module doc)."""
    exclude = (*PROVENANCE_FIELDS, *TOOL_FIELDS.get(name, ()))
    out = _strict_object(document, name, exclude)
    description = concise_description(name, document.get("description"))
    if description:
        out["description"] = description
    return out


def _image_ids_schema(image_ids: Sequence[str], description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "description": description,
        "items": {"type": "string", "enum": list(dict.fromkeys(image_ids))},
        "minItems": 1,
    }


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(properties),
    }


def _with_extra(part: dict[str, Any], extra: dict[str, Any], where: str) -> dict[str, Any]:
    clash = set(part["properties"]) & set(extra)
    if clash:
        raise SchemaError(
            f"class {where} declares {', '.join(sorted(clash))}, which the response schema needs"
        )
    return {**part, "properties": {**part["properties"], **extra}, "required": [*part["required"], *extra]}


def response_schema(schema_set: SchemaSet, image_ids: Sequence[str]) -> dict[str, Any]:
    """The root JSON Schema of one batch answer (see `response_format`)."""
    if not image_ids:
        raise ValueError("a batch needs at least one image id")
    room = _object(
        {
            "room_key": {
                "type": "string",
                "description": "Short id of this physical room, e.g. kitchen or bedroom_2; "
                "distinct rooms get distinct keys.",
            },
            "description": {
                "type": "string",
                "description": "A few words that tell this room apart from similar rooms.",
            },
            "image_ids": _image_ids_schema(image_ids, "The ids of the images that show this room."),
            ROOM_CLASS: schema_set.request_part(ROOM_CLASS),
        }
    )
    appliance = _with_extra(
        schema_set.request_part(APPLIANCE_CLASS),
        {"image_ids": _image_ids_schema(image_ids, "The ids of the images that show this appliance.")},
        APPLIANCE_CLASS,
    )
    properties: dict[str, Any] = {
        "rooms": {"type": "array", "description": "Every physical room or space shown.", "items": room},
        "appliances": {"type": "array", "description": "Every appliance seen.", "items": appliance},
    }
    for name in PROPERTY_CLASSES:
        properties[name] = {"anyOf": [schema_set.request_part(name), {"type": "null"}]}
    return _object(properties)


def response_format(schema_set: SchemaSet, category: str, image_ids: Sequence[str]) -> dict[str, Any]:
    """The `response_format` for one batch of a category.

    The schema depends only on the set and the batch's image ids (not on `category`), so batches that
    use the same ids (e.g. batch-local `img_1..img_n`) send an identical schema the server can cache.
    """
    return {
        "type": "json_schema",
        "json_schema": {
            "name": RESPONSE_NAME,
            "strict": True,
            "schema": response_schema(schema_set, image_ids),
        },
    }


# ---------------------------------------------------------------------------------------------------------
# Answers


class _Drop:
    """Marks a value whose key leaves the object (an optional, non-nullable field answered with null)."""


_DROP = _Drop()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _strip_code_fence(content: str) -> str:
    """Non-strict servers sometimes wrap JSON in a Markdown fence."""
    text = content.strip()
    match = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    return match.group(1) if match else text


def parse_answer(schema_set: SchemaSet, content: str | None, image_ids: Sequence[str]) -> dict[str, Any]:
    """Parse, check and normalise one batch answer. Raises `AnswerError` (kind empty/not_json/schema).

    An answer valid against `response_schema(schema_set, image_ids)` is accepted and yields objects that
    are valid against the lexicon once the tool adds provenance and `space_index`.
    """
    from jsonschema import Draft202012Validator

    if content is None or not content.strip():
        raise AnswerError("the model returned an empty answer", kind="empty")
    try:
        data = json.loads(_strip_code_fence(content), parse_constant=_reject_constant)
    except ValueError as exc:
        detail = (
            f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else exc
        )
        raise AnswerError(f"the answer is not JSON: {detail}", kind="not_json") from exc
    request = response_schema(schema_set, image_ids)
    errors = list(Draft202012Validator(request).iter_errors(data))
    if errors:
        raise AnswerError(
            f"the answer does not match the response schema: {summarise_errors(errors)}", kind="schema"
        )
    answer = _normalise_answer(schema_set, data)
    lexicon_errors = _lexicon_errors(schema_set, answer)
    if lexicon_errors:
        raise AnswerError(f"the answer breaks the lexicon: {summarise_errors(lexicon_errors)}", kind="schema")
    return answer


def _normalise_answer(schema_set: SchemaSet, data: Mapping[str, Any]) -> dict[str, Any]:
    documents = schema_set.documents
    rooms = []
    for position, room in enumerate(data["rooms"]):
        rooms.append(
            {
                "room_key": sanitize_component(room["room_key"], fallback=f"room_{position + 1}"),
                "description": " ".join(room["description"].split())[:200],
                "image_ids": list(dict.fromkeys(room["image_ids"])),
                ROOM_CLASS: normalise_object(documents[ROOM_CLASS], room[ROOM_CLASS]),
            }
        )
    appliances = []
    for item in data["appliances"]:
        fields = {k: v for k, v in item.items() if k != "image_ids"}
        appliances.append(
            {
                **normalise_object(documents[APPLIANCE_CLASS], fields),
                "image_ids": list(dict.fromkeys(item["image_ids"])),
            }
        )
    answer: dict[str, Any] = {"rooms": rooms, "appliances": appliances}
    for name in PROPERTY_CLASSES:
        value = data[name]
        answer[name] = None if value is None else normalise_object(documents[name], value)
    return answer


def normalise_object(class_schema: Mapping[str, Any], obj: Mapping[str, Any]) -> dict[str, Any]:
    """Enforce what strict mode could not carry: bad values on nullable fields become null, and optional
    non-nullable fields answered with null are left out."""
    properties = class_schema.get("properties") or {}
    required = set(class_schema.get("required") or ())
    out: dict[str, Any] = {}
    for key, value in obj.items():
        spec = properties.get(key)
        result = value if spec is None else _normalise_value(spec, value, required=key in required)
        if not isinstance(result, _Drop):
            out[key] = result
    return out


def _normalise_value(spec: Mapping[str, Any], value: Any, *, required: bool) -> Any:
    from jsonschema import Draft7Validator

    if value is None:
        return None if required or allows_null(spec) else _DROP
    if isinstance(value, dict) and isinstance(spec.get("properties"), dict):
        value = normalise_object(spec, value)
    if Draft7Validator(spec, format_checker=format_checker()).is_valid(value):
        return value
    if allows_null(spec):
        return None
    return value if required else _DROP


def _lexicon_errors(schema_set: SchemaSet, answer: Mapping[str, Any]) -> list[ValidationError]:
    """Check each answered object against its real class schema, with stand-ins for tool-filled fields."""
    from jsonschema import Draft7Validator

    checker = format_checker()
    found: list[ValidationError] = []

    def check(name: str, obj: Mapping[str, Any], at: tuple[str | int, ...]) -> None:
        document = schema_set.documents[name]
        declared = document.get("properties") or {}
        filled = {k: v for k, v in PLACEHOLDER_PROVENANCE.items() if k in declared}
        filled.update(tool_values(document, name, 1))
        candidate = {**filled, **{k: v for k, v in obj.items() if k != "image_ids"}}
        for error in Draft7Validator(document, format_checker=checker).iter_errors(candidate):
            error.path.extendleft(reversed(at))
            found.append(error)

    for i, room in enumerate(answer["rooms"]):
        check(ROOM_CLASS, room[ROOM_CLASS], ("rooms", i, ROOM_CLASS))
    for i, item in enumerate(answer["appliances"]):
        check(APPLIANCE_CLASS, item, ("appliances", i))
    for name in PROPERTY_CLASSES:
        if answer[name] is not None:
            check(name, answer[name], (name,))
    return found


# ---------------------------------------------------------------------------------------------------------
# Error text and formats, shared with validate.py


def json_path(parts: Iterable[str | int]) -> str:
    """`$.rooms[0].layout.space_type` style path."""
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _most_useful(error: ValidationError) -> ValidationError:
    """For anyOf [object, null] the interesting failure is inside the object branch."""
    from jsonschema.exceptions import best_match

    if error.validator in ("anyOf", "oneOf") and error.context:
        inner = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        if inner:
            return _most_useful(best_match(inner))
    return error


def describe_error(error: ValidationError) -> str:
    """One short line for a validation error that never quotes a whole document."""
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        expected = " or ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        return f"expected {expected}, got {_json_type(instance)}"
    if kind == "enum":
        return f"{_short(instance)} is not an allowed value"
    if kind == "required":
        return error.message
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
        extra = sorted(set(instance) - known)
        return f"unexpected key(s): {_short(extra, 80)}"
    if kind == "minItems":
        return f"expected at least {value} item(s)"
    if kind == "format":
        return f"{_short(instance)} is not a valid {value}"
    if kind == "pattern":
        return f"{_short(instance)} does not match {value}"
    message = error.message
    return message if len(message) <= 160 else message[:159] + "…"


def summarise_errors(errors: Sequence[ValidationError], limit: int = 3) -> str:
    """The first few errors (by path) as `path: message; ...`, one line."""
    useful = [_most_useful(e) for e in errors]
    useful.sort(key=lambda e: [str(p) for p in e.absolute_path])
    text = "; ".join(f"{json_path(e.absolute_path)}: {describe_error(e)}" for e in useful[:limit])
    more = len(useful) - limit
    return f"{text} (and {more} more)" if more > 0 else text


_IPFS_CID = re.compile(r"(b[a-z2-7]{58,}|Qm[1-9A-HJ-NP-Za-km-z]{44})(/\S*)?")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def is_ipfs_uri(value: object) -> bool:
    """`./relative/path` inside the folder, or `ipfs://<cid>[/path]`."""
    if not isinstance(value, str):
        return True
    if value.startswith("./"):
        parts = value[2:].split("/")
        return all(p not in ("", ".", "..") and not re.search(r"[\s\\]", p) for p in parts)
    return value.startswith("ipfs://") and _IPFS_CID.fullmatch(value[len("ipfs://") :]) is not None


def is_uri(value: object) -> bool:
    """An absolute URI with a scheme (and a host for http/https), without whitespace."""
    if not isinstance(value, str):
        return True
    if not value or re.search(r"\s", value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if not _URI_SCHEME.fullmatch(parts.scheme):
        return False
    return (
        bool(parts.netloc) if parts.scheme.lower() in ("http", "https") else bool(parts.netloc or parts.path)
    )


@lru_cache(maxsize=1)
def format_checker() -> FormatChecker:
    """jsonschema's format checker plus the Elephant formats `ipfs_uri` and a dependency-free `uri`.

    Shared and cached: do not register more checks on it.
    """
    from jsonschema import FormatChecker

    checker = FormatChecker()
    checker.checks("ipfs_uri")(is_ipfs_uri)
    checker.checks("uri")(is_uri)
    return checker
