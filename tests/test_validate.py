from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from image_analyzer.schemas import SchemaSet
from image_analyzer.validate import (
    Problem,
    expand_schema,
    validate_output_dir,
    validate_property_files,
    validate_property_folder,
)

EXAMPLE = Path(__file__).resolve().parent / "data" / "example-property"
ROOT = "bafkreievgc2kirgxpphmigdrdy5r6putjax2mz6xyjcsvjhsz3zgckrr44.json"


@pytest.fixture(scope="module")
def schema_set() -> SchemaSet:
    return SchemaSet.load()


@pytest.fixture
def example(tmp_path: Path) -> Path:
    folder = tmp_path / "52434205310037080"
    shutil.copytree(EXAMPLE, folder)
    for path in folder.iterdir():
        path.chmod(0o644)  # the copy may come from a read-only checkout
    return folder


def edit(folder: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))


def example_files(exclude: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in EXAMPLE.glob("*.json") if p.name not in exclude}


def test_the_example_folder_passes(schema_set: SchemaSet) -> None:
    assert validate_property_folder(EXAMPLE, schema_set) == []


def test_without_property_json_the_property_side_is_not_checked(schema_set: SchemaSet) -> None:
    assert validate_property_files(example_files(exclude=("property.json",)), schema_set) == []


def test_a_supplied_property_json_is_validated(schema_set: SchemaSet) -> None:
    files = example_files(exclude=("property.json",))
    property_json = json.loads((EXAMPLE / "property.json").read_text())
    assert validate_property_files(files, schema_set, property_json=json.dumps(property_json).encode()) == []
    property_json["property_type"] = "Castle"
    problems = validate_property_files(files, schema_set, property_json=json.dumps(property_json).encode())
    # Linked from six relationships, reported once.
    assert problems == [Problem("property.json", "$.property_type", '"Castle" is not an allowed value')]


def test_broken_link_is_reported_at_the_link(example: Path, schema_set: SchemaSet) -> None:
    (example / "layout_kitchen.json").unlink()
    problems = validate_property_folder(example, schema_set)
    assert problems == [
        Problem(
            "relationship_property_layout_kitchen.json", "$.to", "link to missing file ./layout_kitchen.json"
        )
    ]


def test_unused_data_file_is_reported(example: Path, schema_set: SchemaSet) -> None:
    (example / "run_summary.json").write_text('{"cost": 1}')
    assert validate_property_folder(example, schema_set) == [
        Problem("run_summary.json", "$", "unused data file: no relationship links to it")
    ]


def test_invalid_value_is_reported_in_its_own_file(example: Path, schema_set: SchemaSet) -> None:
    def change(layout: dict[str, Any]) -> None:
        layout["space_type"] = "Dungeon"
        layout["space_index"] = 0
        del layout["is_exterior"]

    edit(example, "layout_primary_bedroom.json", change)
    problems = validate_property_folder(example, schema_set)
    assert {(p.file, p.path, p.message) for p in problems} == {
        ("layout_primary_bedroom.json", "$", "'is_exterior' is a required property"),
        ("layout_primary_bedroom.json", "$.space_type", '"Dungeon" is not an allowed value'),
        ("layout_primary_bedroom.json", "$.space_index", "0 is less than the minimum of 1"),
    }


def test_relationship_with_extra_key_is_reported(example: Path, schema_set: SchemaSet) -> None:
    edit(example, "relationship_property_lot.json", lambda rel: rel.update(note="hi"))
    assert validate_property_folder(example, schema_set) == [
        Problem("relationship_property_lot.json", "$", 'unexpected key(s): ["note"]')
    ]


def test_missing_layouts_and_unknown_slots_are_reported(example: Path, schema_set: SchemaSet) -> None:
    def change(root: dict[str, Any]) -> None:
        del root["relationships"]["property_has_layout"]
        root["relationships"]["property_has_nearby_location"] = [{"/": "./lot.json"}]

    edit(example, ROOT, change)
    problems = {(p.file, p.path, p.message) for p in validate_property_folder(example, schema_set)}
    assert (ROOT, "$.relationships", "'property_has_layout' is a required property") in problems
    assert (ROOT, "$.relationships", 'unexpected key(s): ["property_has_nearby_location"]') in problems
    # The layouts and their relationship files are now reached by nothing.
    assert ("layout_kitchen.json", "$", "unused data file: no relationship links to it") in problems
    assert (
        "relationship_property_layout_kitchen.json",
        "$",
        "unused data file: no relationship links to it",
    ) in problems


def test_formats_are_checked(example: Path, schema_set: SchemaSet) -> None:
    def change(file_object: dict[str, Any]) -> None:
        file_object["ipfs_url"] = "kitchen_1.jpg"
        file_object["original_url"] = "not a url"
        file_object["file_format"] = "webp"

    edit(example, "file_kitchen_1.json", change)
    problems = {(p.path, p.message) for p in validate_property_folder(example, schema_set)}
    assert problems == {
        ("$.ipfs_url", '"kitchen_1.jpg" is not a valid ipfs_uri'),
        ("$.original_url", '"not a url" is not a valid uri'),
        ("$.file_format", '"webp" is not an allowed value'),
    }


def test_missing_image_is_reported(example: Path, schema_set: SchemaSet) -> None:
    (example / "kitchen_1.jpg").unlink()
    assert validate_property_folder(example, schema_set) == [
        Problem("file_kitchen_1.json", "$.ipfs_url", "./kitchen_1.jpg is not in the folder")
    ]


def test_provenance_rules_of_the_lexicon_apply(example: Path, schema_set: SchemaSet) -> None:
    edit(example, "lot.json", lambda lot: lot["source_http_request"].update(body="x"))
    problems = validate_property_folder(example, schema_set)
    assert [(p.file, p.path) for p in problems] == [("lot.json", "$.source_http_request")]


def test_links_must_stay_inside_the_folder(example: Path, schema_set: SchemaSet) -> None:
    edit(example, "relationship_property_lot.json", lambda rel: rel.update(to={"/": "../elsewhere/lot.json"}))
    problems = validate_property_folder(example, schema_set)
    assert (
        Problem(
            "relationship_property_lot.json",
            "$.to",
            "link '../elsewhere/lot.json' must be a relative ./ path inside the folder",
        )
        in problems
    )
    assert Problem("lot.json", "$", "unused data file: no relationship links to it") in problems


def test_not_json_and_missing_root(example: Path, schema_set: SchemaSet) -> None:
    (example / "lot.json").write_text("{nope")
    problems = validate_property_folder(example, schema_set)
    assert [(p.file, p.path) for p in problems] == [("lot.json", "$")]
    assert problems[0].message.startswith("not valid JSON")
    (example / ROOT).unlink()
    problems = validate_property_folder(example, schema_set)
    assert Problem(ROOT, "$", "the data-group root file is missing") in problems


def test_expanded_schema_holds_no_cid_links(schema_set: SchemaSet) -> None:
    text = json.dumps(expand_schema(schema_set, schema_set.data_group_name))
    known = [cid for name, cid in schema_set.cids.items() if name != schema_set.data_group_name]
    assert not any(f'"cid": "{cid}"' in text for cid in known)
    assert "x-unknown-cid" in text  # the *_has_fact_sheet slots link to schemas outside the pinned set


def test_fact_sheet_slot_is_reported_as_unknown_schema(example: Path, schema_set: SchemaSet) -> None:
    edit(
        example, ROOT, lambda root: root["relationships"].update(layout_has_fact_sheet=[{"/": "./lot.json"}])
    )
    problems = validate_property_folder(example, schema_set)
    assert len(problems) == 1
    assert problems[0].path == "$.relationships.layout_has_fact_sheet[0]"
    assert "not in the schema set" in problems[0].message


def test_validate_output_dir_skips_run_metadata(tmp_path: Path, schema_set: SchemaSet) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "good")
    (tmp_path / "bad").mkdir()
    for skipped in ("_runs", "_state", ".cache"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "x.json").write_text("{}")
    results = validate_output_dir(tmp_path, schema_set)
    assert sorted(results) == ["bad", "good"]
    assert results["good"] == []
    assert results["bad"] == [Problem(ROOT, "$", "the data-group root file is missing")]
