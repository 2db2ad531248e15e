"""Rooms across batches of one category.

Batches of a category are answered concurrently, each naming its rooms with its own `room_key`. When a
category needed more than one batch, one cheap text-only request shows the model every room found (with
its space type and short description) and asks which of them are the same physical room. The answer
only ever *joins* rooms of the same space type; anything it leaves out stays a room of its own, so
distinct rooms are never merged and one room is never written twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from image_analyzer.errors import AnswerError

CONSOLIDATION_VERSION = "1"

SYSTEM_PROMPT = (
    "You group room descriptions from real-estate photos. Each entry is a room seen in one batch of photos "
    "from the same folder. Put entries that show the SAME physical room in one group. Entries of different "
    "rooms must be in different groups. Every entry id appears in exactly one group."
)


@dataclass(frozen=True, slots=True)
class RoomEntry:
    ref: str
    """`b<batch_index>:<room_key>`: unique across the category."""
    space_type: str | None
    description: str
    images: int


def room_entries(answers: Mapping[int, Mapping[str, Any]]) -> list[RoomEntry]:
    entries: list[RoomEntry] = []
    for batch_index in sorted(answers):
        for room in answers[batch_index].get("rooms") or []:
            layout = room.get("layout") or {}
            entries.append(
                RoomEntry(
                    ref=f"b{batch_index}:{room.get('room_key')}",
                    space_type=layout.get("space_type"),
                    description=str(room.get("description") or "")[:300],
                    images=len(room.get("image_ids") or []),
                )
            )
    return entries


def needs_consolidation(answers: Mapping[int, Mapping[str, Any]]) -> bool:
    batches_with_rooms = [i for i, a in answers.items() if a.get("rooms")]
    return len(batches_with_rooms) > 1


def build_request_parts(category: str, entries: Sequence[RoomEntry]) -> tuple[str, str, dict[str, Any]]:
    listing = "\n".join(
        f"- {e.ref}: {e.space_type or 'unknown type'}; {e.images} photo(s); {e.description}" for e in entries
    )
    user = f"Folder: '{category}'. Rooms found per batch:\n{listing}\nGroup the entries by physical room."
    refs = [e.ref for e in entries]
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["refs"],
                    "properties": {"refs": {"type": "array", "minItems": 1, "items": {"enum": refs}}},
                },
            }
        },
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "room_groups", "strict": True, "schema": schema},
    }
    return SYSTEM_PROMPT, user, response_format


def parse_groups(content: str | None, entries: Sequence[RoomEntry]) -> list[list[str]]:
    """Validate a grouping answer and make it safe: known refs only, each once, one space type per group."""
    if not content:
        raise AnswerError("empty consolidation answer", kind="empty")
    try:
        data = json.loads(content)
        raw_groups = data["groups"]
        if not isinstance(raw_groups, list):
            raise TypeError("groups is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise AnswerError(f"consolidation answer is not the expected JSON: {exc}", kind="not_json") from exc
    by_ref = {e.ref: e for e in entries}
    seen: set[str] = set()
    groups: list[list[str]] = []
    for group in raw_groups:
        refs = [r for r in (group.get("refs") or []) if r in by_ref and r not in seen]
        seen.update(refs)
        groups.extend(_split_by_space_type(refs, by_ref))
    groups.extend([e.ref] for e in entries if e.ref not in seen)
    return groups


def _split_by_space_type(refs: Sequence[str], by_ref: Mapping[str, RoomEntry]) -> list[list[str]]:
    split: dict[str | None, list[str]] = {}
    for ref in refs:
        split.setdefault(by_ref[ref].space_type, []).append(ref)
    return [group for group in split.values() if group]


def identity_groups(entries: Sequence[RoomEntry]) -> list[list[str]]:
    """No consolidation: every room found stays its own room."""
    return [[e.ref] for e in entries]


def apply_groups(
    answers: Mapping[int, dict[str, Any]], groups: Sequence[Sequence[str]]
) -> dict[int, dict[str, Any]]:
    """Rewrite every room's key to its group's key so rooms joined across batches merge into one layout."""
    group_of = {ref: f"room{i + 1}" for i, group in enumerate(groups) for ref in group}
    rewritten: dict[int, dict[str, Any]] = {}
    for batch_index, answer in answers.items():
        rooms = []
        for room in answer.get("rooms") or []:
            ref = f"b{batch_index}:{room.get('room_key')}"
            rooms.append({**room, "room_key": group_of.get(ref, ref)})
        rewritten[batch_index] = {**answer, "rooms": rooms}
    return rewritten
