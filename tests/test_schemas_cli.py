"""`image-analyzer schemas list | verify | fetch` (the sub-app, run in-process)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from image_analyzer.schemas import bundled_schema_dir
from image_analyzer.schemas_cli import schemas_app
from tests.helpers import CliResult
from tests.ipfs_gateway import serving
from tests.schema_sets import make_newer_set, set_files_by_cid

PINNED_GROUP = "bafkreievgc2kirgxpphmigdrdy5r6putjax2mz6xyjcsvjhsz3zgckrr44"


def schemas(args: Sequence[str], env: dict[str, str] | None = None) -> CliResult:
    result = CliRunner().invoke(schemas_app, list(args), env=env or {}, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMAGE_ANALYZER_CACHE_DIR", str(folder))
    monkeypatch.delenv("IMAGE_ANALYZER_SCHEMA_SET", raising=False)
    return folder


def test_list_shows_name_kind_and_cid_of_the_bundled_set(cache: Path) -> None:
    result = schemas(["list"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.stderr
    assert "(bundled)" in result.stdout
    assert f"Photo_Metadata          dataGroup      {PINNED_GROUP}" in result.stdout
    assert "property_to_layout      relationship" in result.stdout


def test_list_as_json_follows_schema_set(cache: Path, tmp_path: Path) -> None:
    newer = make_newer_set(tmp_path / "newer")
    pinned = json.loads(schemas(["list", "--json"]).stdout)
    assert pinned["data_group_cid"] == PINNED_GROUP
    assert len(pinned["schemas"]) == 14
    assert {"name": "layout", "kind": "class", "cid": pinned_cid("layout")} in pinned["schemas"]
    other = schemas(["list", "--json"], env={"IMAGE_ANALYZER_SCHEMA_SET": str(newer)})
    assert other.exit_code == 0, other.stderr
    assert json.loads(other.stdout)["data_group_cid"] != PINNED_GROUP


def pinned_cid(name: str) -> str:
    return str(json.loads((bundled_schema_dir() / "manifest.json").read_text())[name]["cid"])


def test_verify_passes_on_the_bundled_set_and_notes_links_outside_it(cache: Path) -> None:
    result = schemas(["verify"])
    assert result.exit_code == 0, result.stdout
    assert "14 of 14 schema files match their CIDs" in result.stdout
    assert "7 linked schema(s) not in the set" in result.stdout
    assert result.stdout.rstrip().endswith("usable for runs")


def test_verify_names_each_bad_file_and_exits_1(cache: Path, tmp_path: Path) -> None:
    broken = make_newer_set(tmp_path / "broken")
    (broken / "lot.json").write_bytes((broken / "lot.json").read_bytes() + b"\n")
    (broken / "utility.json").unlink()
    result = schemas(["verify", str(broken)])
    assert result.exit_code == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 2
    assert "lot.json does not match its CID" in bad[0]
    assert "utility.json" in bad[1] and "missing" in bad[1]
    assert "not usable for runs" in result.stdout


def test_verify_without_a_manifest_is_one_error_line(cache: Path, tmp_path: Path) -> None:
    result = schemas(["verify", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: schema manifest not found")
    assert len(result.stderr.strip().splitlines()) == 1


def test_fetch_writes_a_set_that_runs_can_use(cache: Path, tmp_path: Path) -> None:
    newer = make_newer_set(tmp_path / "newer")
    group = json.loads((newer / "manifest.json").read_text())["Photo_Metadata"]["cid"]
    dest = tmp_path / "fetched"
    with serving(set_files_by_cid(newer)) as gateway:
        result = schemas(["fetch", group, "--gateway", gateway.url, "--timeout", "5", "--dest", str(dest)])
    assert result.exit_code == 0, result.stderr
    assert f"{group}  dataGroup     Photo_Metadata" in result.stdout
    assert f"run with: --schema-set {dest}" in result.stdout
    assert result.stderr.count("warning: linked schema") == 7
    assert schemas(["verify", str(dest)]).exit_code == 0


def test_fetch_of_something_that_is_not_a_set_exits_1(cache: Path, tmp_path: Path) -> None:
    layout = pinned_cid("layout")
    result = schemas(["fetch", layout, "--gateway", "http://127.0.0.1:9"])  # bundled: no network needed
    assert result.exit_code == 1
    assert "error: a run cannot use this set" in result.stderr
    assert (cache / "schema-sets" / layout / "layout.json").is_file()


def test_fetch_with_a_bad_cid_is_one_error_line(cache: Path) -> None:
    result = schemas(["fetch", "not-a-cid"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: 'not-a-cid' is not a CID this tool can verify: "
        "expected CIDv1, raw codec, sha2-256, base32 (bafkrei...)\n"
    )
