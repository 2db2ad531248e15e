"""Safe, stable names for things that end up in file names and model prompts.

Folder names and S3 keys are written by people: spaces, accents, emoji, `..`. Everything that becomes
part of an output path or an image id goes through `sanitize_component` first, so a hostile or merely
untidy name can never climb out of the output folder or break a schema pattern. Pure functions only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

MAX_COMPONENT_LENGTH = 80
_HASH_LENGTH = 8
_DISALLOWED = re.compile(r"[^a-z0-9_-]+")
_EDGE_CHARS = "_-."


def sanitize_component(text: str, *, fallback: str = "item") -> str:
    """Turn `text` into a lower-case ASCII name matching `^[a-z0-9][a-z0-9_-]*$`, at most 80 characters.

    Accents are folded (`Küche` -> `kuche`), every run of other characters becomes one `_`, and
    leading/trailing `_-.` are stripped. An empty result becomes `fallback` (itself sanitised). A
    result longer than the cap keeps its head plus a short hash of the whole original text, so two
    long names that differ only at the end stay distinct.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = _DISALLOWED.sub("_", ascii_text.lower()).strip(_EDGE_CHARS)
    if not cleaned:
        # The fallback goes through the same rules; "item" ends the recursion.
        return "item" if fallback == "item" else sanitize_component(fallback)
    if len(cleaned) <= MAX_COMPONENT_LENGTH:
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]
    head = cleaned[: MAX_COMPONENT_LENGTH - _HASH_LENGTH - 1].rstrip(_EDGE_CHARS)
    return f"{head}-{digest}"


def image_stem(name: str) -> str:
    """The file name without folders and without its last extension (`a/b/Photo 1.JPG` -> `Photo 1`)."""
    base = re.split(r"[\\/]", name)[-1]
    stem, dot, _suffix = base.rpartition(".")
    return stem if dot and stem else base


def unique_image_ids(names: Sequence[str]) -> list[str]:
    """One id per name, in order, unique within the sequence; nothing is ever dropped.

    Each id is `sanitize_component` of the file stem. When several names sanitise alike
    (`Kitchen 1.jpg`, `kitchen_1.png`), the first keeps the plain id and later ones get `-2`, `-3`...,
    skipping any suffix that another name already produces on its own, so the result depends only on
    the order of `names`.
    """
    bases = [sanitize_component(image_stem(name), fallback="image") for name in names]
    taken = set(bases)
    seen: Counter[str] = Counter()
    ids: list[str] = []
    for base in bases:
        seen[base] += 1
        if seen[base] == 1:
            ids.append(base)
            continue
        counter = seen[base]
        while f"{base}-{counter}" in taken:
            counter += 1
        candidate = f"{base}-{counter}"
        taken.add(candidate)
        ids.append(candidate)
    return ids
