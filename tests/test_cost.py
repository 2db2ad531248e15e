"""Price table, cost arithmetic, the ledger and formatting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_analyzer.cost import (
    BUILTIN_PRICES,
    CostLedger,
    Price,
    PriceTable,
    base_model_name,
    format_usd,
)
from image_analyzer.domain import Usage
from image_analyzer.errors import ConfigError

TABLE = PriceTable.builtin()


def test_cost_bills_cached_tokens_at_the_cached_rate() -> None:
    usage = Usage(prompt_tokens=1_000, completion_tokens=200, cached_tokens=400)
    # gpt-4o: 600 x $2.50 + 400 x $1.25 + 200 x $10.00, per 1M tokens
    assert TABLE.cost("gpt-4o", usage) == pytest.approx(0.004)
    assert TABLE.cost("gpt-4o", usage, batch=True) == pytest.approx(0.002)


def test_cost_without_a_cached_price_bills_cached_tokens_as_input() -> None:
    table = PriceTable({"m": Price(1.0, None, 2.0, "2026-01-01")})
    assert table.cost("m", Usage(1_000_000, 0, 500_000)) == pytest.approx(1.0)


def test_dated_snapshots_map_to_their_family() -> None:
    assert base_model_name("gpt-4o-2024-08-06") == "gpt-4o"
    assert base_model_name("GPT-4.1-mini-2025-04-14") == "gpt-4.1-mini"
    assert TABLE.price_for("gpt-4o-2024-08-06") == BUILTIN_PRICES["gpt-4o"]
    assert TABLE.price_for("gpt-4o-mini-2024-07-18") == BUILTIN_PRICES["gpt-4o-mini"]
    # an exact entry beats the family: the first gpt-4o snapshot kept its launch price
    assert TABLE.price_for("gpt-4o-2024-05-13") != BUILTIN_PRICES["gpt-4o"]


def test_every_required_model_has_a_dated_price() -> None:
    required = {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
    }
    assert required <= set(BUILTIN_PRICES)
    for price in BUILTIN_PRICES.values():
        assert len(price.checked) == 10
        assert price.input_per_m > 0


def test_unknown_model_or_usage_is_unknown_not_free() -> None:
    assert TABLE.price_for("llava:13b") is None
    assert TABLE.cost("llava:13b", Usage(100, 100)) is None
    assert TABLE.cost("gpt-4o", None) is None


@given(
    prompt=st.integers(0, 10**7),
    completion=st.integers(0, 10**6),
    cached_share=st.floats(0, 1),
    model=st.sampled_from(sorted(BUILTIN_PRICES)),
)
def test_cache_hits_never_cost_more(prompt: int, completion: int, cached_share: float, model: str) -> None:
    cached = int(prompt * cached_share)
    with_cache = TABLE.cost(model, Usage(prompt, completion, cached))
    without = TABLE.cost(model, Usage(prompt, completion, 0))
    assert with_cache is not None
    assert without is not None
    assert 0 <= with_cache <= without + 1e-12


# --- the ledger ---------------------------------------------------------------------------------------


def test_ledger_totals_per_category_property_and_run() -> None:
    ledger = CostLedger()
    ledger.add("p1", "kitchen", Usage(100, 10, 0), 0.01)
    ledger.add("p1", "kitchen", Usage(200, 20, 50), 0.02)
    ledger.add("p1", "bedroom", Usage(300, 30, 0), 0.03)
    ledger.add("p2", "kitchen", Usage(400, 40, 0), 0.04)

    kitchen = ledger.category_total("p1", "kitchen")
    assert (kitchen.requests, kitchen.prompt_tokens, kitchen.completion_tokens) == (2, 300, 30)
    assert kitchen.cached_tokens == 50
    assert kitchen.cost_usd == pytest.approx(0.03)
    assert ledger.property_total("p1").cost_usd == pytest.approx(0.06)
    assert ledger.per_property()["p2"].requests == 1
    assert ledger.per_category_name()["kitchen"].cost_usd == pytest.approx(0.07)
    run = ledger.run_total()
    assert (run.requests, run.total_tokens, run.cost_known) == (4, 1100, True)
    assert ledger.spent_usd == pytest.approx(0.10)
    assert ledger.category_total("p9", "attic").requests == 0
    assert ledger.category_usage("p1", "kitchen") == Usage(300, 30, 50)
    assert ledger.category_cost("p1", "kitchen") == pytest.approx(0.03)
    assert ledger.property_cost("p2") == pytest.approx(0.04)
    assert ledger.run_cost() == pytest.approx(0.10)


def test_ledger_flags_unknown_parts_but_keeps_the_known_sum() -> None:
    ledger = CostLedger()
    ledger.add("p1", "kitchen", Usage(100, 10), 0.01)
    ledger.add("p1", "kitchen", None, None)
    ledger.add("p1", "bath", Usage(100, 10), None)

    kitchen = ledger.category_total("p1", "kitchen")
    assert kitchen.cost_known is False
    assert kitchen.cost_usd == pytest.approx(0.01)
    assert kitchen.cost_or_none is None
    assert kitchen.requests_without_usage == 1
    assert ledger.category_total("p1", "bath").cost_known is False
    assert ledger.run_total().cost_known is False
    assert ledger.category_cost("p1", "kitchen") is None
    assert ledger.property_cost("p1") is None
    assert ledger.run_cost() is None
    assert ledger.spent_usd == pytest.approx(0.01)


# --- price files --------------------------------------------------------------------------------------


def test_price_file_overrides_and_extends_the_builtin_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "gpt-4o": {
                    "input_per_m": 1.0,
                    "cached_input_per_m": 0.5,
                    "output_per_m": 4.0,
                    "checked": "2027-01-01",
                },
                "llava:13b": {"input_per_m": 0, "output_per_m": 0},
            }
        )
    )
    table = PriceTable.from_file(path)
    assert table.price_for("gpt-4o") == Price(1.0, 0.5, 4.0, "2027-01-01")
    assert table.price_for("gpt-4o-2024-08-06") == Price(1.0, 0.5, 4.0, "2027-01-01")
    assert table.cost("llava:13b", Usage(1000, 1000)) == 0.0
    assert table.price_for("gpt-4.1") == BUILTIN_PRICES["gpt-4.1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"m": 3}', "entry 'm' must be an object"),
        ('{"m": {"input_per_m": -1, "output_per_m": 1}}', "m.input_per_m must be a number"),
        ('{"m": {"input_per_m": 1}}', "m.output_per_m must be a number"),
        ('{"m": {"input_per_m": "cheap", "output_per_m": 1}}', "m.input_per_m must be a number"),
        ('{"m": {"input_per_m": 1, "output_per_m": 1, "currency": "EUR"}}', "unknown keys"),
    ],
)
def test_bad_price_files_are_config_errors_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        PriceTable.from_file(path)
    assert str(path) in str(caught.value)


def test_missing_price_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PriceTable.from_file(tmp_path / "nope.json")


# --- formatting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "known", "text"),
    [
        (0.0234, True, "$0.0234"),
        (None, True, "unknown"),
        (0.0, True, "$0.00"),
        (0.00001, True, "<$0.0001"),
        (12.5, True, "$12.5000"),
        (1234.5, True, "$1,234.50"),
        (0.0234, False, "$0.0234 + unknown"),
    ],
)
def test_format_usd(value: float | None, known: bool, text: str) -> None:
    assert format_usd(value, known=known) == text
