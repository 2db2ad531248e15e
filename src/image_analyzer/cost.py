"""What requests cost: a price table (per model, USD per 1M tokens) and a ledger of what was spent.

Pure: no I/O beyond reading an optional price file. An unknown model or a response without usage
is an *unknown* cost, never $0: totals carry `cost_known=False` so nobody mistakes it for free.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_analyzer.domain import Usage
from image_analyzer.errors import ConfigError

BATCH_DISCOUNT = 0.5
"""The Batch API bills input and output at half the standard rate."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens on the standard tier, and the date someone last checked it."""

    input_per_m: float
    cached_input_per_m: float | None
    output_per_m: float
    checked: str


# Standard-tier list prices from OpenAI's pricing and model pages. Prices change: override with
# `--prices FILE` rather than editing this table in place, and bump `checked` when you verify them.
_CHECKED = "2026-11-30"
BUILTIN_PRICES: Mapping[str, Price] = {
    "gpt-4o": Price(2.50, 1.25, 10.00, _CHECKED),
    # The first gpt-4o snapshot kept its launch price; every later snapshot maps to "gpt-4o".
    "gpt-4o-2024-05-13": Price(5.00, None, 15.00, _CHECKED),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60, _CHECKED),
    "gpt-4.1": Price(2.00, 0.50, 8.00, _CHECKED),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60, _CHECKED),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40, _CHECKED),
    "gpt-5": Price(1.25, 0.125, 10.00, _CHECKED),
    "gpt-5-mini": Price(0.25, 0.025, 2.00, _CHECKED),
    "gpt-5-nano": Price(0.05, 0.005, 0.40, _CHECKED),
}

_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def base_model_name(model: str) -> str:
    """`gpt-4o-2024-08-06` -> `gpt-4o`: dated snapshots share their family's price."""
    return _DATE_SUFFIX.sub("", model.strip().lower())


class PriceTable:
    """Prices by model name. `price_for` answers None for a model it does not know."""

    def __init__(self, prices: Mapping[str, Price], *, batch_discount: float = BATCH_DISCOUNT) -> None:
        self._prices = {name.strip().lower(): price for name, price in prices.items()}
        self.batch_discount = batch_discount

    @classmethod
    def builtin(cls) -> PriceTable:
        return cls(BUILTIN_PRICES)

    @classmethod
    def load(cls, path: Path | None) -> PriceTable:
        """The table a run uses: `--prices FILE` over the built-in prices, or the built-in ones alone."""
        return cls.from_file(path) if path is not None else cls.builtin()

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        """The built-in table with the file's entries laid over it (the file wins per model)."""
        overrides = _read_price_file(path)
        return cls({**BUILTIN_PRICES, **overrides})

    def models(self) -> list[str]:
        return sorted(self._prices)

    def price_for(self, model: str) -> Price | None:
        name = model.strip().lower()
        return self._prices.get(name) or self._prices.get(base_model_name(name))

    def cost(self, model: str, usage: Usage | None, *, batch: bool = False) -> float | None:
        """USD for one response; None when the usage or the model's price is unknown."""
        price = self.price_for(model)
        if usage is None or price is None:
            return None
        cached = min(max(usage.cached_tokens, 0), usage.prompt_tokens)
        cached_rate = price.input_per_m if price.cached_input_per_m is None else price.cached_input_per_m
        total = (
            (usage.prompt_tokens - cached) * price.input_per_m
            + cached * cached_rate
            + usage.completion_tokens * price.output_per_m
        ) / 1_000_000
        return total * self.batch_discount if batch else total


def _read_price_file(path: Path) -> dict[str, Price]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"price file {path} does not exist: check --prices") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"price file {path} cannot be read: {exc.__class__.__name__}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"price file {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f'price file {path} must hold a JSON object like {{"gpt-4o": {{...}}}}')
    return {str(model): _parse_price(path, str(model), entry) for model, entry in raw.items()}


def _parse_price(path: Path, model: str, entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise ConfigError(f"price file {path}: entry {model!r} must be an object")
    unknown = set(entry) - {"input_per_m", "cached_input_per_m", "output_per_m", "checked"}
    if unknown:
        raise ConfigError(f"price file {path}: entry {model!r} has unknown keys {sorted(unknown)}")
    checked = entry.get("checked", "unspecified")
    if not isinstance(checked, str):
        raise ConfigError(f"price file {path}: {model}.checked must be a date string like 2026-01-31")
    return Price(
        input_per_m=_rate(path, model, entry, "input_per_m", required=True) or 0.0,
        cached_input_per_m=_rate(path, model, entry, "cached_input_per_m", required=False),
        output_per_m=_rate(path, model, entry, "output_per_m", required=True) or 0.0,
        checked=checked,
    )


def _rate(path: Path, model: str, entry: Mapping[str, Any], key: str, *, required: bool) -> float | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ConfigError(f"price file {path}: {model}.{key} must be a number >= 0 (USD per 1M tokens)")


@dataclass(frozen=True, slots=True)
class CostTotals:
    """Sums over some responses. `cost_usd` sums the known part; `cost_known` says if that is all."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    requests_without_usage: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, usage: Usage | None, cost: float | None) -> CostTotals:
        usage_part = usage or Usage()
        return CostTotals(
            requests=self.requests + 1,
            prompt_tokens=self.prompt_tokens + usage_part.prompt_tokens,
            completion_tokens=self.completion_tokens + usage_part.completion_tokens,
            cached_tokens=self.cached_tokens + usage_part.cached_tokens,
            cost_usd=self.cost_usd + (cost or 0.0),
            cost_known=self.cost_known and cost is not None,
            requests_without_usage=self.requests_without_usage + (usage is None),
        )

    def __add__(self, other: CostTotals) -> CostTotals:
        return CostTotals(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            cost_known=self.cost_known and other.cost_known,
            requests_without_usage=self.requests_without_usage + other.requests_without_usage,
        )

    @property
    def cost_or_none(self) -> float | None:
        """The total when every part is known, else None (for events that carry `cost_usd: float | None`)."""
        return self.cost_usd if self.cost_known else None


class CostLedger:
    """Every response's usage and cost, summed per (property, category), per property and per run."""

    def __init__(self) -> None:
        self._by_category: dict[tuple[str, str], CostTotals] = {}
        self._run = CostTotals()

    def add(self, property_id: str, category: str, usage: Usage | None, cost: float | None) -> None:
        key = (property_id, category)
        self._by_category[key] = self._by_category.get(key, CostTotals()).add(usage, cost)
        self._run = self._run.add(usage, cost)

    @property
    def spent_usd(self) -> float:
        """Known spend so far: what the budget gate compares with `--max-cost`."""
        return self._run.cost_usd

    def run_total(self) -> CostTotals:
        return self._run

    def category_total(self, property_id: str, category: str) -> CostTotals:
        return self._by_category.get((property_id, category), CostTotals())

    def property_total(self, property_id: str) -> CostTotals:
        return _sum(t for (pid, _), t in self._by_category.items() if pid == property_id)

    # Shortcuts for events, whose `cost_usd` is None when any part is unknown.

    def category_cost(self, property_id: str, category: str) -> float | None:
        return self.category_total(property_id, category).cost_or_none

    def category_usage(self, property_id: str, category: str) -> Usage:
        totals = self.category_total(property_id, category)
        return Usage(totals.prompt_tokens, totals.completion_tokens, totals.cached_tokens)

    def property_cost(self, property_id: str) -> float | None:
        return self.property_total(property_id).cost_or_none

    def run_cost(self) -> float | None:
        return self._run.cost_or_none

    def per_category(self) -> dict[tuple[str, str], CostTotals]:
        return dict(self._by_category)

    def per_category_name(self) -> dict[str, CostTotals]:
        """Totals by category name across all properties (e.g. what all kitchens cost)."""
        out: dict[str, CostTotals] = {}
        for (_, category), totals in self._by_category.items():
            out[category] = out.get(category, CostTotals()) + totals
        return out

    def per_property(self) -> dict[str, CostTotals]:
        out: dict[str, CostTotals] = {}
        for (property_id, _), totals in self._by_category.items():
            out[property_id] = out.get(property_id, CostTotals()) + totals
        return out


def _sum(parts: Iterable[CostTotals]) -> CostTotals:
    total = CostTotals()
    for part in parts:
        total = total + part
    return total


def format_usd(value: float | None, *, known: bool = True) -> str:
    """`$0.0234`; `unknown` for None; a partly unknown total reads `$0.0234 + unknown`."""
    if value is None:
        return "unknown"
    if value == 0:
        text = "$0.00"
    elif abs(value) < 0.0001:
        text = "<$0.0001"
    elif abs(value) >= 100:
        text = f"${value:,.2f}"
    else:
        text = f"${value:.4f}"
    return text if known else f"{text} + unknown"
