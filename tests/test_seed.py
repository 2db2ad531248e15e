from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from image_analyzer.errors import ConfigError
from image_analyzer.seed import default_provenance, load_seed

LAYOUT_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "layout.json"
HEADER = "parcel_id,Address,method,headers,url,multiValueQueryString,body,json,source_identifier,County"


@pytest.fixture(scope="module")
def request_validator() -> jsonschema.Draft7Validator:
    """The lexicon's own rules for `source_http_request`: its property schema plus the if/then rules."""
    layout = json.loads(LAYOUT_SCHEMA.read_text(encoding="utf-8"))
    schema = {
        "type": "object",
        "required": ["source_http_request"],
        "properties": {"source_http_request": layout["properties"]["source_http_request"]},
        "allOf": layout["allOf"],
    }
    return jsonschema.Draft7Validator(schema)


def assert_lexicon_valid(validator: jsonschema.Draft7Validator, request: Any) -> None:
    errors = [error.message for error in validator.iter_errors({"source_http_request": request})]
    assert errors == []


def cell(value: Any) -> str:
    """`value` as JSON in one quoted CSV cell."""
    return '"' + json.dumps(value).replace('"', '""') + '"'


def write(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "seed.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_parcel_ids_are_text_and_keep_leading_zeros(tmp_path: Path) -> None:
    path = write(tmp_path, "0012345,1 Main St,GET,,https://county.example.gov/parcel,,,,SRC-1,Broward")
    table = load_seed(path)
    assert list(table) == ["0012345"]
    row = table["0012345"]
    assert (row.address, row.county, row.line) == ("1 Main St", "Broward", 2)
    provenance = row.provenance()
    assert provenance.request_identifier == "SRC-1"
    assert provenance.from_seed is True
    assert provenance.source_http_request == {"method": "GET", "url": "https://county.example.gov/parcel"}
    assert table.warnings == []


def test_request_identifier_falls_back_to_the_parcel_id(tmp_path: Path) -> None:
    table = load_seed(write(tmp_path, "007,,GET,,https://a.example/p,,,,,"))
    assert table["007"].provenance().request_identifier == "007"


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "seed.csv"
    text = HEADER + "\r\n" + "0512345678,x,GET,,https://a.example/x,,,,id1,Lee\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    table = load_seed(path)
    assert list(table) == ["0512345678"]
    assert table.rows["0512345678"].county == "Lee"


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "1,x", header="parcel_id,Address", name="my-seed.csv")
    with pytest.raises(ConfigError, match=r"^my-seed\.csv: missing column\(s\) method, url$"):
        load_seed(path)


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"seed file not found: .*--seed-csv"):
        load_seed(tmp_path / "absent.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "\n1,Caf\xe9,GET,,https://a.example,,,,,\n").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.csv: not UTF-8"):
        load_seed(path)


def test_duplicates_keep_the_first_and_empty_ids_are_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "11,first,GET,,https://a.example/one,,,,,",
        ",nobody,GET,,https://a.example/none,,,,,",
        "11,second,GET,,https://a.example/two,,,,,",
    )
    table = load_seed(path)
    assert table["11"].address == "first"
    assert len(table) == 1
    assert table.warnings == [
        "seed.csv line 3: empty parcel_id, row skipped",
        "seed.csv line 4: duplicate parcel_id 11 ignored (first on line 2)",
    ]


def test_query_string_moves_into_multi_value_query_string(
    tmp_path: Path, request_validator: jsonschema.Draft7Validator
) -> None:
    query_column = cell({"folio": "514114", "tab": ["a"]})
    path = write(
        tmp_path, f"1,x,get,,https://www.bcpa.net/RecInfo.asp?URL_Folio=514114&tab=a&tab=b,{query_column},,,,"
    )
    request = load_seed(path)["1"].request
    assert request == {
        "method": "GET",
        "url": "https://www.bcpa.net/RecInfo.asp",
        "multiValueQueryString": {"URL_Folio": ["514114"], "tab": ["a", "b"], "folio": ["514114"]},
    }
    assert_lexicon_valid(request_validator, request)


def test_post_json_row_gets_its_content_type(
    tmp_path: Path, request_validator: jsonschema.Draft7Validator
) -> None:
    path = write(tmp_path, f"2,x,POST,,https://api.example.com:8443/search/,,,{cell({'parcel': '0012'})},,")
    request = load_seed(path)["2"].request
    assert request == {
        "method": "POST",
        "url": "https://api.example.com:8443/search",
        "headers": {"content-type": "application/json"},
        "json": {"parcel": "0012"},
    }
    assert_lexicon_valid(request_validator, request)


def test_post_xml_body_and_json_body(tmp_path: Path, request_validator: jsonschema.Draft7Validator) -> None:
    xml_headers = cell({"Content-Type": "text/xml; charset=utf-8"})
    path = write(
        tmp_path,
        f"3,x,PUT,{xml_headers},https://a.example/soap,,<q>1</q>,,,",
        f"4,x,PATCH,,https://a.example/api,,{cell({'q': 1})},,,",
    )
    table = load_seed(path)
    assert table["3"].request["headers"] == {"content-type": "text/xml"}
    assert table["3"].request["body"] == "<q>1</q>"
    assert table["4"].request["json"] == {"q": 1}
    assert "body" not in table["4"].request
    for row in table.values():
        assert_lexicon_valid(request_validator, row.request)


def test_get_row_drops_body_json_and_headers(
    tmp_path: Path, request_validator: jsonschema.Draft7Validator
) -> None:
    headers = cell({"content-type": "application/json", "Authorization": "Bearer s3cret"})
    path = write(tmp_path, f"5,x,GET,{headers},https://a.example/p,,some body,[1],,")
    table = load_seed(path)
    assert table["5"].request == {"method": "GET", "url": "https://a.example/p"}
    assert_lexicon_valid(request_validator, table["5"].request)
    dropped = "header authorization, headers, body, json"
    assert table.warnings == [f"seed.csv line 2: dropped {dropped} (not allowed in source_http_request)"]
    assert "s3cret" not in " ".join(table.warnings)


def test_urls_are_normalised_to_the_lexicon_pattern(
    tmp_path: Path, request_validator: jsonschema.Draft7Validator
) -> None:
    path = write(
        tmp_path,
        "6,x,GET,,HTTPS://Bücher.example/a b/~x/#frag,,,,,",
        "7,x,,,http://a.example/,,,,,",
    )
    table = load_seed(path)
    assert table["6"].request["url"] == "https://xn--bcher-kva.example/a%20b/%7Ex"
    assert table["7"].request == {"method": "GET", "url": "http://a.example"}
    for row in table.values():
        assert_lexicon_valid(request_validator, row.request)


@pytest.mark.parametrize(
    ("row", "column", "problem"),
    [
        ("8,x,GET,,ftp://a.example/p,,,,,", "url", "must start with http"),
        ("8,x,GET,,https://user:pw@a.example/p,,,,,", "url", "credentials"),
        ("8,x,GET,,https://a_b.example/p,,,,,", "url", "lexicon url pattern"),
        ("8,x,GET,,,,,,,", "url", "empty url"),
        ("8,x,DELETE,,https://a.example,,,,,", "method", "not one of"),
        ("8,x,POST,,https://a.example,,,,,", "body", "needs a body or json"),
        ("8,x,POST,,https://a.example,,a=1,,,", "headers", "needs a content-type"),
        ("8,x,GET,,https://a.example,not json,,,,", "multiValueQueryString", "JSON object"),
        ('8,x,GET,"{""content-type"": ""image/png""}",https://a.example,,,,,', "headers", "not one of"),
    ],
)
def test_rows_that_cannot_be_made_valid_name_line_and_column(
    tmp_path: Path, row: str, column: str, problem: str
) -> None:
    path = write(tmp_path, "1,ok,GET,,https://a.example/ok,,,,,", row)
    with pytest.raises(ConfigError) as caught:
        load_seed(path)
    message = str(caught.value)
    assert message.startswith(f"seed.csv line 3, column {column}: ")
    assert problem in message
    assert "pw" not in message


def test_line_numbers_count_multi_line_cells(tmp_path: Path) -> None:
    path = write(tmp_path, '1,"two\nline address",GET,,https://a.example,,,,,', "2,x,GET,,bad-url,,,,,")
    with pytest.raises(ConfigError, match=r"^seed\.csv line 4, column url"):
        load_seed(path)


def test_default_provenance_is_a_valid_placeholder(request_validator: jsonschema.Draft7Validator) -> None:
    provenance = default_provenance("0512 345/ä")
    assert provenance.from_seed is False
    assert provenance.request_identifier == "0512 345/ä"
    url = provenance.source_http_request["url"]
    assert url.startswith("https://no-seed-row.invalid/property/0512%20345%2F")
    assert_lexicon_valid(request_validator, provenance.source_http_request)


def test_provenance_for_uses_the_row_or_the_placeholder(tmp_path: Path) -> None:
    table = load_seed(write(tmp_path, "1,x,GET,,https://a.example/p,,,,,"))
    assert table.provenance_for("1").from_seed is True
    assert table.provenance_for("2") == default_provenance("2")


def test_shipped_example_seed_is_valid(request_validator: jsonschema.Draft7Validator) -> None:
    table = load_seed(Path(__file__).resolve().parents[1] / "examples" / "seed.csv")
    assert list(table) == ["30434108090030050", "0512345678"]
    assert table.warnings == []
    for row in table.values():
        assert_lexicon_valid(request_validator, row.request)
