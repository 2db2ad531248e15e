"""Combine the batch answers of one property into the files of its Elephant "Photo Metadata" folder. Pure.

- Rooms: one layout per (category, room_key). A room seen in several batches is one layout; two keys are
  two layouts, never merged. Each field takes its first non-null value in batch order. `space_index`
  numbers the rooms of one space type 1..n, ordered by category name, then first appearance.
- structure, lot, utility: one object each per property, merged across all categories the same way
  (a non-nullable boolean is true if any answer says true); written only when some answer gave one.
- Appliances: deduplicated by (appliance_type, finish) across the property.
- One file object per analysed image, one relationship file per link, and the data-group root file.

File names come only from sanitised ids and enum values, never from the model's free text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from image_analyzer.domain import Provenance
from image_analyzer.errors import SchemaError
from image_analyzer.naming import sanitize_component
from image_analyzer.schemas import (
    APPLIANCE_CLASS,
    PROPERTY_CLASSES,
    ROOM_CLASS,
    SchemaSet,
    non_nullable_booleans,
)

PROPERTY_FILE = "property.json"
FILE_CLASS = "file"
_EXTENSIONS = {"jpeg": "jpg", "png": "png"}
_SAFE_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.(?:jpg|png)")
_UNTYPED_SPACE = "unspecified"


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


def _rooms(records: Sequence[BatchRecord]) -> list[_Room]:
    """Rooms keyed by (category, sanitised room_key), in (category, first appearance) order."""
    layouts: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    images: dict[tuple[str, str], dict[str, None]] = {}
    for record in _in_order(records):
        for position, room in enumerate(record.answer.get("rooms") or ()):
            room_key = sanitize_component(str(room.get("room_key") or ""), fallback=f"room_{position + 1}")
            key = (record.category, room_key)
            layouts.setdefault(key, []).append(room.get(ROOM_CLASS) or {})
            images.setdefault(key, {}).update(dict.fromkeys(room.get("image_ids") or ()))
    counters: dict[str, int] = {}
    rooms = []
    for (category, room_key), found in layouts.items():
        layout = _first_non_null(found)
        space_type = layout.get("space_type")
        # Numbered per file-name slug (one slug per space type) so names can never collide.
        slug = _UNTYPED_SPACE
        if isinstance(space_type, str):
            slug = sanitize_component(space_type, fallback=_UNTYPED_SPACE)
        counters[slug] = index = counters.get(slug, 0) + 1
        rooms.append(
            _Room(
                layout=layout,
                image_ids=tuple(images[(category, room_key)]),
                space_index=index,
                stem=f"{ROOM_CLASS}_{slug}_{index}",
            )
        )
    return rooms


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
    relationship = f"property_to_{class_name}"
    cid = schema_set.cids.get(relationship)
    group = schema_set.documents[schema_set.data_group_name]
    slots = ((group.get("properties") or {}).get("relationships") or {}).get("properties") or {}
    for key, slot in slots.items():
        if cid is not None and isinstance(slot, dict) and (slot.get("items") or {}).get("cid") == cid:
            return str(key)
    raise SchemaError(f"the data group {schema_set.data_group_name} has no slot for {relationship}")


def _class_objects(
    records: Sequence[BatchRecord],
    images: Sequence[OutputImage],
    provenance: Provenance,
    schema_set: SchemaSet,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Class name -> file stem -> object, provenance included."""
    origin = _provenance_fields(provenance)
    objects: dict[str, dict[str, dict[str, Any]]] = {
        ROOM_CLASS: {r.stem: {**r.layout, "space_index": r.space_index, **origin} for r in _rooms(records)},
    }
    for name, fields in _property_objects(records, schema_set).items():
        objects[name] = {name: {**fields, **origin}}
    objects[APPLIANCE_CLASS] = {stem: {**fields, **origin} for stem, fields in _appliances(records)}
    files: dict[str, dict[str, Any]] = {}
    for image in images:
        stem, obj = _file_object(image, provenance)
        if stem in files:
            raise ValueError(f"two images would both be written as {image.file_name}")
        files[stem] = obj
    objects[FILE_CLASS] = files
    return objects


def _relationship(target: str) -> dict[str, Any]:
    return {"from": {"/": f"./{PROPERTY_FILE}"}, "to": {"/": f"./{target}"}}


def build_property_files(
    records: Sequence[BatchRecord],
    images: Sequence[OutputImage],
    provenance: Provenance,
    schema_set: SchemaSet,
) -> dict[str, bytes]:
    """Every JSON file of the property folder, file name -> bytes, sorted by name.

    A property whose answers give no room still gets its files: validation then reports the missing
    `property_has_layout`.
    """
    output: dict[str, Any] = {}
    relationships: dict[str, list[dict[str, str]]] = {}
    for class_name, objects in _class_objects(records, images, provenance, schema_set).items():
        if not objects:
            continue
        links = []
        for stem, obj in objects.items():
            relationship = f"relationship_property_{stem}"
            output[f"{stem}.json"] = obj
            output[f"{relationship}.json"] = {
                "from": {"/": f"./{PROPERTY_FILE}"},
                "to": {"/": f"./{stem}.json"},
            }
            links.append({"/": f"./{relationship}.json"})
        relationships[relationship_key(schema_set, class_name)] = sorted(links, key=lambda link: link["/"])
    group = schema_set.documents[schema_set.data_group_name]
    output[f"{schema_set.data_group_cid}.json"] = {
        "label": str(group.get("title") or "Photo Metadata"),
        "relationships": relationships,
    }
    return {name: encode_json(output[name]) for name in sorted(output)}
