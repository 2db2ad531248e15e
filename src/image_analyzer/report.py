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
from image_analyzer.runstate import format_cost, format_duration
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


def _started_cell(value: Any) -> str:
    moment = _timestamp(value)
    if moment is None:
        return str(value) if value else "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M")


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


def _table(title: str, headers: tuple[str, ...], *, left: tuple[str, ...]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in headers:
        if header in left:
            table.add_column(header, no_wrap=header != "Failed categories")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    return table


def render_report(summaries: list[dict[str, Any]], console: Console) -> None:
    """A table of runs, a table of properties per run, and the totals."""
    runs = merge_runs(summaries)
    if not runs:
        console.print("No run summaries found.")
        return

    run_table = _table("Runs", RUN_COLUMNS, left=("Run", "Started (UTC)", "Model"))
    for run in runs:
        label = str(run.get("run_id")) + (" (dry run)" if run.get("dry_run") else "")
        if run.get("shards"):
            label += f" ({len(run['shards'])} shards)"
        run_table.add_row(
            label,
            _started_cell(run.get("started_at")),
            format_duration(run["duration_s"]),
            str(run.get("model") or "-"),
            f"{len(run['properties']):,}",
            f"{run['images_analysed']:,}",
            f"{run['skipped']:,}",
            f"{len(run['failed_categories']):,}",
            f"{run['prompt_tokens']:,}",
            f"{run['completion_tokens']:,}",
            _cost_cell(run, bool(run.get("estimated"))),
            "-" if run.get("exit_code") is None else str(run["exit_code"]),
        )
    console.print(run_table)

    prop_table = _table("Properties", PROPERTY_COLUMNS, left=("Run", "Property", "Failed categories"))
    for run in runs:
        for pid, prop in run["properties"].items():
            prop_table.add_row(
                str(run.get("run_id")),
                pid,
                f"{prop['images_analysed']:,}",
                f"{prop['skipped']:,}",
                ", ".join(prop["failed_categories"]) or "-",
                f"{prop['prompt_tokens']:,}",
                f"{prop['completion_tokens']:,}",
                _cost_cell(prop, bool(run.get("estimated"))),
                format_duration(prop["duration_s"]),
            )
    if prop_table.rows:
        console.print(prop_table)

    totals = _totals(runs)
    console.print(
        f"{totals['runs']} run(s) · {totals['properties']:,} property result(s) · "
        f"{totals['images_analysed']:,} images analysed · {totals['skipped']:,} skipped · "
        f"{totals['failed_categories']:,} failed categories · "
        f"total cost {format_cost(totals['cost_usd'], totals['cost_known'])}",
        highlight=False,
    )
