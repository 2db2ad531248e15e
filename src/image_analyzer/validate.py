"""Offline validation of property folders, the way the Elephant validator does it.

1. Find the data-group root file, `<dataGroup cid>.json`.
2. In the data-group schema, replace each link node `{"type": "string", "cid": X}` with the schema whose
   CID is X (recursively: relationship schemas link to class schemas).
3. In the data, replace each `{"/": "./x.json"}` with the parsed content of that file, relative to the file
   holding the link. A link to a missing file is a problem.
4. Validate the whole group at once (draft-07, every error) with formats `ipfs_uri` and `uri`.
5. Report every JSON data file that no link reaches ("unused data file").

`property.json` comes later from the county step: while it is absent, links to it are not followed and the
property side of each relationship is not checked, unless the caller supplies it.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from image_analyzer.errors import SchemaError
from image_analyzer.schemas import SchemaSet, describe_error, format_checker, json_path
from image_analyzer.store import RUNS_DIR, STATE_DIR

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

PROPERTY_FILE = "property.json"
_UNKNOWN_CID = "x-unknown-cid"

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One validation finding: the file, a JSON path inside it (`$.relationships...`) and what is wrong."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file} {self.path}: {self.message}"


def _is_link(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and isinstance(node.get("/"), str)


def expand_schema(schema_set: SchemaSet, name: str) -> dict[str, Any]:
    """The schema `name` with every `{"type": "string", "cid": X}` node replaced by the schema of CID X."""
    by_cid = schema_set.cid_to_name
    expanded: dict[str, Any] = {}

    def expand(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [expand(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        cid = node.get("cid")
        if isinstance(cid, str) and node.get("type") == "string":
            if cid in stack:
                raise SchemaError(f"schema {cid} links back to itself")
            target = by_cid.get(cid)
            if target is None:
                return {_UNKNOWN_CID: cid}
            if cid not in expanded:
                expanded[cid] = expand(_without_ids(schema_set.documents[target]), (*stack, cid))
            return expanded[cid]
        return {key: expand(value, stack) for key, value in node.items()}

    return dict(expand(_without_ids(schema_set.documents[name]), ()))


def _without_ids(document: Mapping[str, Any]) -> dict[str, Any]:
    """Nested `$schema`/`$id` would start new schema resources; the group is one draft-07 schema."""
    return {key: value for key, value in document.items() if key not in ("$schema", "$id")}


def _unknown_cid(validator: Any, cid: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    from jsonschema.exceptions import ValidationError

    yield ValidationError(f"links to a document of schema {cid}, which is not in the schema set")


def _group_validator(schema: dict[str, Any]) -> Any:
    from jsonschema import Draft7Validator, validators

    validator_class = validators.extend(  # type: ignore[no-untyped-call]
        Draft7Validator, {_UNKNOWN_CID: _unknown_cid}
    )
    return validator_class(schema, format_checker=format_checker())


@dataclass
class _Linker:
    """Substitutes linked files into the data and remembers which file each part came from."""

    docs: Mapping[str, Any]
    unparsable: frozenset[str]
    optional: frozenset[str]
    reached: set[str] = field(default_factory=set)
    owners: dict[Path_, str] = field(default_factory=dict)
    """Where a file's content starts in the combined document -> that file's name."""
    skipped: set[Path_] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)

    def resolve(self, name: str, at: Path_ = (), stack: tuple[str, ...] = ()) -> Any:
        self.reached.add(name)
        self.owners[at] = name
        return self._walk(self.docs[name], name, at, (*stack, name))

    def _walk(self, node: Any, holder: str, at: Path_, stack: tuple[str, ...]) -> Any:
        if _is_link(node):
            return self._follow(node["/"], holder, at, stack)
        if isinstance(node, dict):
            return {key: self._walk(value, holder, (*at, key), stack) for key, value in node.items()}
        if isinstance(node, list):
            return [self._walk(value, holder, (*at, i), stack) for i, value in enumerate(node)]
        return node

    def _follow(self, link: str, holder: str, at: Path_, stack: tuple[str, ...]) -> Any:
        target = _link_target(holder, link)
        if target is not None and target not in stack and target in self.docs:
            return self.resolve(target, at, stack)
        # Not followed: schema errors about the link object itself would only be noise.
        self.skipped.add(at)
        problem = self._link_problem(link, target, stack)
        if problem is not None:
            self.problems.append(Problem(holder, self.relative_path(at)[1], problem))
        return {"/": link}

    def _link_problem(self, link: str, target: str | None, stack: tuple[str, ...]) -> str | None:
        if target is None:
            return f"link {link!r} must be a relative ./ path inside the folder"
        if target in stack:
            return f"link to {link} makes a cycle"
        if target in self.optional or target in self.unparsable:
            return None
        return f"link to missing file {link}"

    def owner_of(self, at: Path_, *, of_link: bool = False) -> tuple[str, Path_]:
        """The file holding `at` and the path inside it; `of_link`: the file holding the link at `at`."""
        for depth in range(len(at) - 1 if of_link and at else len(at), -1, -1):
            owner = self.owners.get(at[:depth])
            if owner is not None:
                return owner, at[depth:]
        raise AssertionError("the root file owns every path")

    def relative_path(self, at: Path_, *, of_link: bool = False) -> tuple[str, str]:
        name, rest = self.owner_of(at, of_link=of_link)
        return name, json_path(rest)

    def is_skipped(self, at: Path_) -> bool:
        return any(at[:depth] in self.skipped for depth in range(len(at) + 1))


def _link_target(holder: str, link: str) -> str | None:
    """The folder-relative name a link points at, or None when it leaves the folder or is not relative."""
    if "://" in link or link.startswith("/") or "\\" in link:
        return None
    target = posixpath.normpath(posixpath.join(posixpath.dirname(holder), link))
    if target in (".", "..") or target.startswith("../"):
        return None
    return target


def _parse(files: Mapping[str, bytes]) -> tuple[dict[str, Any], list[Problem]]:
    docs: dict[str, Any] = {}
    problems = []
    for name in sorted(files):
        try:
            docs[name] = json.loads(files[name])
        except ValueError as exc:
            problems.append(Problem(name, "$", f"not valid JSON: {exc}"))
    return docs, problems


def validate_property_files(
    files: Mapping[str, bytes], schema_set: SchemaSet, *, property_json: bytes | None = None
) -> list[Problem]:
    """Validate one property folder given as file name -> bytes (JSON files only). Empty list: valid."""
    if property_json is not None:
        files = {**files, PROPERTY_FILE: property_json}
    docs, problems = _parse(files)
    return problems + _validate_group(files, docs, schema_set)


def _validate_group(
    files: Mapping[str, bytes], docs: Mapping[str, Any], schema_set: SchemaSet
) -> list[Problem]:
    """Steps 1-5 of the module doc over the parsed `docs` (`files` also holds the unparsable ones)."""
    problems: list[Problem] = []
    root = f"{schema_set.data_group_cid}.json"
    if root not in docs:
        if root not in files:
            problems.append(Problem(root, "$", "the data-group root file is missing"))
        return problems
    linker = _Linker(
        docs=docs,
        unparsable=frozenset(files) - frozenset(docs),
        optional=frozenset() if PROPERTY_FILE in files else frozenset({PROPERTY_FILE}),
    )
    instance = linker.resolve(root)
    problems.extend(linker.problems)
    validator = _group_validator(expand_schema(schema_set, schema_set.data_group_name))
    errors: list[ValidationError] = list(validator.iter_errors(instance))
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        at = tuple(error.absolute_path)
        if linker.is_skipped(at):
            continue
        # A document in a slot whose schema is unknown is the slot's fault, not the document's.
        name, path = linker.relative_path(at, of_link=error.validator == _UNKNOWN_CID)
        problems.append(Problem(name, path, describe_error(error)))
    for name in sorted(docs):
        if name != root and name not in linker.reached:
            problems.append(Problem(name, "$", "unused data file: no relationship links to it"))
    return list(dict.fromkeys(problems))


def _missing_media(folder: Path, docs: Mapping[str, Any]) -> list[Problem]:
    """File objects whose relative `ipfs_url` points at nothing in the folder."""
    problems = []
    for name, doc in sorted(docs.items()):
        url = doc.get("ipfs_url") if isinstance(doc, dict) else None
        if isinstance(url, str) and url.startswith("./"):
            target = _link_target(name, url)
            if target is not None and not (folder / target).is_file():
                problems.append(Problem(name, "$.ipfs_url", f"{url} is not in the folder"))
    return problems


def validate_property_folder(folder: Path, schema_set: SchemaSet) -> list[Problem]:
    """Validate the `*.json` files of one property folder (images are not read)."""
    if not folder.is_dir():
        return [Problem(folder.name, "$", f"not a folder: {folder}")]
    files: dict[str, bytes] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.suffix != ".json" or path.name.startswith(".") or not path.is_file():
            continue
        try:
            files[path.name] = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(path.name, "$", f"cannot read: {exc.strerror or exc}"))
    docs, parse_problems = _parse(files)
    return problems + parse_problems + _validate_group(files, docs, schema_set) + _missing_media(folder, docs)


def validate_output_dir(root: Path, schema_set: SchemaSet) -> dict[str, list[Problem]]:
    """Every property folder under an output root -> its problems (empty list: valid)."""
    results: dict[str, list[Problem]] = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name not in (RUNS_DIR, STATE_DIR) and not child.name.startswith("."):
            results[child.name] = validate_property_folder(child, schema_set)
    return results
