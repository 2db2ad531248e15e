from __future__ import annotations

import json

import pytest

from image_analyzer.consolidate import (
    apply_groups,
    build_request_parts,
    needs_consolidation,
    parse_groups,
    room_entries,
)
from image_analyzer.errors import AnswerError


def answer(*rooms: tuple[str, str]) -> dict[str, object]:
    return {
        "rooms": [
            {
                "room_key": key,
                "description": f"{kind} room",
                "image_ids": ["x"],
                "layout": {"space_type": kind},
            }
            for key, kind in rooms
        ]
    }


ANSWERS = {0: answer(("a", "Bedroom"), ("b", "Bedroom")), 1: answer(("a", "Bedroom"), ("k", "Kitchen"))}


def test_only_categories_with_rooms_in_several_batches_need_consolidation() -> None:
    assert needs_consolidation(ANSWERS)
    assert not needs_consolidation({0: ANSWERS[0]})
    assert not needs_consolidation({0: ANSWERS[0], 1: {"rooms": []}})


def test_request_lists_every_room_and_restricts_refs_to_them() -> None:
    entries = room_entries(ANSWERS)
    _system, user, fmt = build_request_parts("bedroom", entries)
    refs = fmt["json_schema"]["schema"]["properties"]["groups"]["items"]["properties"]["refs"]["items"][
        "enum"
    ]
    assert refs == ["b0:a", "b0:b", "b1:a", "b1:k"]
    assert all(ref in user for ref in refs)
    assert fmt["json_schema"]["strict"] is True


def test_groups_join_only_rooms_of_one_type_and_keep_the_rest_apart() -> None:
    entries = room_entries(ANSWERS)
    content = json.dumps({"groups": [{"refs": ["b0:a", "b1:a", "b1:k"]}, {"refs": ["bogus"]}]})
    groups = parse_groups(content, entries)
    assert ["b0:a", "b1:a"] in groups
    assert ["b1:k"] in groups
    assert ["b0:b"] in groups
    assert sum(len(g) for g in groups) == 4


def test_a_ref_claimed_twice_stays_in_its_first_group() -> None:
    entries = room_entries(ANSWERS)
    content = json.dumps({"groups": [{"refs": ["b0:a"]}, {"refs": ["b0:a", "b1:a"]}]})
    groups = parse_groups(content, entries)
    assert groups.count(["b0:a"]) == 1
    assert ["b1:a"] in groups


@pytest.mark.parametrize("content", [None, "", "not json", '{"groups": 3}'])
def test_unusable_grouping_answers_are_rejected(content: str | None) -> None:
    with pytest.raises(AnswerError):
        parse_groups(content, room_entries(ANSWERS))


def test_apply_groups_gives_joined_rooms_one_key_and_separate_rooms_distinct_keys() -> None:
    groups = [["b0:a", "b1:a"], ["b0:b"], ["b1:k"]]
    rewritten = apply_groups(ANSWERS, groups)
    keys0 = [r["room_key"] for r in rewritten[0]["rooms"]]
    keys1 = [r["room_key"] for r in rewritten[1]["rooms"]]
    assert keys0[0] == keys1[0]
    assert len({keys0[0], keys0[1], keys1[1]}) == 3
