"""Build answers from the response schema itself, so tests follow whatever the schema set declares.

`generate(schema, rng, mode)` walks a strict response schema and picks a value for every node:
- mode "minimal": the first non-null choice everywhere, "" for strings, the smallest numbers;
- mode "nulls": null wherever null is allowed;
- mode "random": random choices (enum members, null or not, short strings, small numbers).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from image_analyzer.schemas import SchemaSet, parse_answer, response_schema


def _types(node: Mapping[str, Any]) -> list[str]:
    declared = node.get("type")
    if isinstance(declared, str):
        return [declared]
    return list(declared or [])


def _number(node: Mapping[str, Any], rng: random.Random, mode: str, integer: bool) -> int | float:
    low = node.get("minimum", 0)
    value = low if mode != "random" else low + rng.randint(0, 50)
    return int(value) if integer else float(value)


def generate(node: Mapping[str, Any], rng: random.Random, mode: str = "minimal") -> Any:
    if "anyOf" in node:
        options = list(node["anyOf"])
        nullable = [o for o in options if o.get("type") == "null"]
        others = [o for o in options if o.get("type") != "null"]
        if mode == "nulls" and nullable:
            return None
        if mode == "random" and nullable and rng.random() < 0.3:
            return None
        return generate(others[0], rng, mode)
    types = _types(node)
    if "null" in types and (mode == "nulls" or (mode == "random" and rng.random() < 0.3)):
        return None
    if "enum" in node:
        choices = [v for v in node["enum"] if v is not None] or [None]
        return choices[0] if mode != "random" else rng.choice(choices)
    kind = next((t for t in types if t != "null"), "null")
    if kind == "object":
        return {key: generate(value, rng, mode) for key, value in node["properties"].items()}
    if kind == "array":
        # One item at least, so the nested schemas get exercised too.
        count = max(node.get("minItems", 0), 1) + (rng.randint(0, 2) if mode == "random" else 0)
        return [generate(node["items"], rng, mode) for _ in range(count)]
    if kind == "string":
        return "" if mode != "random" else rng.choice(["", "x", "a few words"])
    if kind in ("integer", "number"):
        return _number(node, rng, mode, integer=kind == "integer")
    if kind == "boolean":
        return False if mode != "random" else rng.random() < 0.5
    return None


def generated_answer(
    schema_set: SchemaSet, image_ids: Sequence[str], mode: str, seed: int = 0
) -> dict[str, Any]:
    return dict(generate(response_schema(schema_set, image_ids), random.Random(seed), mode))


def blank_layout(schema_set: SchemaSet) -> dict[str, Any]:
    """A layout as the model would send it with nothing visible."""
    room = response_schema(schema_set, ["x"])["properties"]["rooms"]["items"]
    return dict(generate(room["properties"]["layout"], random.Random(0), "nulls"))


def blank_part(schema_set: SchemaSet, name: str) -> dict[str, Any]:
    """A structure/lot/utility/appliance object with every nullable field null."""
    return dict(generate(schema_set.request_part(name), random.Random(0), "nulls"))


def room(
    key: str, image_ids: Sequence[str], layout: dict[str, Any], description: str = "a room"
) -> dict[str, Any]:
    return {"room_key": key, "description": description, "image_ids": list(image_ids), "layout": layout}


def answer(
    schema_set: SchemaSet,
    image_ids: Sequence[str],
    rooms: Sequence[dict[str, Any]] = (),
    appliances: Sequence[dict[str, Any]] = (),
    **parts: dict[str, Any] | None,
) -> dict[str, Any]:
    """A raw answer run through `parse_answer`, as the pipeline would store it."""
    raw = {
        "rooms": list(rooms),
        "appliances": list(appliances),
        "structure": None,
        "lot": None,
        "utility": None,
    }
    raw.update(parts)
    return parse_answer(schema_set, json.dumps(raw), image_ids)
