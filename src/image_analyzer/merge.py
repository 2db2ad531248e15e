"""Combine the batch answers of one property into the files of its Elephant "Photo Metadata" folder. Pure.

- Rooms: one layout per (category, room_key). A room seen in several batches is one layout; two keys are
  two layouts, never merged. Each field takes its first non-null value in batch order. `space_index`
  (and `space_type_index`, when the set has it) numbers the rooms of one space type 1..n, ordered by
  category name, then first appearance.
- Rooms on record: when county data says the property has more bedrooms or bathrooms than the photos
  showed, the missing ones are added (after the photographed rooms of their type) with the recorded
  space type and nothing else known, so the folder has at least the recorded number of each.
- structure, lot, utility: one object each per property, merged across all categories the same way
  (a non-nullable boolean is true if any answer says true); written only when some answer gave one.
- Appliances: deduplicated by (appliance_type, finish) across the property.
- One file object per analysed image, one relationship file per link, and the data-group root file.

File names come only from sanitised ids and enum values, never from the model's free text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from image_analyzer.county import COUNTED_KINDS, room_kind
from image_analyzer.domain import Provenance
from image_analyzer.naming import sanitize_component
from image_analyzer.schemas import (
    APPLIANCE_CLASS,
    FILE_CLASS,
    PROPERTY_CLASSES,
    PROVENANCE_FIELDS,
    ROOM_CLASS,
    TOOL_FIELDS,
    SchemaSet,
    allows_null,
    non_nullable_booleans,
    tool_values,
)

PROPERTY_FILE = "property.json"
_EXTENSIONS = {"jpeg": "jpg", "png": "png"}
_SAFE_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.(?:jpg|png)")
_UNTYPED_SPACE = "unspecified"
_RECORDED_ROOM_BOOLEANS = {"is_exterior": False, "is_finished": True}
"""A bedroom or bathroom on the county record is an interior, finished room; other booleans say false."""
_GENERIC_TYPES = {"bedroom": "Bedroom", "bathroom": "Full Bathroom"}


@dataclass(frozen=True)
class BatchRecord:
    """One answered batch; `answer` is what `schemas.parse_answer` returned."""

    property_id: str
    category: str
    batch_index: int
    image_ids: tuple[str, ...]
    answer: dict[str, Any]


@dataclass(frozen=True)
class OutputImage:
    """An analysed image as written beside its file object; `output_format` is `jpeg` or `png`."""

    category: str
    image_id: str
    file_name: str
    output_format: str


def image_file_name(category: str, image_id: str, output_format: str) -> str:
    """`kitchen_img_1.jpg`: built from sanitised ids only."""
    extension = _EXTENSIONS.get(output_format)
    if extension is None:
        raise ValueError(f"unsupported output format {output_format!r}: expected jpeg or png")
    category_part = sanitize_component(category, fallback="category")
    return f"{category_part}_{sanitize_component(image_id, fallback='image')}.{extension}"


def encode_json(obj: Any) -> bytes:
    """The one serialisation of every output file: stable bytes for the same object."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class _Room:
    layout: dict[str, Any]
    image_ids: tuple[str, ...]
    space_index: int
    stem: str


def _in_order(records: Iterable[BatchRecord]) -> list[BatchRecord]:
    return sorted(records, key=lambda r: (r.category, r.batch_index))


def _first_non_null(objects: Sequence[Mapping[str, Any]], any_true: Iterable[str] = ()) -> dict[str, Any]:
    """Per key, the first non-null value; keys in `any_true` are true if any object says true."""
    merged: dict[str, Any] = {}
    for obj in objects:
        for key, value in obj.items():
            if merged.get(key) is None:
                merged[key] = value
    for key in any_true:
        if key in merged:
            merged[key] = any(obj.get(key) is True for obj in objects)
    return merged


def _photographed_rooms(records: Sequence[BatchRecord]) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """(merged layout, image ids) per (category, sanitised room_key), by (category, first appearance)."""
    layouts: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    images: dict[tuple[str, str], dict[str, None]] = {}
    for record in _in_order(records):
        for position, room in enumerate(record.answer.get("rooms") or ()):
            room_key = sanitize_component(str(room.get("room_key") or ""), fallback=f"room_{position + 1}")
            key = (record.category, room_key)
            layouts.setdefault(key, []).append(room.get(ROOM_CLASS) or {})
            images.setdefault(key, {}).update(dict.fromkeys(room.get("image_ids") or ()))
    return [(_first_non_null(found), tuple(images[key])) for key, found in layouts.items()]


def _rooms(
    records: Sequence[BatchRecord],
    schema_set: SchemaSet | None = None,
    county_rooms: Mapping[str, int] | None = None,
) -> list[_Room]:
    """Photographed rooms, then the recorded rooms the photos did not show, numbered per space type."""
    rooms = _photographed_rooms(records)
    if schema_set is not None and county_rooms:
        shown = [layout for layout, _images in rooms]
        rooms += [(layout, ()) for layout in recorded_rooms(shown, county_rooms, schema_set)]
    counters: dict[str, int] = {}
    numbered = []
    for layout, image_ids in rooms:
        space_type = layout.get("space_type")
        # Numbered per file-name slug (one slug per space type) so names can never collide.
        slug = _UNTYPED_SPACE
        if isinstance(space_type, str):
            slug = sanitize_component(space_type, fallback=_UNTYPED_SPACE)
        counters[slug] = index = counters.get(slug, 0) + 1
        numbered.append(
            _Room(layout=layout, image_ids=image_ids, space_index=index, stem=f"{ROOM_CLASS}_{slug}_{index}")
        )
    return numbered


def recorded_rooms(
    shown: Sequence[Mapping[str, Any]], county_rooms: Mapping[str, int], schema_set: SchemaSet
) -> list[dict[str, Any]]:
    """Layouts for the bedrooms and bathrooms on record that no photographed room accounts for.

    Per kind, the photos account for as many recorded rooms as they show rooms of that kind; the rooms
    added are the recorded ones whose exact space type the photos matched least (3 recorded bedrooms
    `Primary Bedroom, Bedroom, Bedroom` and photos of one `Bedroom` add a `Primary Bedroom` and a
    `Bedroom`).
    """
    shown_types = Counter(t for t in (layout.get("space_type") for layout in shown) if isinstance(t, str))
    allowed = _space_type_members(schema_set)
    added: list[dict[str, Any]] = []
    for kind in COUNTED_KINDS:
        recorded = [t for t, n in county_rooms.items() if room_kind(t) == kind for _ in range(max(n, 0))]
        missing = len(recorded) - sum(n for t, n in shown_types.items() if room_kind(t) == kind)
        if missing <= 0:
            continue
        unmatched = Counter(recorded) - shown_types
        candidates = [t for t in dict.fromkeys(recorded) for _ in range(unmatched[t])]
        for space_type in candidates[:missing]:
            writable = _writable_space_type(space_type, kind, allowed)
            if writable is not None:
                added.append(_recorded_layout(schema_set, writable))
    return added


def _space_type_members(schema_set: SchemaSet) -> list[str] | None:
    """The space types the set allows (None: any string)."""
    spec = (schema_set.documents[ROOM_CLASS].get("properties") or {}).get("space_type") or {}
    enum = spec.get("enum")
    return [m for m in enum if isinstance(m, str)] if isinstance(enum, list) else None


def _writable_space_type(space_type: str, kind: str, allowed: Sequence[str] | None) -> str | None:
    """The recorded type if the set allows it, else the set's generic type of that kind."""
    if allowed is None or space_type in allowed:
        return space_type
    if _GENERIC_TYPES[kind] in allowed:
        return _GENERIC_TYPES[kind]
    return next((t for t in allowed if room_kind(t) == kind), None)


def _recorded_layout(schema_set: SchemaSet, space_type: str) -> dict[str, Any]:
    """A room known only from the record: its space type, null where the set allows null."""
    document = schema_set.documents[ROOM_CLASS]
    properties = document.get("properties") or {}
    required = set(document.get("required") or ())
    skip = {*PROVENANCE_FIELDS, *TOOL_FIELDS.get(ROOM_CLASS, ())}
    layout: dict[str, Any] = {}
    for key, spec in properties.items():
        if key in skip or not isinstance(spec, Mapping):
            continue
        if allows_null(spec):
            layout[key] = None
        elif key in required and spec.get("type") in ("boolean", ["boolean"]):
            layout[key] = _RECORDED_ROOM_BOOLEANS.get(key, False)
    layout["space_type"] = space_type
    return layout


def room_assignments(records: Sequence[BatchRecord]) -> dict[str, list[str]]:
    """Layout file name -> the ids of the images that show that room (all from the room's category)."""
    return {f"{room.stem}.json": list(room.image_ids) for room in _rooms(records)}


def _appliances(records: Sequence[BatchRecord]) -> list[tuple[str, dict[str, Any]]]:
    """(file stem, fields) per distinct (appliance_type, finish); untyped appliances are left out."""
    seen: dict[tuple[str, Any], dict[str, Any]] = {}
    for record in _in_order(records):
        for item in record.answer.get("appliances") or ():
            kind = item.get("appliance_type")
            if not isinstance(kind, str):
                continue
            fields = {k: v for k, v in item.items() if k != "image_ids"}
            seen.setdefault((kind, item.get("finish")), fields)
    counters: dict[str, int] = {}
    result = []
    for (kind, _finish), fields in seen.items():
        slug = sanitize_component(kind, fallback="appliance")
        counters[slug] = index = counters.get(slug, 0) + 1
        result.append((f"{APPLIANCE_CLASS}_{slug}_{index}", fields))
    return result


def _property_objects(records: Sequence[BatchRecord], schema_set: SchemaSet) -> dict[str, dict[str, Any]]:
    merged = {}
    for name in PROPERTY_CLASSES:
        found = [r.answer[name] for r in _in_order(records) if isinstance(r.answer.get(name), dict)]
        if found:
            any_true = non_nullable_booleans(schema_set.documents[name])
            merged[name] = _first_non_null(found, any_true)
    return merged


def _provenance_fields(provenance: Provenance) -> dict[str, Any]:
    # A JSON round trip turns the Mapping (and anything nested) into plain, independent dicts.
    request = json.loads(json.dumps(dict(provenance.source_http_request)))
    return {"source_http_request": request, "request_identifier": provenance.request_identifier}


def _declared(schema_set: SchemaSet, class_name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the class declares (a newer set may drop one), plus null for any other field it
    requires and allows to be null."""
    document = schema_set.documents[class_name]
    properties = document.get("properties") or {}
    out = {k: v for k, v in fields.items() if k in properties}
    for key in document.get("required") or ():
        spec = properties.get(key)
        if key not in out and isinstance(spec, Mapping) and allows_null(spec):
            out[key] = None
    return out


def _file_object(image: OutputImage, provenance: Provenance) -> tuple[str, dict[str, Any]]:
    if not _SAFE_IMAGE_NAME.fullmatch(image.file_name) or image.output_format not in _EXTENSIONS:
        raise ValueError(f"unsafe image file name {image.file_name!r}: build it with image_file_name()")
    stem = f"{FILE_CLASS}_{PurePosixPath(image.file_name).stem}"
    return stem, {
        "name": image.file_name,
        "ipfs_url": f"./{image.file_name}",
        "file_format": image.output_format,
        "document_type": "PropertyImage",
        "original_url": None,
        "source_http_request": None,
        "request_identifier": provenance.request_identifier,
    }


def relationship_key(schema_set: SchemaSet, class_name: str) -> str:
    """The data-group key (e.g. `property_has_layout`) whose items are `property_to_<class>` links."""
    return schema_set.relationship_key(class_name)


def _class_objects(
    records: Sequence[BatchRecord],
    images: Sequence[OutputImage],
    provenance: Provenance,
    schema_set: SchemaSet,
    county_rooms: Mapping[str, int] | None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Class name -> file stem -> object, provenance and room numbers included where the class has them."""
    origin = _provenance_fields(provenance)
    layout_document = schema_set.documents[ROOM_CLASS]
    objects: dict[str, dict[str, dict[str, Any]]] = {
        ROOM_CLASS: {
            r.stem: _declared(
                schema_set,
                ROOM_CLASS,
                {**r.layout, **tool_values(layout_document, ROOM_CLASS, r.space_index), **origin},
            )
            for r in _rooms(records, schema_set, county_rooms)
        },
    }
    for name, fields in _property_objects(records, schema_set).items():
        objects[name] = {name: _declared(schema_set, name, {**fields, **origin})}
    objects[APPLIANCE_CLASS] = {
        stem: _declared(schema_set, APPLIANCE_CLASS, {**fields, **origin})
        for stem, fields in _appliances(records)
    }
    files: dict[str, dict[str, Any]] = {}
    for image in images:
        stem, obj = _file_object(image, provenance)
        if stem in files:
            raise ValueError(f"two images would both be written as {image.file_name}")
        files[stem] = _declared(schema_set, FILE_CLASS, obj)
    objects[FILE_CLASS] = files
    return objects


def _relationship(target: str) -> dict[str, Any]:
    return {"from": {"/": f"./{PROPERTY_FILE}"}, "to": {"/": f"./{target}"}}


def build_property_files(
    records: Sequence[BatchRecord],
    images: Sequence[OutputImage],
    provenance: Provenance,
    schema_set: SchemaSet,
    *,
    county_rooms: Mapping[str, int] | None = None,
) -> dict[str, bytes]:
    """Every JSON file of the property folder, file name -> bytes, sorted by name.

    `county_rooms` (space type -> count on record, see `county.py`) adds the bedrooms and bathrooms the
    photos did not show. A property whose answers give no room still gets its files: validation then
    reports the missing `property_has_layout`.
    """
    output: dict[str, Any] = {}
    relationships: dict[str, list[dict[str, str]]] = {}
    classes = _class_objects(records, images, provenance, schema_set, county_rooms)
    for class_name, objects in classes.items():
        if not objects:
            continue
        links = []
        for stem, obj in objects.items():
            relationship = f"relationship_property_{stem}"
            output[f"{stem}.json"] = obj
            output[f"{relationship}.json"] = _relationship(f"{stem}.json")
            links.append({"/": f"./{relationship}.json"})
        relationships[relationship_key(schema_set, class_name)] = sorted(links, key=lambda link: link["/"])
    group = schema_set.documents[schema_set.data_group_name]
    output[f"{schema_set.data_group_cid}.json"] = {
        "label": str(group.get("title") or "Photo Metadata"),
        "relationships": relationships,
    }
    return {name: encode_json(output[name]) for name in sorted(output)}
