"""The text sent with each batch of photos: a fixed system prompt and a short per-batch user text.

Batches of one category are sent in order, and each carries the rooms found so far in that category, so
the model can reuse their `room_key` when a later photo shows the same room. Output is deterministic (same
inputs, same text) and compact: every token is paid for on every request. Bump `PROMPT_VERSION` whenever the
text changes, because resume treats answers to an older prompt as stale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from image_analyzer.naming import sanitize_component
from image_analyzer.schemas import PROPERTY_CLASSES, ROOM_CLASS, SchemaSet, non_nullable_booleans

PROMPT_VERSION = "1"

_DESCRIPTION_LIMIT = 120

_SYSTEM_PROMPT = """\
You analyse real-estate photos of one property and answer with JSON that matches the given schema.
- rooms: assign every image to the physical room or space it shows. Give each room a short room_key \
(lowercase, e.g. kitchen, bedroom_2) and a description of a few words that tells it apart from similar rooms.
- If a photo shows a room from the known rooms list, reuse that room_key exactly. Different physical rooms \
get different keys, even when they have the same type. One room may span several images.
- layout: describe each room from what the photos show; use null for anything not visible.
- appliances: list each appliance seen, with the ids of the images that show it.
- structure, lot, utility: fill only what is visible in these photos, null otherwise; the whole object \
is null when nothing of it is visible.{booleans}
- Never guess sizes, ages or counts you cannot see."""


@dataclass(frozen=True)
class KnownRoom:
    """A room found in an earlier batch of the same category."""

    room_key: str
    space_type: str | None
    description: str


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _required_booleans(schema_set: SchemaSet) -> list[str]:
    """Non-nullable booleans of the per-property classes: the model must say false when it cannot see."""
    found: list[str] = []
    for name in PROPERTY_CLASSES:
        found.extend(f"{name}.{key}" for key in non_nullable_booleans(schema_set.documents[name]))
    return found


def system_prompt(schema_set: SchemaSet) -> str:
    booleans = _required_booleans(schema_set)
    note = f"\n- {', '.join(booleans)}: true only when visible, else false." if booleans else ""
    return _SYSTEM_PROMPT.format(booleans=note)


def _known_rooms_text(known_rooms: Sequence[KnownRoom]) -> str:
    lines = ["Known rooms (reuse the room_key when a photo shows the same room):"]
    for room in known_rooms:
        kind = f" ({room.space_type})" if room.space_type else ""
        description = _one_line(room.description, _DESCRIPTION_LIMIT)
        lines.append(f"- {room.room_key}{kind}: {description}" if description else f"- {room.room_key}{kind}")
    return "\n".join(lines)


def build_prompt(
    schema_set: SchemaSet,
    category: str,
    image_ids: Sequence[str],
    known_rooms: Sequence[KnownRoom],
    county_rooms: Mapping[str, int] | None = None,
) -> tuple[str, str]:
    """(system prompt, user text) for one batch. The images follow the user text in `image_ids` order."""
    parts = [
        f"These photos are from the {_one_line(category, 80)!r} folder.",
        f"Images in order: {', '.join(image_ids)}. The images follow in the same order.",
    ]
    if known_rooms:
        parts.append(_known_rooms_text(known_rooms))
    if county_rooms:
        counts = ", ".join(f"{_one_line(kind, 60)}: {n}" for kind, n in sorted(county_rooms.items()))
        parts.append(f"Rooms on record for this property: {counts}.")
    return system_prompt(schema_set), "\n".join(parts)


def known_rooms_from(answers: Sequence[Mapping[str, Any]]) -> list[KnownRoom]:
    """The rooms found so far in earlier batches of a category, in order of first appearance.

    A room seen in several batches keeps its first non-null space type and first non-empty description.
    """
    rooms: dict[str, dict[str, Any]] = {}
    for answer in answers:
        for room in answer.get("rooms") or ():
            key = sanitize_component(str(room.get("room_key") or ""), fallback="room")
            known = rooms.setdefault(key, {"space_type": None, "description": ""})
            layout = room.get(ROOM_CLASS) or {}
            if known["space_type"] is None and isinstance(layout.get("space_type"), str):
                known["space_type"] = layout["space_type"]
            if not known["description"] and isinstance(room.get("description"), str):
                known["description"] = _one_line(room["description"], _DESCRIPTION_LIMIT)
    return [KnownRoom(key, value["space_type"], value["description"]) for key, value in rooms.items()]
