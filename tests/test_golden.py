"""Golden output: a fixed fake-model script for one property gives byte-identical, valid output.

The fake model answers every batch from the request itself (category, the photo named in each image's
label, response schema), so the same photos always give the same answers; the room-consolidation request
is answered by grouping rooms with the same space type and description. The property folder's JSON files
are compared byte for byte with `tests/golden/pinned/`. To accept an intended change of the output, rerun
with `UPDATE_GOLDEN=1` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.fakeopenai import FakeOpenAIServer, generate_answer
from tests.helpers import invoke, make_tree
from tests.schema_sets import NEW_SPACE_TYPE, make_newer_set

GOLDEN = Path(__file__).resolve().parent / "golden" / "pinned"
PROPERTY = "30434108090030050"
KEY = "sk-test-golden"
PHOTOS = {"bathroom": 2, "bedroom": 5, "exterior": 2, "kitchen": 5}
"""With --batch-size 3: bedroom and kitchen need two batches each, so their rooms are consolidated."""

SEED = (
    "parcel_id,Address,method,headers,url,multiValueQueryString,body,json,source_identifier,County\n"
    f"{PROPERTY},1 Golden Way,GET,,https://pbcpao.gov/Property/Details,,,,{PROPERTY},Palm Beach\n"
)

# category -> image id -> (room_key, space type, description). Ids are the photos' file stems.
ROOMS: Mapping[str, Mapping[str, tuple[str, str, str]]] = {
    "kitchen": {f"img_{n:02d}": ("kitchen", "Kitchen", "white shaker cabinets") for n in range(5)},
    "bedroom": {
        "img_00": ("primary", "Primary Bedroom", "king bed, bay window"),
        "img_01": ("primary", "Primary Bedroom", "king bed, bay window"),
        "img_02": ("blue", "Bedroom", "blue walls, bunk beds"),
        "img_03": ("blue", "Bedroom", "blue walls, bunk beds"),
        "img_04": ("green", "Bedroom", "green walls, desk"),
    },
    "bathroom": {
        "img_00": ("main_bath", "Full Bathroom", "tub and shower"),
        "img_01": ("steam", NEW_SPACE_TYPE, "cedar benches"),
    },
    "exterior": {
        "img_00": ("front", "Porch", "covered front porch"),
        "img_01": ("back", "Patio", "paved back patio"),
    },
}
APPLIANCES = {"kitchen": [("img_00", "Refrigerator"), ("img_03", "Dishwasher")]}


def _members(schema: Mapping[str, Any]) -> list[Any]:
    for branch in schema.get("anyOf", [schema]):
        if "enum" in branch:
            return list(branch["enum"])
    return []


def _first_member(schema: Mapping[str, Any]) -> Any:
    return next(m for m in _members(schema) if m is not None)


def _layout(schema: Mapping[str, Any], space_type: str) -> dict[str, Any]:
    layout = dict(generate_answer(schema, prefer_null=True))
    props = schema["properties"]
    if space_type not in _members(props["space_type"]):
        space_type = "Full Bathroom"  # the pinned set has no sauna: the same photo is a bathroom there
    layout.update(
        space_type=space_type,
        flooring_material_type=_first_member(props["flooring_material_type"]),
        is_finished=True,
        is_exterior=space_type in ("Porch", "Patio"),
    )
    return layout


def _part(schema: Mapping[str, Any], filled: tuple[str, ...]) -> dict[str, Any]:
    part = dict(generate_answer(schema, prefer_null=True))
    for key in filled:
        part[key] = _first_member(schema["properties"][key])
    return part


def batch_answer(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed script: rooms, appliances and property parts as the photos of this batch show them."""
    text = "\n".join(
        part["text"]
        for message in body["messages"]
        for part in (message["content"] if isinstance(message["content"], list) else [])
        if part.get("type") == "text"
    )
    match = re.search(r"from the '([^']+)' folder", text)
    labels = re.findall(r"image_id: (img_\d+) \(photo ([^)]+)\)", text)
    assert match and labels, text
    # The schema's ids are positional (img_1..); each image's label names the photo it is.
    category, shown = match.group(1), dict((photo, request_id) for request_id, photo in labels)
    ids = list(shown)
    schema = body["response_format"]["json_schema"]["schema"]["properties"]
    room_schema = schema["rooms"]["items"]["properties"]["layout"]
    rooms: dict[str, dict[str, Any]] = {}
    for image_id in ids:
        key, space_type, description = ROOMS[category][image_id]
        room = rooms.setdefault(
            key,
            {
                "room_key": key,
                "description": description,
                "image_ids": [],
                "layout": _layout(room_schema, space_type),
            },
        )
        room["image_ids"].append(shown[image_id])
    appliance_schema = schema["appliances"]["items"]
    appliances = [
        {
            **generate_answer(appliance_schema, prefer_null=True),
            "appliance_type": kind,
            "finish": "Stainless Steel",
            "image_ids": [shown[image_id]],
        }
        for image_id, kind in APPLIANCES.get(category, [])
        if image_id in ids
    ]
    exterior = category == "exterior"
    return {
        "rooms": list(rooms.values()),
        "appliances": appliances,
        "structure": _part(schema["structure"]["anyOf"][0], ("roof_design_type",)) if exterior else None,
        "lot": _part(schema["lot"]["anyOf"][0], ("driveway_material",)) if exterior else None,
        "utility": _part(schema["utility"]["anyOf"][0], ("cooling_system_type",)) if exterior else None,
    }


_ENTRY = re.compile(r"^- (b\d+:[a-z0-9_-]+): (.*?); \d+ photo\(s\); (.*)$")


def grouping_answer(body: Mapping[str, Any]) -> dict[str, Any]:
    """Rooms with the same space type and description are the same room."""
    groups: dict[tuple[str, str], list[str]] = {}
    for line in body["messages"][1]["content"].splitlines():
        match = _ENTRY.match(line)
        if match:
            groups.setdefault((match.group(2), match.group(3)), []).append(match.group(1))
    return {"groups": [{"refs": refs} for refs in groups.values()]}


def fake_model(body: dict[str, Any]) -> dict[str, Any]:
    if body["response_format"]["json_schema"]["name"] == "room_groups":
        return grouping_answer(body)
    return batch_answer(body)


def run_property(fake_openai: FakeOpenAIServer, output: str, *extra: str) -> dict[str, Any]:
    fake_openai.answer_with(fake_model)
    args = ["run", "--all-properties", "--base-url", fake_openai.base_url, "--api-key", KEY]
    result = invoke([*args, "--json", "--batch-size", "3", "--output-dir", output, *extra])
    assert result.exit_code == 0, result.stderr + result.stdout
    return result.summary()


def json_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.json"))}


@pytest.fixture
def photos(workdir: Path) -> Path:
    make_tree(workdir / "images", {PROPERTY: PHOTOS})
    (workdir / "seed.csv").write_text(SEED)
    return workdir


def test_output_matches_the_golden_files_and_passes_validation(
    photos: Path, fake_openai: FakeOpenAIServer
) -> None:
    summary = run_property(fake_openai, "output")
    names = [r.response_format_name for r in fake_openai.requests]
    assert names.count("room_groups") == 2  # bedroom and kitchen had two batches each
    assert summary["images"] == sum(PHOTOS.values())
    produced = json_files(photos / "output" / PROPERTY)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir(parents=True)
        for name, data in produced.items():
            (GOLDEN / name).write_bytes(data)
    expected = json_files(GOLDEN)
    assert sorted(produced) == sorted(expected), "file names differ: rerun with UPDATE_GOLDEN=1 to review"
    for name, data in produced.items():
        assert data == expected[name], f"{name} differs from tests/golden/pinned (UPDATE_GOLDEN=1 rewrites)"

    validation = invoke(["validate", "output"])
    assert validation.exit_code == 0, validation.stdout
    assert "1 of 1 property folders valid, 0 error(s)" in validation.stdout
    assert "unused" not in validation.stdout


def test_the_golden_folder_has_one_layout_per_room(photos: Path) -> None:
    """What the golden files say, spelled out: consolidated rooms, distinct rooms kept apart."""
    layouts = sorted(name for name in json_files(GOLDEN) if name.startswith("layout_"))
    assert layouts == [
        "layout_bedroom_1.json",
        "layout_bedroom_2.json",
        "layout_full_bathroom_1.json",
        "layout_full_bathroom_2.json",
        "layout_kitchen_1.json",
        "layout_patio_1.json",
        "layout_porch_1.json",
        "layout_primary_bedroom_1.json",
    ]
    bedroom_2 = json.loads((GOLDEN / "layout_bedroom_2.json").read_text())
    assert bedroom_2["space_index"] == 2
    assert bedroom_2["request_identifier"] == PROPERTY


def test_a_rerun_gives_the_same_bytes(photos: Path, fake_openai: FakeOpenAIServer) -> None:
    run_property(fake_openai, "first")
    run_property(fake_openai, "second", "--force")
    assert json_files(photos / "first" / PROPERTY) == json_files(photos / "second" / PROPERTY)


def test_a_newer_schema_set_flows_through_and_passes(photos: Path, fake_openai: FakeOpenAIServer) -> None:
    newer = make_newer_set(photos / "newer-set")
    run_property(fake_openai, "output-newer", "--schema-set", str(newer))
    folder = photos / "output-newer" / PROPERTY
    files = {name: json.loads(data) for name, data in json_files(folder).items()}
    sauna = files["layout_sauna_1.json"]
    assert sauna["space_type"] == NEW_SPACE_TYPE
    for name, obj in files.items():
        if name.startswith("layout_"):
            assert obj["space_type_index"] == str(obj["space_index"]), name

    validation = invoke(["validate", "output-newer", "--schema-set", str(newer)])
    assert validation.exit_code == 0, validation.stdout
    assert "unused" not in validation.stdout
    # The same folder is not valid for the pinned set, whose data-group root has another CID.
    assert invoke(["validate", "output-newer"]).exit_code == 1
