"""The text sent with each batch of photos: a fixed system prompt and a short per-batch user text.

The user text names the folder and the image ids in order, and, when county data is given, the rooms on
record (`Rooms on record for this property: 3 bedrooms, 2 bathrooms (Bedroom: 2, ...)`), so photos are
assigned to those rooms with their recorded space types. Rooms seen in several batches of a category are
joined afterwards by `consolidate.py`.

Output is deterministic (same inputs, same text) and compact: every token is paid for on every request.
Bump `PROMPT_VERSION` whenever the request changes (text or response schema), because resume treats
answers to an older prompt as stale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from image_analyzer.county import kind_totals
from image_analyzer.schemas import PROPERTY_CLASSES, SchemaSet, non_nullable_booleans

PROMPT_VERSION = "3"
"""2: county rooms stated with their totals; response schema without descriptions that restate names."""

_DESCRIPTION_LIMIT = 120

_SYSTEM_PROMPT = """\
You analyse real-estate photos of one property and answer with JSON that matches the given schema.
- rooms: assign every image to the physical room or space it shows. Give each room a short room_key \
(lowercase, e.g. kitchen, bedroom_2) and a description of a few words that tells it apart from similar rooms.
- Different physical rooms get different keys, even when they have the same type. One room may span \
several images.
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
        parts.append(county_rooms_text(county_rooms))
    return system_prompt(schema_set), "\n".join(parts)


def county_rooms_text(county_rooms: Mapping[str, int]) -> str:
    """`Rooms on record for this property: 3 bedrooms, 2 bathrooms (Bedroom: 2, Full Bathroom: 2, ...)`."""
    counts = ", ".join(f"{_one_line(kind, 60)}: {n}" for kind, n in sorted(county_rooms.items()) if n > 0)
    totals = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in kind_totals(county_rooms).items())
    summary = f"{totals} ({counts})" if totals else counts
    return (
        f"Rooms on record for this property: {summary}. A bedroom or bathroom photo shows one of these "
        "rooms: use the recorded space types where they fit, one room_key per distinct room."
    )
