"""`image-analyzer report`: read the run summaries under `<output>/_runs/` and show them.

A summary is the run's `RunState.summary()` plus what the runner adds (run id, times, source, model,
exit code, why it stopped). Files are read leniently: a summary from an older version or a
half-written file must not stop the report, so missing fields get defaults and an unreadable file
is skipped with a warning.

Summaries that share a run id are shards of one run (`--shard`): they are merged into one run, and a
property that appears in two of them (a shard rerun) is counted once, from the later shard.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from image_analyzer.errors import ConfigError, OutputError
from image_analyzer.runstate import format_cost, format_count, format_duration
from image_analyzer.store import RUNS_DIR, atomic_write, describe_os_error

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

_log = logging.getLogger(__name__)

_TOTAL_KEYS = ("images", "images_analysed", "requests", "prompt_tokens", "completion_tokens", "cached_tokens")
_PROPERTY_COUNTERS = (*_TOTAL_KEYS, "skipped", "retries", "reasks", "reused_batches")
CSV_COLUMNS = (
    "run_id",
    "started_at",
    "finished_at",
    "source",
    "model",
    "dry_run",
    "property_id",
    "status",
    "images",
    "images_analysed",
    "skipped",
    "failed_categories",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_known",
    "duration_s",
)


# --------------------------------------------------------------------------- loading


def _warn_stderr(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def load_run_summaries(
    root: Path, *, on_problem: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Every readable summary under `root/_runs/` (or `root` itself if it is the `_runs` folder),
    oldest first. Unreadable files are reported through `on_problem` (default: stderr) and skipped."""
    warn = on_problem or _warn_stderr
    if not root.is_dir():
        raise ConfigError(f"output dir not found: {root}")
    runs_dir = root if root.name == RUNS_DIR else root / RUNS_DIR
    if not runs_dir.is_dir():
        return []
    summaries: list[dict[str, Any]] = []
    for path in sorted(runs_dir.glob("*.json")):
        summary = _read_summary(path, warn)
        if summary is not None:
            summaries.append(summary)
    summaries.sort(key=lambda s: (_timestamp(s.get("started_at")) or 0.0, str(s.get("run_id"))))
    return summaries


def _read_summary(path: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problem = f"skipping {path}: cannot read it ({exc.strerror or exc})"
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"skipping {path}: not valid JSON ({exc})"
    else:
        if isinstance(data, dict) and isinstance(data.get("run_id"), str):
            return data
        problem = f"skipping {path}: not a run summary (no run_id)"
    _log.warning("%s", problem)
    warn(problem)
    return None


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from an ISO string (the summary's format) or a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return None


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    return len(value) if isinstance(value, (list, tuple)) else 0


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# --------------------------------------------------------------------------- shaping


def _normal_property(data: Any) -> dict[str, Any]:
    prop = dict(data) if isinstance(data, dict) else {}
    for key in _PROPERTY_COUNTERS:
        prop[key] = _int(prop.get(key))
    failed = prop.get("failed_categories")
    prop["failed_categories"] = [str(c) for c in failed] if isinstance(failed, list) else []
    prop["cost_usd"] = _float(prop.get("cost_usd"))
    prop["cost_known"] = bool(prop.get("cost_known", prop["cost_usd"] is not None))
    prop["duration_s"] = _float(prop.get("duration_s"))
    return prop


def _normal_run(data: dict[str, Any]) -> dict[str, Any]:
    run = dict(data)
    properties = run.get("properties")
    items = properties.items() if isinstance(properties, dict) else ()
    run["properties"] = {str(pid): _normal_property(prop) for pid, prop in items}
    for key in (*_TOTAL_KEYS, "retries", "reasks", "reused_batches"):
        run[key] = _int(run.get(key))
    run["cost_usd"] = _float(run.get("cost_usd"))
    run["cost_known"] = bool(run.get("cost_known", run["cost_usd"] is not None))
    run["duration_s"] = _float(run.get("duration_s"))
    for key in ("failed_categories", "skipped_images"):
        value = run.get(key)
        run[key] = [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
    run["skipped"] = len(run["skipped_images"]) if run["skipped_images"] else _int(run.get("skipped"))
    return run


def merge_runs(summaries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per run id, oldest first; shards of one run merged without double counting."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:
        groups.setdefault(str(summary.get("run_id")), []).append(_normal_run(summary))
    runs = [_merge_shards(group) for group in groups.values()]
    runs.sort(key=lambda r: (_timestamp(r.get("started_at")) or 0.0, str(r.get("run_id"))))
    return runs


def _shard_key(run: dict[str, Any]) -> str:
    shard = run.get("shard")
    return json.dumps(shard if shard is not None else run, sort_keys=True, default=str)


def _merge_shards(group: list[dict[str, Any]]) -> dict[str, Any]:
    # The same shard twice (a rerun, a copied file): the later one wins.
    by_shard: dict[str, dict[str, Any]] = {}
    for run in sorted(group, key=lambda r: _timestamp(r.get("finished_at")) or 0.0):
        by_shard[_shard_key(run)] = run
    shards = list(by_shard.values())
    if len(shards) == 1:
        return shards[0]

    merged = dict(shards[0])
    properties: dict[str, dict[str, Any]] = {}
    for shard in shards:  # ordered by finish: a property in two shards keeps the later record
        properties.update(shard["properties"])
    merged["properties"] = properties
    for key in (*_TOTAL_KEYS, "retries", "reasks", "reused_batches"):
        merged[key] = sum(p[key] for p in properties.values())
    merged["cost_usd"] = round(sum(p["cost_usd"] or 0.0 for p in properties.values()), 6)
    merged["cost_known"] = all(p["cost_known"] for p in properties.values())
    merged["failed_categories"] = _unique(
        (f for s in shards for f in s["failed_categories"]), ("property_id", "category")
    )
    merged["skipped_images"] = _unique((f for s in shards for f in s["skipped_images"]), ("location",))
    merged["skipped"] = len(merged["skipped_images"])
    starts = [(t, s["started_at"]) for s in shards if (t := _timestamp(s.get("started_at"))) is not None]
    ends = [(t, s["finished_at"]) for s in shards if (t := _timestamp(s.get("finished_at"))) is not None]
    if starts:
        merged["started_at"] = min(starts, key=lambda pair: pair[0])[1]
    if ends:
        merged["finished_at"] = max(ends, key=lambda pair: pair[0])[1]
    if starts and ends:
        # Shards may run side by side: the run took from the first start to the last finish.
        merged["duration_s"] = round(max(t for t, _ in ends) - min(t for t, _ in starts), 3)
    codes = [s["exit_code"] for s in shards if isinstance(s.get("exit_code"), int)]
    merged["exit_code"] = max(codes) if codes else None
    merged["stopped_reason"] = next((s["stopped_reason"] for s in shards if s.get("stopped_reason")), None)
    merged["shards"] = [s.get("shard") for s in shards]
    return merged


def _unique(items: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for item in items:
        seen.setdefault(tuple(item.get(k) for k in keys), item)
    return list(seen.values())


def _totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    priced = [r for r in runs if r["cost_usd"] is not None]
    return {
        "runs": len(runs),
        "properties": sum(len(r["properties"]) for r in runs),
        **{key: sum(r[key] for r in runs) for key in _TOTAL_KEYS},
        "skipped": sum(r["skipped"] for r in runs),
        "failed_categories": sum(len(r["failed_categories"]) for r in runs),
        "cost_usd": round(sum(r["cost_usd"] for r in priced), 6),
        "cost_known": len(priced) == len(runs) and all(r["cost_known"] for r in runs),
        "duration_s": round(sum(r["duration_s"] or 0.0 for r in runs), 3),
    }


# --------------------------------------------------------------------------- outputs


def report_json(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the tables show, for machines: merged runs (with their properties) and totals."""
    runs = merge_runs(summaries)
    return {"runs": runs, "totals": _totals(runs)}


def write_report_csv(summaries: list[dict[str, Any]], path: Path) -> None:
    """One row per property per run. Raises `OutputError` naming the file if it cannot be written."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in merge_runs(summaries):
        for pid, prop in run["properties"].items():
            writer.writerow(
                {
                    "run_id": run.get("run_id"),
                    "started_at": run.get("started_at"),
                    "finished_at": run.get("finished_at"),
                    "source": run.get("source"),
                    "model": run.get("model"),
                    "dry_run": bool(run.get("dry_run")),
                    "property_id": pid,
                    "status": prop.get("status", ""),
                    "failed_categories": ";".join(prop["failed_categories"]),
                    **{key: prop[key] for key in (*_TOTAL_KEYS, "skipped")},
                    "cost_usd": "" if prop["cost_usd"] is None else prop["cost_usd"],
                    "cost_known": prop["cost_known"],
                    "duration_s": "" if prop["duration_s"] is None else prop["duration_s"],
                }
            )
    try:
        atomic_write(path, buffer.getvalue().encode("utf-8"))
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path) + " (--csv)") from exc


def _cost_cell(entry: dict[str, Any], estimated: bool = False) -> str:
    text = format_cost(entry["cost_usd"], entry["cost_known"])
    return f"~{text} (est.)" if estimated and text != "unknown" else text


def _started_cell(value: Any, *, short: bool = False) -> str:
    moment = _timestamp(value)
    if moment is None:
        return str(value) if value else "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M")


WIDE_REPORT = 120
RUN_COLUMNS = (
    "Run",
    "Started (UTC)",
    "Duration",
    "Model",
    "Properties",
    "Images",
    "Skipped",
    "Failed",
    "Tokens in",
    "Tokens out",
    "Cost",
    "Exit",
)
PROPERTY_COLUMNS = (
    "Run",
    "Property",
    "Images",
    "Skipped",
    "Failed categories",
    "Tokens in",
    "Tokens out",
    "Cost",
    "Duration",
)
# Under WIDE_REPORT columns (a pipe, a narrow terminal) the tables keep what identifies and matters.
NARROW_RUN_COLUMNS = ("Run", "Started (UTC)", "Images", "Skipped", "Failed", "Cost", "Exit")
NARROW_PROPERTY_COLUMNS = ("Property", "Images", "Skipped", "Failed", "Tokens", "Cost", "Duration")
_LEFT = ("Run", "Started (UTC)", "Model", "Property", "Failed categories")


def _table(title: str, headers: tuple[str, ...]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in headers:
        if header in _LEFT or (header == "Failed" and "Property" in headers):
            wraps = header in ("Failed categories", "Failed")
            table.add_column(header, no_wrap=not wraps, min_width=8 if wraps else None)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    return table


def _run_cells(run: dict[str, Any], narrow: bool) -> dict[str, str]:
    label = str(run.get("run_id")) + (" (dry run)" if run.get("dry_run") else "")
    if run.get("shards"):
        label += f" ({len(run['shards'])} shards)"
    return {
        "Run": label,
        "Started (UTC)": _started_cell(run.get("started_at"), short=narrow),
        "Duration": format_duration(run["duration_s"]),
        "Model": str(run.get("model") or "-"),
        "Properties": f"{len(run['properties']):,}",
        "Images": f"{run['images_analysed']:,}",
        "Skipped": f"{run['skipped']:,}",
        "Failed": f"{len(run['failed_categories']):,}",
        "Tokens in": f"{run['prompt_tokens']:,}",
        "Tokens out": f"{run['completion_tokens']:,}",
        "Cost": _cost_cell(run, bool(run.get("estimated"))),
        "Exit": "-" if run.get("exit_code") is None else str(run["exit_code"]),
    }


def _property_cells(run: dict[str, Any], pid: str, prop: dict[str, Any]) -> dict[str, str]:
    return {
        "Run": str(run.get("run_id")),
        "Property": pid,
        "Images": f"{prop['images_analysed']:,}",
        "Skipped": f"{prop['skipped']:,}",
        "Failed categories": ", ".join(prop["failed_categories"]) or "-",
        "Failed": ", ".join(prop["failed_categories"]) or "-",
        "Tokens in": f"{prop['prompt_tokens']:,}",
        "Tokens out": f"{prop['completion_tokens']:,}",
        "Tokens": format_count(prop["prompt_tokens"] + prop["completion_tokens"]),
        "Cost": _cost_cell(prop, bool(run.get("estimated"))),
        "Duration": format_duration(prop["duration_s"]),
    }


def _print_properties(
    console: Console, runs: list[dict[str, Any]], columns: tuple[str, ...], title: str
) -> None:
    table = _table(title, columns)
    for run in runs:
        for pid, prop in run["properties"].items():
            cells = _property_cells(run, pid, prop)
            table.add_row(*(cells[c] for c in columns))
    if table.rows:
        console.print(table)
        console.line()


def render_report(summaries: list[dict[str, Any]], console: Console) -> None:
    """A table of runs, a table of properties per run, and the totals; fewer columns when narrow."""
    runs = merge_runs(summaries)
    if not runs:
        console.print("No run summaries found.")
        return
    narrow = console.width < WIDE_REPORT

    run_columns = NARROW_RUN_COLUMNS if narrow else RUN_COLUMNS
    run_table = _table("Runs", run_columns)
    for run in runs:
        cells = _run_cells(run, narrow)
        run_table.add_row(*(cells[c] for c in run_columns))
    console.print(run_table)
    console.line()

    if narrow:
        # No room for a run column: one table per run.
        for run in runs:
            _print_properties(
                console, [run], NARROW_PROPERTY_COLUMNS, f"Properties of run {run.get('run_id')}"
            )
    else:
        _print_properties(console, runs, PROPERTY_COLUMNS, "Properties")

    totals = _totals(runs)
    console.print(
        f"{totals['runs']} run(s) · {totals['properties']:,} property result(s) · "
        f"{totals['images_analysed']:,} images analysed · {totals['skipped']:,} skipped · "
        f"{totals['failed_categories']:,} failed categories · "
        f"total cost {format_cost(totals['cost_usd'], totals['cost_known'])}",
        highlight=False,
    )
