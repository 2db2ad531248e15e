"""The pinned Elephant schema set: load and verify it, derive the strict response schema, check answers.

A schema set is a folder of lexicon JSON Schemas (draft-07) plus `manifest.json` (name -> cid, kind). Each
file's bytes must hash to its CID, so a set is verified before anything uses it.

The response schema sent to the model is derived from whatever the set's class schemas declare, so a newer
set with new fields or enum values flows through without code changes. OpenAI's strict mode accepts only a
subset of JSON Schema, so the derivation:

- lists every property in `required` and sets `additionalProperties: false` on every object;
- turns optional lexicon fields into nullable ones (the key is dropped again when the answer says null);
- keeps `type`, `enum`, `description` and the numeric/array/pattern keywords strict mode understands;
- drops the rest (`minLength`, `format`, class-level `allOf`/`if`/`then`, ...). On nullable fields a value
  that breaks a dropped keyword is normalised to null after parsing (e.g. `""` for a `minLength: 1`
  string); a required, non-nullable field whose constraint cannot be carried makes the set unusable
  (`SchemaError`), because then a schema-valid answer could produce a lexicon-invalid object.

Fields the tool fills itself (provenance, `space_index`, file objects) are never asked of the model. After
normalising, every object is checked against the real lexicon class schema as well.
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
REQUIRED_CLASSES = (ROOM_CLASS, APPLIANCE_CLASS, *PROPERTY_CLASSES, "file", "property")

PROVENANCE_FIELDS = ("source_http_request", "request_identifier")
TOOL_FIELDS: Mapping[str, Mapping[str, Any]] = {"layout": {"space_index": 1}}
"""Per class, fields the tool fills itself, with a lexicon-valid stand-in used when checking answers."""
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
        """Load and verify the set in `root` (None: the bundled set). Raises `SchemaError` naming the file."""
        folder = bundled_schema_dir() if root is None else root
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
        schema_set.data_group_name  # noqa: B018  (fails early on a set without exactly one data group)
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


def _types_of(node: Mapping[str, Any], where: str) -> list[str]:
    declared = node.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list) and declared and all(isinstance(t, str) for t in declared):
        return list(declared)
    if isinstance(node.get("enum"), list):
        found = ["null" if v is None else _JSON_TYPES.get(type(v), "string") for v in node["enum"]]
        return list(dict.fromkeys(found))
    raise SchemaError(f"schema field {where} declares no type: it cannot go into a strict response schema")


def allows_null(node: Mapping[str, Any]) -> bool:
    """Whether the lexicon accepts null for this field (its type and, if present, its enum allow it)."""
    declared = node.get("type")
    types = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    enum = node.get("enum")
    return "null" in types and (not isinstance(enum, list) or None in enum)


def non_nullable_booleans(class_schema: Mapping[str, Any]) -> list[str]:
    """The fields of a class that must be true or false (never null), e.g. `utility.solar_panel_present`."""
    properties = class_schema.get("properties") or {}
    return [key for key, spec in properties.items() if spec.get("type") in ("boolean", ["boolean"])]


def _applies_to(keyword: str, base_types: Sequence[str]) -> bool:
    kind = _KEYWORD_TYPES.get(keyword)
    if kind is None:
        return True
    return kind in base_types or (kind == "number" and "integer" in base_types)


def _strict(node: Mapping[str, Any], *, nullable: bool, where: str) -> dict[str, Any]:
    """One lexicon field as strict mode accepts it. `nullable` forces null in (for optional fields)."""
    types = _types_of(node, where)
    nullable = nullable or allows_null(node)
    base = [t for t in types if t != "null"] or ["null"]
    if len(base) > 1 and {"object", "array"} & set(base):
        raise SchemaError(f"schema field {where} mixes {'/'.join(base)}: not expressible in strict mode")
    carried = frozenset().union(*(_CARRIED_BY_TYPE.get(t, frozenset()) for t in base))
    out: dict[str, Any] = {k: node[k] for k in ("description",) if isinstance(node.get(k), str)}
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
            enum = list(node["enum"])
            out["enum"] = [*enum, None] if nullable and None not in enum else enum
    kept = _IGNORED_KEYWORDS | _STRUCTURAL_KEYWORDS | carried
    dropped = {k for k in node if k not in kept and _applies_to(k, base)}
    if dropped and not nullable:
        _carry_required_constraints(node, out, dropped, where)
    if nullable and base[0] in ("object", "array"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _carry_required_constraints(
    node: Mapping[str, Any], out: dict[str, Any], dropped: set[str], where: str
) -> None:
    """A non-nullable field cannot be normalised to null, so its constraints must be in the request."""
    if dropped == {"minLength"} and out.get("type") == "string" and "pattern" not in out:
        out["pattern"] = f"^[\\s\\S]{{{int(node['minLength'])},}}$"
        return
    raise SchemaError(
        f"schema field {where} is required and not nullable, but its {', '.join(sorted(dropped))} "
        "cannot be expressed in a strict response schema"
    )


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
    exclude = (*PROVENANCE_FIELDS, *TOOL_FIELDS.get(name, {}))
    out = _strict_object(document, name, exclude)
    if isinstance(document.get("description"), str):
        out["description"] = document["description"]
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
                "description": "Short stable id of this physical room, e.g. kitchen or bedroom_2. "
                "Reuse a known room's key when the photo shows that same room.",
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
        filled.update(TOOL_FIELDS.get(name, {}))
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
