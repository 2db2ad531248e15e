from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_analyzer.naming import MAX_COMPONENT_LENGTH, image_stem, sanitize_component, unique_image_ids

SAFE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Kitchen", "kitchen"),
        ("Primary Bedroom #2", "primary_bedroom_2"),
        ("Küche & Bad", "kuche_bad"),
        ("  --Exterior.. ", "exterior"),
        ("../../etc/passwd", "etc_passwd"),
        ("ＦＵＬＬ　ＷＩＤＴＨ", "full_width"),
        ("0012345", "0012345"),
    ],
)
def test_sanitize_examples(text: str, expected: str) -> None:
    assert sanitize_component(text) == expected


@pytest.mark.parametrize("text", ["", "...", "..", "/", "🏠🏠", "---___"])
def test_sanitize_never_empty(text: str) -> None:
    assert sanitize_component(text) == "item"
    assert sanitize_component(text, fallback="Photo!") == "photo"
    assert sanitize_component(text, fallback="%%%") == "item"


def test_long_names_are_capped_and_stay_distinct() -> None:
    first = sanitize_component("a" * 200 + "one")
    second = sanitize_component("a" * 200 + "two")
    assert len(first) <= MAX_COMPONENT_LENGTH
    assert len(second) <= MAX_COMPONENT_LENGTH
    assert first != second
    assert first.startswith("aaaa")
    assert sanitize_component(first) == first


@pytest.mark.parametrize(
    ("name", "stem"),
    [("Photo 1.JPG", "Photo 1"), ("a/b/c.final.png", "c.final"), (".jpg", ".jpg"), ("noext", "noext")],
)
def test_image_stem(name: str, stem: str) -> None:
    assert image_stem(name) == stem


def test_unique_ids_keep_every_name_in_order() -> None:
    names = ["Kitchen 1.jpg", "kitchen_1.png", "KITCHEN-1.gif", "other.jpg", "kitchen_1.webp"]
    assert unique_image_ids(names) == ["kitchen_1", "kitchen_1-2", "kitchen-1", "other", "kitchen_1-3"]


def test_unique_ids_skip_suffixes_other_names_use() -> None:
    assert unique_image_ids(["a.jpg", "a.png", "a-2.jpg"]) == ["a", "a-3", "a-2"]


def test_unique_ids_for_s3_keys_and_empty_stems() -> None:
    ids = unique_image_ids(["p/kitchen/Één.jpg", "p/kitchen/een.jpg", "🏠.png", "!!.jpg"])
    assert ids == ["een", "een-2", "image", "image-2"]


@given(st.text())
def test_sanitize_is_always_safe(text: str) -> None:
    result = sanitize_component(text)
    assert SAFE.match(result)
    assert "/" not in result
    assert ".." not in result
    assert len(result) <= MAX_COMPONENT_LENGTH
    assert sanitize_component(result) == result


@given(st.lists(st.text(), max_size=30))
def test_unique_ids_are_safe_unique_and_deterministic(names: list[str]) -> None:
    ids = unique_image_ids(names)
    assert len(ids) == len(names)
    assert len(set(ids)) == len(ids)
    assert all(SAFE.match(image_id) for image_id in ids)
    assert unique_image_ids(list(names)) == ids


@given(st.lists(st.sampled_from(["a.jpg", "A.png", "a-2.jpg", "a_2.gif", "a 2.jpg", "b.jpg"]), max_size=20))
def test_unique_ids_with_many_collisions(names: list[str]) -> None:
    ids = unique_image_ids(names)
    assert len(set(ids)) == len(names)
