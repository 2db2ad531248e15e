from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from image_analyzer.domain import Provenance
from image_analyzer.merge import (
    BatchRecord,
    OutputImage,
    build_property_files,
    image_file_name,
    room_assignments,
)
from image_analyzer.schemas import SchemaSet
from image_analyzer.validate import validate_property_files, validate_property_folder
from tests.answer_factory import answer, blank_layout, blank_part, room

EXAMPLE = Path(__file__).resolve().parent / "data" / "example-property"
PROVENANCE = Provenance(
    request_identifier="52434205310037080",
    source_http_request={"method": "GET", "url": "https://pbcpao.gov/Property/Details"},
    from_seed=True,
)
SAFE_NAME = re.compile(r"[a-z0-9_-]+\.json")


@pytest.fixture(scope="module")
def schema_set() -> SchemaSet:
    return SchemaSet.load()


def record(category: str, index: int, ids: list[str], result: dict[str, Any]) -> BatchRecord:
    return BatchRecord("prop-1", category, index, tuple(ids), result)


def images_for(records: list[BatchRecord]) -> list[OutputImage]:
    return [
        OutputImage(r.category, image_id, image_file_name(r.category, image_id, "jpeg"), "jpeg")
        for r in records
        for image_id in r.image_ids
    ]


def decoded(files: dict[str, bytes]) -> dict[str, Any]:
    return {name: json.loads(data) for name, data in files.items()}


@pytest.fixture(scope="module")
def house(schema_set: SchemaSet) -> list[BatchRecord]:
    """A kitchen seen over two batches, two bedrooms, a structure split across categories."""
    blank = blank_layout(schema_set)
    kitchen = {**blank, "space_type": "Kitchen", "is_finished": True}
    structure = blank_part(schema_set, "structure")
    utility = blank_part(schema_set, "utility")
    fridge = {"appliance_type": "Refrigerator", "finish": "Stainless Steel"}
    return [
        record(
            "kitchen",
            0,
            ["img_1", "img_2"],
            answer(
                schema_set,
                ["img_1", "img_2"],
                rooms=[room("kitchen", ["img_1", "img_2"], kitchen)],
                appliances=[
                    {**fridge, "image_ids": ["img_1"]},
                    {"appliance_type": None, "finish": "Black", "image_ids": ["img_2"]},
                ],
                structure={**structure, "flooring_material_primary": "Ceramic Tile"},
                utility={**utility, "solar_panel_present": False},
            ),
        ),
        record(
            "kitchen",
            1,
            ["img_3"],
            answer(
                schema_set,
                ["img_3"],
                rooms=[
                    room(
                        "kitchen",
                        ["img_3"],
                        {**kitchen, "countertop_material": "Granite", "is_finished": False},
                    )
                ],
                appliances=[
                    {**fridge, "image_ids": ["img_3"]},
                    {"appliance_type": "Dishwasher", "finish": "White", "image_ids": ["img_3"]},
                ],
            ),
        ),
        record(
            "bedroom",
            0,
            ["img_1", "img_2", "img_3"],
            answer(
                schema_set,
                ["img_1", "img_2", "img_3"],
                rooms=[
                    room(
                        "bedroom_blue",
                        ["img_1", "img_3"],
                        {**blank, "space_type": "Bedroom", "paint_condition": "Good"},
                    ),
                    room("bedroom_green", ["img_2"], {**blank, "space_type": "Bedroom"}),
                ],
            ),
        ),
        record(
            "exterior",
            0,
            ["img_1"],
            answer(
                schema_set,
                ["img_1"],
                rooms=[room("back patio", ["img_1"], {**blank, "space_type": "Patio", "is_exterior": True})],
                structure={**structure, "roof_design_type": "Hip", "flooring_material_primary": "Carpet"},
                utility={**utility, "solar_panel_present": True, "cooling_system_type": "CentralAir"},
                lot=None,
            ),
        ),
    ]


def test_one_room_over_two_batches_is_one_layout(schema_set: SchemaSet, house: list[BatchRecord]) -> None:
    files = decoded(build_property_files(house, images_for(house), PROVENANCE, schema_set))
    kitchens = [name for name in files if name.startswith("layout_kitchen")]
    assert kitchens == ["layout_kitchen_1.json"]
    kitchen = files["layout_kitchen_1.json"]
    assert kitchen["countertop_material"] == "Granite"  # null in batch 0, filled by batch 1
    assert kitchen["is_finished"] is True  # first value wins
    assert kitchen["space_index"] == 1
    assert room_assignments(house)["layout_kitchen_1.json"] == ["img_1", "img_2", "img_3"]


def test_two_bedrooms_are_two_layouts_numbered_in_order(
    schema_set: SchemaSet, house: list[BatchRecord]
) -> None:
    files = decoded(build_property_files(house, images_for(house), PROVENANCE, schema_set))
    assert files["layout_bedroom_1.json"]["space_index"] == 1
    assert files["layout_bedroom_1.json"]["paint_condition"] == "Good"
    assert files["layout_bedroom_2.json"]["space_index"] == 2
    assignments = room_assignments(house)
    assert assignments["layout_bedroom_1.json"] == ["img_1", "img_3"]
    assert assignments["layout_bedroom_2.json"] == ["img_2"]
    assert assignments["layout_patio_1.json"] == ["img_1"]
    assert len(assignments) == 4


def test_structure_and_utility_merge_across_categories(
    schema_set: SchemaSet, house: list[BatchRecord]
) -> None:
    files = decoded(build_property_files(house, images_for(house), PROVENANCE, schema_set))
    structure = files["structure.json"]
    # Categories merge in name order: bedroom, exterior, kitchen.
    assert structure["roof_design_type"] == "Hip"
    assert structure["flooring_material_primary"] == "Carpet"
    utility = files["utility.json"]
    assert isinstance(utility, dict)
    assert utility["solar_panel_present"] is True  # true in any answer wins
    assert utility["cooling_system_type"] == "CentralAir"
    assert "lot.json" not in files  # no answer gave a lot
    root = files[f"{schema_set.data_group_cid}.json"]
    assert "property_has_lot" not in root["relationships"]
    assert root["relationships"]["property_has_structure"] == [
        {"/": "./relationship_property_structure.json"}
    ]


def test_appliances_are_deduplicated(schema_set: SchemaSet, house: list[BatchRecord]) -> None:
    files = decoded(build_property_files(house, images_for(house), PROVENANCE, schema_set))
    appliances = {name: obj for name, obj in files.items() if name.startswith("appliance_")}
    assert sorted(appliances) == ["appliance_dishwasher_1.json", "appliance_refrigerator_1.json"]
    assert appliances["appliance_refrigerator_1.json"]["finish"] == "Stainless Steel"
    assert "image_ids" not in appliances["appliance_refrigerator_1.json"]


def test_objects_carry_provenance_and_files_match_the_example(
    schema_set: SchemaSet, house: list[BatchRecord]
) -> None:
    files = decoded(build_property_files(house, images_for(house), PROVENANCE, schema_set))
    for name in ("layout_kitchen_1.json", "structure.json", "utility.json", "appliance_dishwasher_1.json"):
        assert files[name]["request_identifier"] == "52434205310037080"
        assert files[name]["source_http_request"] == {
            "method": "GET",
            "url": "https://pbcpao.gov/Property/Details",
        }
    assert files["file_kitchen_img_1.json"] == {
        "name": "kitchen_img_1.jpg",
        "ipfs_url": "./kitchen_img_1.jpg",
        "file_format": "jpeg",
        "document_type": "PropertyImage",
        "original_url": None,
        "source_http_request": None,
        "request_identifier": "52434205310037080",
    }
    assert files["relationship_property_layout_kitchen_1.json"] == {
        "from": {"/": "./property.json"},
        "to": {"/": "./layout_kitchen_1.json"},
    }
    root = files[f"{schema_set.data_group_cid}.json"]
    assert root["label"] == "Photo Metadata"
    links = root["relationships"]["property_has_file"]
    assert links == sorted(links, key=lambda link: link["/"])
    assert len(links) == 7


def test_output_is_byte_stable(schema_set: SchemaSet, house: list[BatchRecord]) -> None:
    images = images_for(house)
    first = build_property_files(house, images, PROVENANCE, schema_set)
    shuffled = list(house)
    random.Random(3).shuffle(shuffled)
    second = build_property_files(shuffled, images, PROVENANCE, schema_set)
    assert first == second
    assert list(first) == sorted(first)
    sample = first["layout_kitchen_1.json"]
    assert sample.endswith(b"}\n")
    assert (
        sample
        == (json.dumps(json.loads(sample), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    )


def test_no_model_free_text_reaches_file_names(schema_set: SchemaSet) -> None:
    hostile = {**blank_layout(schema_set), "space_type": None}
    records = [
        record(
            "Kitchen Photos",
            0,
            ["img_1"],
            answer(
                schema_set,
                ["img_1"],
                rooms=[room("../../etc/passwd", ["img_1"], hostile, description="../../evil.json")],
            ),
        )
    ]
    files = build_property_files(records, images_for(records), PROVENANCE, schema_set)
    for name in files:
        assert SAFE_NAME.fullmatch(name), name
        assert "passwd" not in name
        assert "evil" not in name
    assert "layout_unspecified_1.json" in files
    assert "file_kitchen_photos_img_1.json" in files
    assert b"passwd" not in b"".join(files.values())  # room keys and descriptions are not output data


def test_image_file_name() -> None:
    assert image_file_name("kitchen", "img_1", "jpeg") == "kitchen_img_1.jpg"
    assert image_file_name("Back Yard", "IMG 7", "png") == "back_yard_img_7.png"
    assert image_file_name("../..", "../x", "jpeg") == "category_x.jpg"
    # Already-clean ids pass unchanged, so distinct image ids give distinct file names.
    assert image_file_name("kitchen", "a__b", "jpeg") != image_file_name("kitchen", "a_b", "jpeg")
    with pytest.raises(ValueError, match="webp"):
        image_file_name("kitchen", "img_1", "webp")


def test_unsafe_or_duplicate_image_names_are_refused(schema_set: SchemaSet) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        build_property_files([], [OutputImage("k", "i", "../k_i.jpg", "jpeg")], PROVENANCE, schema_set)
    twice = [OutputImage("k", "i", "k_i.jpg", "jpeg")] * 2
    with pytest.raises(ValueError, match="two images"):
        build_property_files([], twice, PROVENANCE, schema_set)


def write_folder(folder: Path, files: dict[str, bytes], images: list[OutputImage]) -> None:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for image in images:
        (folder / image.file_name).write_bytes(b"\xff\xd8\xff\xd9")


def test_merged_folder_passes_validation(
    tmp_path: Path, schema_set: SchemaSet, house: list[BatchRecord]
) -> None:
    images = images_for(house)
    files = build_property_files(house, images, PROVENANCE, schema_set)
    write_folder(tmp_path / "prop-1", files, images)
    assert validate_property_folder(tmp_path / "prop-1", schema_set) == []
    shutil.copy(EXAMPLE / "property.json", tmp_path / "prop-1" / "property.json")
    assert validate_property_folder(tmp_path / "prop-1", schema_set) == []


def test_property_without_rooms_gets_files_that_fail_validation(schema_set: SchemaSet) -> None:
    records = [record("garage", 0, ["img_1"], answer(schema_set, ["img_1"]))]
    files = build_property_files(records, images_for(records), PROVENANCE, schema_set)
    assert "file_garage_img_1.json" in files
    problems = validate_property_files(files, schema_set)
    assert [(p.path, p.message) for p in problems] == [
        ("$.relationships", "'property_has_layout' is a required property")
    ]
