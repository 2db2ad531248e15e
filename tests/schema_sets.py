"""Schema sets for tests: copies of the pinned set with edits, CIDs and links redone like a new release."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from image_analyzer.schemas import bundled_schema_dir, compute_cid

NEW_SPACE_TYPE = "Sauna"
SPACE_TYPE_INDEX = {
    "description": "Index of the space among spaces of its type, optionally nested (building.room).",
    "pattern": "^\\d+(\\.\\d+)*$",
    "type": "string",
}

Edit = Callable[[dict[str, Any]], None]


def _relink(node: Any, renamed: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: renamed.get(v, v) if k == "cid" else _relink(v, renamed) for k, v in node.items()}
    if isinstance(node, list):
        return [_relink(v, renamed) for v in node]
    return node


def publish(root: Path, edits: Mapping[str, Edit]) -> dict[str, str]:
    """Apply `edits` (schema name -> in-place change) to the set in `root`, then give every changed file
    its new CID and rewrite every schema that links to a changed one, until nothing changes. Returns the
    new manifest's name -> CID."""
    manifest = json.loads((root / "manifest.json").read_text())
    documents = {name: json.loads((root / f"{name}.json").read_bytes()) for name in manifest}
    for name, edit in edits.items():
        edit(documents[name])
    changed = set(edits)
    while changed:
        renamed: dict[str, str] = {}
        for name in sorted(changed):
            data = json.dumps(documents[name], sort_keys=True, separators=(",", ":")).encode()
            (root / f"{name}.json").write_bytes(data)
            old, new = manifest[name]["cid"], compute_cid(data)
            manifest[name]["cid"] = new
            if old != new:
                renamed[old] = new
        changed = set()
        for name, document in documents.items():
            relinked = _relink(document, renamed)
            if relinked != document:
                documents[name] = relinked
                changed.add(name)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {name: entry["cid"] for name, entry in manifest.items()}


def add_space_type_index_and_member(layout: dict[str, Any]) -> None:
    """What a newer lexicon release does: a required `space_type_index` and a new space type."""
    layout["properties"]["space_type_index"] = dict(SPACE_TYPE_INDEX)
    layout["required"].append("space_type_index")
    members = layout["properties"]["space_type"]["enum"]
    members.insert(members.index(None), NEW_SPACE_TYPE)


def make_newer_set(target: Path) -> Path:
    """A copy of the pinned set as a newer release: layout gains `space_type_index` and "Sauna"."""
    shutil.copytree(bundled_schema_dir(), target)
    for path in target.iterdir():
        path.chmod(0o644)
    publish(target, {"layout": add_space_type_index_and_member})
    return target


def set_files_by_cid(root: Path) -> dict[str, bytes]:
    """CID -> bytes of every file of a set, as a gateway would serve them."""
    manifest = json.loads((root / "manifest.json").read_text())
    return {entry["cid"]: (root / f"{name}.json").read_bytes() for name, entry in manifest.items()}
