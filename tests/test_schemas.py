from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from image_analyzer.errors import AnswerError, SchemaError
from image_analyzer.schemas import (
    SchemaSet,
    bundled_schema_dir,
    compute_cid,
    is_ipfs_uri,
    is_uri,
    parse_answer,
    response_format,
    response_schema,
    verify_schema_dir,
)
from tests.answer_factory import blank_layout, blank_part, generated_answer, room

IDS = ["img_1", "img_2", "img_3"]
FORBIDDEN = {
    "allOf", "not", "if", "then", "else", "oneOf", "minLength", "maxLength", "format", "default",
    "uniqueItems", "patternProperties", "propertyNames", "$ref", "$schema", "title", "dependencies",
}  # fmt: skip


@pytest.fixture(scope="module")
def schema_set() -> SchemaSet:
    return SchemaSet.load()


def copy_set(tmp_path: Path) -> Path:
    target = tmp_path / "set"
    shutil.copytree(bundled_schema_dir(), target)
    return target


def rewrite_set(root: Path, edits: dict[str, Any]) -> None:
    """Replace some schema documents and recompute the manifest's CIDs, like a newer published set."""
    manifest = json.loads((root / "manifest.json").read_text())
    for name, document in edits.items():
        data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        (root / f"{name}.json").write_bytes(data)
        manifest[name]["cid"] = compute_cid(data)
    (root / "manifest.json").write_text(json.dumps(manifest))


# --- CIDs and loading -----------------------------------------------------------------------------------


def test_compute_cid_of_empty_input_is_the_well_known_cid() -> None:
    assert compute_cid(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_every_bundled_file_hashes_to_its_manifest_cid() -> None:
    root = bundled_schema_dir()
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(manifest) == 14
    for name, entry in manifest.items():
        assert compute_cid((root / f"{name}.json").read_bytes()) == entry["cid"], name
    assert all(ok for _name, _cid, ok, _message in verify_schema_dir(root))


def test_load_bundled_set(schema_set: SchemaSet) -> None:
    assert schema_set.data_group_cid == "bafkreievgc2kirgxpphmigdrdy5r6putjax2mz6xyjcsvjhsz3zgckrr44"
    assert schema_set.kinds["layout"] == "class"
    assert schema_set.cid_to_name[schema_set.cids["layout"]] == "layout"
    assert len(schema_set.fingerprint) == 16
    assert SchemaSet.load().fingerprint == schema_set.fingerprint


def test_tampered_file_raises_schema_error_naming_it(tmp_path: Path) -> None:
    root = copy_set(tmp_path)
    (root / "layout.json").write_bytes((root / "layout.json").read_bytes() + b" ")
    with pytest.raises(SchemaError, match=r"layout\.json does not match its CID"):
        SchemaSet.load(root)
    results = {name: (ok, message) for name, _cid, ok, message in verify_schema_dir(root)}
    assert results["layout"][0] is False
    assert "layout.json" in results["layout"][1]
    assert results["lot"] == (True, "ok")


def test_missing_file_and_bad_manifest_raise_schema_error(tmp_path: Path) -> None:
    root = copy_set(tmp_path)
    (root / "lot.json").unlink()
    with pytest.raises(SchemaError, match=r"lot\.json"):
        SchemaSet.load(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(SchemaError, match=r"manifest\.json"):
        SchemaSet.load(root)
    with pytest.raises(SchemaError, match="manifest"):
        SchemaSet.load(tmp_path / "nowhere")


def test_manifest_names_cannot_point_outside_the_folder(tmp_path: Path) -> None:
    root = copy_set(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["../evil"] = {"cid": "bafy", "type": "class"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="bad entry"):
        SchemaSet.load(root)


# --- the strict response schema -------------------------------------------------------------------------


def walk_schema(node: dict[str, Any], depth: int = 1) -> Any:
    """Yield (node, depth) for every schema node, following only schema positions."""
    yield node, depth
    for value in (node.get("properties") or {}).values():
        yield from walk_schema(value, depth + 1)
    if isinstance(node.get("items"), dict):
        yield from walk_schema(node["items"], depth + 1)
    for option in node.get("anyOf") or ():
        yield from walk_schema(option, depth)


def test_response_schema_is_strict(schema_set: SchemaSet) -> None:
    fmt = response_format(schema_set, "kitchen", IDS)
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "property_photo_batch"
    assert fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["type"] == "object"
    objects = 0
    for node, _depth in walk_schema(schema):
        assert not FORBIDDEN & set(node), sorted(FORBIDDEN & set(node))
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types):
            objects += 1
            assert node["additionalProperties"] is False
            assert node["required"] == list(node["properties"])
        if "enum" in node and isinstance(types, list) and "null" in types:
            assert None in node["enum"]
        if "anyOf" in node:
            assert set(node) == {"anyOf"}
        if node.get("type") == "array":
            assert isinstance(node["items"], dict)
    assert objects >= 7  # root, room, layout, appliance, structure, lot, utility


def test_response_schema_within_openai_limits(schema_set: SchemaSet) -> None:
    """Documented strict-mode limits: 1000 enum values, 5000 properties, 10 levels, 120k characters."""
    schema = response_schema(schema_set, [f"img_{i}" for i in range(1, 11)])
    nodes = list(walk_schema(schema))
    enum_values = sum(len(node.get("enum", ())) for node, _ in nodes)
    properties = sum(len(node.get("properties", {})) for node, _ in nodes)
    characters = sum(len(str(v)) for node, _ in nodes for v in node.get("enum", ())) + sum(
        len(key) for node, _ in nodes for key in node.get("properties", {})
    )
    assert enum_values <= 1000
    assert properties <= 5000
    assert max(depth for _, depth in nodes) <= 10
    assert characters <= 120_000


def test_tool_filled_fields_are_never_asked(schema_set: SchemaSet) -> None:
    schema = response_schema(schema_set, IDS)
    room_props = schema["properties"]["rooms"]["items"]["properties"]
    layout = room_props["layout"]["properties"]
    for field in ("source_http_request", "request_identifier", "space_index"):
        assert field not in layout
    assert room_props["image_ids"]["items"]["enum"] == IDS
    assert room_props["image_ids"]["minItems"] == 1
    for name in ("structure", "lot", "utility"):
        part = schema["properties"][name]["anyOf"][0]["properties"]
        assert "source_http_request" not in part
        assert "request_identifier" not in part
    appliance = schema["properties"]["appliances"]["items"]["properties"]
    assert set(appliance) == {"appliance_type", "finish", "image_ids"}
    assert "file" not in schema["properties"]


def test_lexicon_details_flow_into_the_request(schema_set: SchemaSet) -> None:
    schema = response_schema(schema_set, IDS)
    utility = schema["properties"]["utility"]["anyOf"][0]["properties"]
    assert utility["solar_panel_present"]["type"] == "boolean"  # non-nullable stays non-nullable
    assert utility["hvac_condensing_unit_present"]["type"] == ["string", "null"]
    structure = schema["properties"]["structure"]["anyOf"][0]["properties"]
    assert structure["finished_base_area"]["type"] == ["integer", "null"]  # optional -> nullable
    assert structure["exterior_wall_condition_primary"]["enum"][-1] is None
    assert structure["roof_age_years"]["minimum"] == 1
    layout = schema["properties"]["rooms"]["items"]["properties"]["layout"]["properties"]
    assert "Primary Bedroom" in layout["space_type"]["enum"]
    assert layout["is_exterior"]["type"] == "boolean"


def test_a_newer_set_with_new_fields_flows_through(tmp_path: Path, schema_set: SchemaSet) -> None:
    root = copy_set(tmp_path)
    layout = json.loads((root / "layout.json").read_text())
    layout["properties"]["ceiling_fan_count"] = {"type": "integer", "minimum": 0}
    layout["properties"]["mood"] = {"type": ["string", "null"], "enum": ["Calm", "Busy", None]}
    layout["required"].append("mood")
    layout["properties"]["space_type"]["enum"].insert(0, "Panic Room Deluxe")
    rewrite_set(root, {"layout": layout})
    newer = SchemaSet.load(root)
    assert newer.fingerprint != schema_set.fingerprint
    props = response_schema(newer, IDS)["properties"]["rooms"]["items"]["properties"]["layout"]["properties"]
    assert props["ceiling_fan_count"] == {"minimum": 0, "type": ["integer", "null"]}
    assert props["mood"]["enum"] == ["Calm", "Busy", None]
    assert props["space_type"]["enum"][0] == "Panic Room Deluxe"
    layout_answer = {**blank_layout(newer), "mood": "Calm", "ceiling_fan_count": None}
    content = json.dumps(blank_answer([room("den", ["img_1"], layout_answer)]))
    parsed = parse_answer(newer, content, IDS)["rooms"][0]["layout"]
    assert parsed["mood"] == "Calm"
    assert "ceiling_fan_count" not in parsed  # optional and not nullable: null means leave it out


def test_required_uri_becomes_a_pattern_and_is_checked_after_the_answer(tmp_path: Path) -> None:
    root = copy_set(tmp_path)
    lot = json.loads((root / "lot.json").read_text())
    lot["properties"]["survey_url"] = {"type": "string", "format": "uri"}
    lot["required"].append("survey_url")
    rewrite_set(root, {"lot": lot})
    newer = SchemaSet.load(root)
    field = response_schema(newer, IDS)["properties"]["lot"]["anyOf"][0]["properties"]["survey_url"]
    assert "format" not in field
    assert not Draft202012Validator(field).is_valid("no scheme")
    answer = {**blank_answer(), "lot": {**blank_part(newer, "lot"), "survey_url": "https://"}}
    with pytest.raises(AnswerError, match=r"breaks the lexicon: \$\.lot\.survey_url"):
        parse_answer(newer, json.dumps(answer), IDS)
    answer["lot"]["survey_url"] = "https://county.example.com/survey/1"
    assert parse_answer(newer, json.dumps(answer), IDS)["lot"]["survey_url"].endswith("/survey/1")


def test_required_min_length_becomes_a_pattern(tmp_path: Path) -> None:
    root = copy_set(tmp_path)
    lot = json.loads((root / "lot.json").read_text())
    lot["properties"]["gate_code"] = {"type": "string", "minLength": 2}
    lot["required"].append("gate_code")
    rewrite_set(root, {"lot": lot})
    newer = SchemaSet.load(root)
    field = response_schema(newer, IDS)["properties"]["lot"]["anyOf"][0]["properties"]["gate_code"]
    assert field["type"] == "string"
    validator = Draft202012Validator(field)
    assert not validator.is_valid("x")
    assert validator.is_valid("xy")


# --- answers ----------------------------------------------------------------------------------------------


def blank_answer(rooms: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"rooms": rooms or [], "appliances": [], "structure": None, "lot": None, "utility": None}


@pytest.mark.parametrize(("mode", "seed"), [("minimal", 0), ("nulls", 0), *[("random", s) for s in range(8)]])
def test_any_answer_valid_against_the_request_is_accepted(
    schema_set: SchemaSet, mode: str, seed: int
) -> None:
    data = generated_answer(schema_set, IDS, mode, seed)
    Draft202012Validator(response_schema(schema_set, IDS)).validate(data)
    parsed = parse_answer(schema_set, json.dumps(data), IDS)
    assert len(parsed["rooms"]) == len(data["rooms"])
    for parsed_room in parsed["rooms"]:
        assert parsed_room["room_key"]
        assert set(parsed_room["image_ids"]) <= set(IDS)


def test_empty_strings_on_min_length_fields_become_null(schema_set: SchemaSet) -> None:
    data = generated_answer(schema_set, IDS, "minimal")
    assert data["rooms"][0]["layout"]["pool_equipment"] == ""
    assert data["utility"]["hvac_condensing_unit_present"] == ""
    parsed = parse_answer(schema_set, json.dumps(data), IDS)
    assert parsed["rooms"][0]["layout"]["pool_equipment"] is None
    assert parsed["utility"]["hvac_condensing_unit_present"] is None
    assert parsed["utility"]["solar_panel_present"] is False


def test_null_optional_fields_are_left_out(schema_set: SchemaSet) -> None:
    data = generated_answer(schema_set, IDS, "minimal")
    data["structure"] = blank_part(schema_set, "structure")
    parsed = parse_answer(schema_set, json.dumps(data), IDS)
    assert "finished_base_area" not in parsed["structure"]
    assert "roof_design_type" in parsed["structure"]  # required and nullable: kept as null
    assert parsed["structure"]["roof_design_type"] is None


def test_room_keys_are_sanitised_and_image_ids_deduplicated(schema_set: SchemaSet) -> None:
    rooms = [
        room("Bedroom #2 (blue)", ["img_2", "img_2", "img_1"], blank_layout(schema_set)),
        room("!!!", ["img_3"], blank_layout(schema_set)),
    ]
    parsed = parse_answer(schema_set, json.dumps(blank_answer(rooms)), IDS)
    assert [r["room_key"] for r in parsed["rooms"]] == ["bedroom_2_blue", "room_2"]
    assert parsed["rooms"][0]["image_ids"] == ["img_2", "img_1"]


def test_wrong_image_id_is_rejected(schema_set: SchemaSet) -> None:
    content = json.dumps(blank_answer([room("kitchen", ["img_9"], blank_layout(schema_set))]))
    with pytest.raises(AnswerError) as caught:
        parse_answer(schema_set, content, IDS)
    assert caught.value.kind == "schema"
    assert "$.rooms[0].image_ids[0]" in str(caught.value)
    assert '"img_9" is not an allowed value' in str(caught.value)


def test_missing_key_is_rejected(schema_set: SchemaSet) -> None:
    data = blank_answer()
    del data["lot"]
    with pytest.raises(AnswerError) as caught:
        parse_answer(schema_set, json.dumps(data), IDS)
    assert caught.value.kind == "schema"
    assert "'lot' is a required property" in str(caught.value)


def test_bad_enum_inside_a_nullable_object_names_the_field(schema_set: SchemaSet) -> None:
    data = blank_answer()
    data["lot"] = {**blank_part(schema_set, "lot"), "fencing_type": "Electrified"}
    with pytest.raises(AnswerError, match=r"\$\.lot\.fencing_type: \"Electrified\" is not an allowed value"):
        parse_answer(schema_set, json.dumps(data), IDS)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (None, "empty"),
        ("", "empty"),
        ("  \n", "empty"),
        ("{rooms:", "not_json"),
        ('{"rooms": NaN}', "not_json"),
        ("[]", "schema"),
    ],
)
def test_unusable_content_is_rejected_with_its_kind(
    schema_set: SchemaSet, content: str | None, kind: str
) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_answer(schema_set, content, IDS)
    assert caught.value.kind == kind


def test_error_messages_are_one_short_line(schema_set: SchemaSet) -> None:
    huge = {"rooms": [{"junk": "x" * 5000}] * 50, "extra": list(range(1000))}
    with pytest.raises(AnswerError) as caught:
        parse_answer(schema_set, json.dumps(huge), IDS)
    message = str(caught.value)
    assert "\n" not in message
    assert len(message) < 600
    assert "more)" in message


def test_code_fenced_json_is_accepted(schema_set: SchemaSet) -> None:
    content = "```json\n" + json.dumps(blank_answer()) + "\n```"
    assert parse_answer(schema_set, content, IDS)["rooms"] == []


def test_class_level_lexicon_rules_are_checked_after_parsing(tmp_path: Path) -> None:
    """Rules strict mode cannot carry (here an if/then on the class) are enforced by the lexicon check."""
    root = copy_set(tmp_path)
    layout = json.loads((root / "layout.json").read_text())
    layout["allOf"].append(
        {
            "if": {"properties": {"is_exterior": {"const": True}}},
            "then": {"properties": {"is_finished": {"const": True}}},
        }
    )
    rewrite_set(root, {"layout": layout})
    newer = SchemaSet.load(root)
    outside = {**blank_layout(newer), "is_exterior": True, "is_finished": False}
    with pytest.raises(
        AnswerError, match=r"breaks the lexicon: \$\.rooms\[0\]\.layout\.is_finished"
    ) as caught:
        parse_answer(newer, json.dumps(blank_answer([room("yard", ["img_1"], outside)])), IDS)
    assert caught.value.kind == "schema"


# --- small helpers --------------------------------------------------------------------------------------


def test_formats() -> None:
    assert is_ipfs_uri("./kitchen_1.jpg")
    assert is_ipfs_uri("ipfs://bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
    assert not is_ipfs_uri("kitchen_1.jpg")
    assert not is_ipfs_uri("./../secret.jpg")
    assert not is_ipfs_uri("./")
    assert not is_ipfs_uri("ipfs://not-a-cid")
    assert is_uri("https://pbcpao.gov/Property/Details")
    assert not is_uri("pbcpao.gov/Property")
    assert not is_uri("https://")
    assert not is_uri("https://host/with space")


# --- strict conversion of whatever a set uses -------------------------------------------------------------


def test_constructs_of_a_newer_set_go_into_the_request_or_are_checked_after(tmp_path: Path) -> None:
    root = copy_set(tmp_path)
    layout = json.loads((root / "layout.json").read_text())
    layout["properties"].update(
        {
            "hue": {"const": "Warm"},
            "ceiling_height": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}]},
            "trim_width": {
                "oneOf": [
                    {"type": "number", "minimum": 1},
                    {"type": "string", "pattern": "^\\d+ in$"},
                    {"type": "null"},
                ]
            },
            "inspected_on": {"type": ["string", "null"], "format": "date"},
            "trim_color": {"type": "string", "enum": ["White", "Black", None]},
            "door_code": {"type": ["string", "null"], "pattern": "^[A-Z]{2}$"},
        }
    )
    layout["required"] += ["hue", "trim_color"]
    rewrite_set(root, {"layout": layout})
    newer = SchemaSet.load(root)
    props = response_schema(newer, IDS)["properties"]["rooms"]["items"]["properties"]["layout"]["properties"]
    assert props["hue"] == {"type": "string", "enum": ["Warm"]}
    assert props["ceiling_height"] == {"minimum": 0, "type": ["number", "null"]}
    assert props["trim_width"] == {"type": ["number", "string", "null"]}
    assert props["inspected_on"] == {"format": "date", "type": ["string", "null"]}
    assert props["trim_color"] == {"type": "string", "enum": ["White", "Black"]}  # type refuses null
    assert props["door_code"] == {"pattern": "^[A-Z]{2}$", "type": ["string", "null"]}
    for field in ("source_http_request", "request_identifier", "space_index", "space_type_index"):
        assert field not in props
    base = {**blank_layout(newer), "hue": "Warm", "trim_color": "White", "door_code": "AB"}
    lax = {**base, "ceiling_height": 2.5, "trim_width": "wide", "inspected_on": "soon"}
    parsed = parse_answer(newer, json.dumps(blank_answer([room("den", ["img_1"], lax)])), IDS)
    layout = parsed["rooms"][0]["layout"]
    assert layout["trim_width"] is None  # fits no branch: nullable, so null
    assert layout["inspected_on"] is None  # not a date (a server that ignores `format`)
    assert (layout["ceiling_height"], layout["door_code"]) == (2.5, "AB")
    below = blank_answer([room("den", ["img_1"], {**lax, "ceiling_height": -3.0})])
    with pytest.raises(AnswerError, match=r"ceiling_height: -3\.0 is less than the minimum of 0"):
        parse_answer(newer, json.dumps(below), IDS)


def test_descriptions_that_only_restate_the_name_are_left_out(schema_set: SchemaSet) -> None:
    schema = response_schema(schema_set, IDS)
    layout = schema["properties"]["rooms"]["items"]["properties"]["layout"]["properties"]
    structure = schema["properties"]["structure"]["anyOf"][0]["properties"]
    assert "description" not in layout["flooring_material_type"]  # "Refers to the type of material ..."
    assert "description" not in layout["paint_condition"]  # short, and the enum says it all
    assert layout["size_square_feet"]["description"] == "Room area in square feet."  # units: kept
    assert "'SemiDetached' means" in structure["attachment_type"]["description"]  # explains values
    assert "description" not in schema["properties"]["rooms"]["items"]["properties"]["layout"]
    # 32,552 characters before (json.dumps, 3 image ids); every request carries it.
    assert len(json.dumps(schema)) < 27_500
