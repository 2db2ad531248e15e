"""Rooms on record from county data: how many bedrooms and bathrooms a property has, by space type.

The county data group of a property holds one lexicon `layout` object per recorded space, as
`<county-data-dir>/<property_id>/layout_<N>.json`. Counting their `space_type`s gives the rooms on
record (`{"Bedroom": 2, "Primary Bedroom": 1, "Full Bathroom": 2}`): the prompt tells the model about
them, and the merge writes at least that many bedroom and bathroom layouts. A property without county
data works as before; a county file that cannot be read is skipped with a warning naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

BEDROOM = "bedroom"
BATHROOM = "bathroom"
COUNTED_KINDS = (BEDROOM, BATHROOM)
"""The kinds of room the merge guarantees at least the recorded number of."""

_LAYOUT_FILE = re.compile(r"layout_(\d+)\.json")
_BEDROOM_WORDS = ("bedroom", "nursery")
_BATHROOM_WORDS = ("bathroom", "powder room")


def room_kind(space_type: object) -> str | None:
    """`bedroom` ("Bedroom", "Primary Bedroom", "Guest Bedroom", "Nursery", ...), `bathroom` ("Full
    Bathroom", "Half Bathroom / Powder Room", ...) or None. Works for any set's space-type names."""
    if not isinstance(space_type, str):
        return None
    text = space_type.lower()
    if any(word in text for word in _BATHROOM_WORDS):
        return BATHROOM
    if any(word in text for word in _BEDROOM_WORDS):
        return BEDROOM
    return None


def kind_totals(counts: Mapping[str, int]) -> dict[str, int]:
    """Bedrooms and bathrooms on record: `{"bedroom": 3, "bathroom": 2}` (kinds with none left out)."""
    totals = dict.fromkeys(COUNTED_KINDS, 0)
    for space_type, count in counts.items():
        kind = room_kind(space_type)
        if kind is not None and count > 0:
            totals[kind] += count
    return {kind: n for kind, n in totals.items() if n}


def _layout_files(folder: Path) -> list[Path]:
    found = []
    for path in folder.iterdir():
        match = _LAYOUT_FILE.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _number, path in sorted(found)]


def read_county_rooms(folder: Path) -> tuple[dict[str, int], list[str]]:
    """Space type -> count over the `layout_<N>.json` files of one property folder, and one warning per
    file that could not be used. Layouts without a space type are not counted."""
    counts: dict[str, int] = {}
    warnings: list[str] = []
    for path in _layout_files(folder):
        try:
            layout = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            warnings.append(f"county data {path}: cannot read it ({detail}): skipped")
            continue
        if not isinstance(layout, dict):
            warnings.append(f"county data {path}: not a JSON object: skipped")
            continue
        space_type = layout.get("space_type")
        if isinstance(space_type, str) and space_type.strip():
            counts[space_type] = counts.get(space_type, 0) + 1
    return counts, warnings


def _safe_folder_name(property_id: str) -> bool:
    return bool(property_id) and property_id not in (".", "..") and Path(property_id).name == property_id


class CountyData:
    """Rooms on record per property, read once each from `root` (what a run's `county_rooms` calls).

    `warn` receives one line per county file that could not be used. A missing `root` means no county
    data at all.
    """

    def __init__(self, root: Path, warn: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.warn = warn
        self._known: dict[str, dict[str, int] | None] = {}

    def __call__(self, property_id: str) -> Mapping[str, int] | None:
        if property_id not in self._known:
            self._known[property_id] = self._read(property_id)
        return self._known[property_id]

    def _read(self, property_id: str) -> dict[str, int] | None:
        if not _safe_folder_name(property_id):
            return None
        folder = self.root / property_id
        if not folder.is_dir():
            return None
        try:
            counts, warnings = read_county_rooms(folder)
        except OSError as exc:
            warnings, counts = [f"county data {folder}: cannot list it ({exc.strerror or exc})"], {}
        self._report(warnings)
        return counts or None

    def _report(self, warnings: Iterable[str]) -> None:
        if self.warn is not None:
            for message in warnings:
                self.warn(message)
