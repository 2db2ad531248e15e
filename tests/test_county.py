"""County data: rooms on record guide the prompt and make the merge write at least those rooms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from image_analyzer.county import BATHROOM, BEDROOM, CountyData, kind_totals, read_county_rooms, room_kind
from image_analyzer.domain import Provenance
from image_analyzer.merge import BatchRecord, OutputImage, build_property_files, image_file_name
from image_analyzer.prompts import build_prompt
from image_analyzer.schemas import SchemaSet
from image_analyzer.validate import validate_property_files
from tests.answer_factory import answer, blank_layout, room
from tests.fakeopenai import FakeOpenAIServer
from tests.helpers import invoke, make_tree
from tests.schema_sets import make_newer_set

PROVENANCE = Provenance(
    request_identifier="p-1",
    source_http_request={"method": "GET", "url": "https://county.example.com/parcel"},
    from_seed=True,
)


@pytest.fixture(scope="module")
def schema_set() -> SchemaSet:
    return SchemaSet.load()


def write_county(root: Path, property_id: str, space_types: list[Any]) -> Path:
    folder = root / property_id
    folder.mkdir(parents=True)
    for n, space_type in enumerate(space_types, start=1):
        (folder / f"layout_{n}.json").write_text(json.dumps({"space_type": space_type, "space_index": n}))
    return folder


# --- reading county data -------------------------------------------------------------------------------


def test_every_pinned_space_type_has_the_right_kind(schema_set: SchemaSet) -> None:
    members = [m for m in schema_set.documents["layout"]["properties"]["space_type"]["enum"] if m]
    bedrooms = {m for m in members if room_kind(m) == BEDROOM}
    bathrooms = {m for m in members if room_kind(m) == BATHROOM}
    assert bedrooms == {
        "Primary Bedroom", "Secondary Bedroom", "Guest Bedroom", "Children’s Bedroom", "Nursery", "Bedroom",
    }  # fmt: skip
    assert bathrooms == {
        "Full Bathroom", "Three-Quarter Bathroom", "Half Bathroom / Powder Room", "En-Suite Bathroom",
        "Jack-and-Jill Bathroom", "Primary Bathroom",
    }  # fmt: skip
    assert room_kind(None) is None
    assert room_kind("Kitchen") is None


def test_counts_space_types_over_the_layout_files(tmp_path: Path) -> None:
    folder = write_county(
        tmp_path, "p1", ["Bedroom", "Primary Bedroom", "Bedroom", "Full Bathroom", "Kitchen", None]
    )
    (folder / "property.json").write_text("{}")  # not a layout file: ignored
    counts, warnings = read_county_rooms(folder)
    assert counts == {"Bedroom": 2, "Primary Bedroom": 1, "Full Bathroom": 1, "Kitchen": 1}
    assert warnings == []
    assert kind_totals(counts) == {BEDROOM: 3, BATHROOM: 1}


def test_a_bad_file_is_a_warning_naming_it_and_the_rest_still_counts(tmp_path: Path) -> None:
    folder = write_county(tmp_path, "p1", ["Bedroom", "Full Bathroom"])
    (folder / "layout_3.json").write_text("{not json")
    (folder / "layout_4.json").write_text("[1, 2]")
    warnings: list[str] = []
    county = CountyData(tmp_path, warn=warnings.append)
    assert county("p1") == {"Bedroom": 1, "Full Bathroom": 1}
    assert len(warnings) == 2
    assert "layout_3.json" in warnings[0] and "cannot read" in warnings[0]
    assert "layout_4.json" in warnings[1] and "not a JSON object" in warnings[1]
    county("p1")
    assert len(warnings) == 2  # read once per property


def test_without_county_data_there_are_no_rooms_on_record(tmp_path: Path) -> None:
    write_county(tmp_path, "p1", ["Bedroom"])
    (tmp_path / "empty").mkdir()
    county = CountyData(tmp_path)
    assert county("p2") is None
    assert county("empty") is None
    assert county("..") is None
    assert CountyData(tmp_path / "nowhere")("p1") is None


# --- the prompt ---------------------------------------------------------------------------------------------


def test_the_prompt_states_the_rooms_on_record(schema_set: SchemaSet) -> None:
    _system, user = build_prompt(
        schema_set, "bedroom", ["img_1"], [], {"Bedroom": 2, "Primary Bedroom": 1, "Full Bathroom": 2}
    )
    assert "Rooms on record for this property: 3 bedrooms, 2 bathrooms " in user
    assert "(Bedroom: 2, Full Bathroom: 2, Primary Bedroom: 1)" in user
    assert "use the recorded space types" in user
    _system, without = build_prompt(schema_set, "bedroom", ["img_1"], [], None)
    assert "on record" not in without


# --- the merge ---------------------------------------------------------------------------------------


def bedroom_photos(schema_set: SchemaSet, *space_types: str) -> list[BatchRecord]:
    ids = [f"img_{n}" for n in range(1, len(space_types) + 1)]
    rooms = [
        room(f"room_{n}", [image_id], {**blank_layout(schema_set), "space_type": space_type})
        for n, (image_id, space_type) in enumerate(zip(ids, space_types, strict=True))
    ]
    return [BatchRecord("p-1", "bedroom", 0, tuple(ids), answer(schema_set, ids, rooms=rooms))]


def images_for(records: list[BatchRecord]) -> list[OutputImage]:
    return [
        OutputImage(r.category, i, image_file_name(r.category, i, "jpeg"), "jpeg")
        for r in records
        for i in r.image_ids
    ]


def layouts(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {name: json.loads(data) for name, data in files.items() if name.startswith("layout_")}


def test_recorded_rooms_the_photos_did_not_show_are_added(schema_set: SchemaSet) -> None:
    records = bedroom_photos(schema_set, "Bedroom", "Kitchen")
    county = {"Primary Bedroom": 1, "Bedroom": 2, "Full Bathroom": 1, "Half Bathroom / Powder Room": 1}
    files = build_property_files(records, images_for(records), PROVENANCE, schema_set, county_rooms=county)
    found = layouts(files)
    assert sorted(found) == [
        "layout_bedroom_1.json",  # photographed
        "layout_bedroom_2.json",  # on record, not photographed
        "layout_full_bathroom_1.json",
        "layout_half_bathroom_powder_room_1.json",
        "layout_kitchen_1.json",
        "layout_primary_bedroom_1.json",
    ]
    added = found["layout_primary_bedroom_1.json"]
    assert added["space_type"] == "Primary Bedroom"
    assert added["is_exterior"] is False and added["is_finished"] is True
    assert added["flooring_material_type"] is None
    assert added["request_identifier"] == "p-1"
    assert found["layout_bedroom_2.json"]["space_index"] == 2
    assert validate_property_files(files, schema_set) == []


def test_enough_photographed_rooms_add_nothing(schema_set: SchemaSet) -> None:
    records = bedroom_photos(schema_set, "Primary Bedroom", "Bedroom", "Guest Bedroom")
    files = build_property_files(
        records, images_for(records), PROVENANCE, schema_set, county_rooms={"Bedroom": 3}
    )
    assert len(layouts(files)) == 3  # three bedrooms shown, three on record: types as the photos say
    without = build_property_files(records, images_for(records), PROVENANCE, schema_set)
    assert files == without


def test_a_recorded_type_the_set_lacks_becomes_the_generic_one(schema_set: SchemaSet) -> None:
    records = bedroom_photos(schema_set, "Kitchen")
    county = {"Owner Suite Bedroom": 1, "Quarter Bath (bathroom)": 1, "Garage": 1}
    files = build_property_files(records, images_for(records), PROVENANCE, schema_set, county_rooms=county)
    assert sorted(layouts(files)) == [
        "layout_bedroom_1.json",
        "layout_full_bathroom_1.json",
        "layout_kitchen_1.json",
    ]
    assert validate_property_files(files, schema_set) == []


def test_added_rooms_follow_a_newer_set(tmp_path: Path) -> None:
    newer = SchemaSet.load(make_newer_set(tmp_path / "newer"))
    records = bedroom_photos(newer, "Bedroom")
    files = build_property_files(records, images_for(records), PROVENANCE, newer, county_rooms={"Bedroom": 2})
    found = layouts(files)
    assert found["layout_bedroom_2.json"]["space_type_index"] == "2"
    assert validate_property_files(files, newer) == []


# --- end to end ---------------------------------------------------------------------------------------------


def test_a_run_tells_the_model_and_writes_the_rooms_on_record(
    workdir: Path, fake_openai: FakeOpenAIServer
) -> None:
    make_tree(workdir / "images", {"p1": {"bedroom": 1}, "p2": {"bedroom": 1}})
    write_county(workdir / "county", "p1", ["Bedroom", "Bedroom", "Full Bathroom"])
    (workdir / "county" / "p1" / "layout_9.json").write_text("{broken")
    base = ["run", "--all-properties", "--base-url", fake_openai.base_url, "--api-key", "sk-test-county"]
    result = invoke([*base, "--json", "--county-data-dir", "county"])
    assert result.exit_code == 0, result.stderr + result.stdout
    stated = [r.text for r in fake_openai.requests if "on record" in r.text]
    assert len(stated) == 1  # p2 has no county data
    assert "2 bedrooms, 1 bathroom (Bedroom: 2, Full Bathroom: 1)" in stated[0]
    # The fake model leaves the photographed room's type open (null): every recorded room is added.
    p1 = sorted(p.name for p in (workdir / "output" / "p1").glob("layout_*.json"))
    assert p1 == [
        "layout_bedroom_1.json",
        "layout_bedroom_2.json",
        "layout_full_bathroom_1.json",
        "layout_unspecified_1.json",
    ]
    assert "layout_9.json" in result.stdout + result.stderr + json.dumps(result.summary())
    assert invoke(["validate", "output"]).exit_code == 0
