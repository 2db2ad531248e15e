"""Issue 6's rate-limit bar, side by side: image-analyzer (with `--rpm` and with limits learnt from the
headers) against the plain SDK asyncio client and the 12x12 thread-pool client, on one simulator that
allows 600 RPM enforced in 1-second windows.

    .venv/bin/python benchmarks/ratelimit_bar.py                       # 0.4 s and 1.5 s median latency
    .venv/bin/python benchmarks/ratelimit_bar.py --latencies 0.4 --clients tool-rpm tool-learnt

Every client runs in its own process, one after the other, against the same simulator (reset between
runs). For image-analyzer the figures are for the whole `image-analyzer run` process: wall time from
exec to exit (interpreter start, imports, listing, preparing, writing the output included), its own CPU
and peak RSS from `wait4`. The baseline clients report their sending phase only (see naive_clients.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import (
    HERE,
    TOOL,
    Sim,
    TreeShape,
    machine_line,
    markdown_table,
    measure_command,
    scratch_dir,
    sim_server,
    tool_env,
    write_tree,
)

RPM = 600
WINDOW_S = 1.0
WORKERS = 32


def tool_argv(tree: Path, output: Path, sim: Sim, *, limits: list[str], batch_size: int = 1) -> list[str]:
    argv = [
        TOOL, "run", "--all-properties", "--images-dir", str(tree), "--output-dir", str(output),
        "--base-url", sim.base_url, "--batch-size", str(batch_size), "--max-workers", str(WORKERS),
        "--parallel-categories", "--category-workers", str(WORKERS), "--json", "--quiet", "--no-dashboard",
    ]  # fmt: skip
    return argv + limits


def run_tool(
    name: str, sim: Sim, tree: Path, work: Path, shape: TreeShape, limits: list[str]
) -> dict[str, Any]:
    sim.reset()
    # a fresh output folder every run: an earlier run's manifest would answer every batch from cache
    output = Path(tempfile.mkdtemp(prefix="out-", dir=work))
    measured = measure_command(tool_argv(tree, output, sim, limits=limits), env=tool_env())
    if measured.returncode not in (0, 1):
        raise RuntimeError(f"{name}: exit {measured.returncode}: {measured.stderr[-2000:]}")
    summary = measured.json_stdout()
    if summary.get("images_reused"):
        raise RuntimeError(f"{name}: {summary['images_reused']} images reused from an earlier run")
    stats = sim.stats()
    images = shape.total
    result = row(
        name,
        stats,
        images=images,
        wall_s=measured.wall_s,
        lost=images - int(summary.get("images_analysed", 0)),
        cpu_s=measured.cpu_s,
        rss_mib=measured.peak_rss_mib,
        command=" ".join(["image-analyzer", *measured.argv[1:]]),
    )
    # Where the process's time went: before the first request reached the server, and after the last
    # answer left it (writing the output, the summary, exiting).
    if stats["first_arrival_unix"] and stats["last_completion_unix"]:
        result["before_first_request_s"] = stats["first_arrival_unix"] - measured.started_unix
        ended = measured.started_unix + measured.wall_s
        result["after_last_answer_s"] = ended - stats["last_completion_unix"]
    return result


def run_baseline(client: str, sim: Sim, shape: TreeShape) -> dict[str, Any]:
    argv = [
        sys.executable, str(HERE / "naive_clients.py"), client, "--base-url", sim.base_url,
        "--requests", str(shape.total), "--concurrency", str(WORKERS),
        "--image-width", str(shape.width), "--image-height", str(shape.height),
        "--distinct-images", str(shape.distinct),
    ]  # fmt: skip
    completed = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    images = result["images"]
    return row(
        client,
        result["server"],
        images=images,
        wall_s=result["wall_s"],
        lost=result["requests_lost"],
        cpu_s=result["client_cpu_ms_per_image"] * images / 1000,
        rss_mib=result["peak_rss_mib"],
        command=" ".join(["naive_clients.py", *argv[2:]]),
    )


def latency_floor(requests: int, spacing: float, median: float, sigma: float, trials: int = 2000) -> float:
    """The median finish time of a perfect client: starts exactly at the limits' rate (request i at
    i * spacing s, never a 429), each answered after a latency drawn from the simulator's lognormal.
    The slowest of the last answers, not the median latency, sets how late the run ends."""
    rng = random.Random(7)
    finishes = sorted(
        max(i * spacing + rng.lognormvariate(math.log(median), sigma) for i in range(requests))
        for _ in range(trials)
    )
    return finishes[trials // 2]


def request_spacing(stats: dict[str, Any]) -> float:
    """Seconds per request at the binding limit: RPM, or TPM at what the server admitted per request
    (prompt + max_tokens, as OpenAI counts it)."""
    config = stats["config"]
    spacing = 60.0 / config["rpm"] if config["rpm"] else 0.0
    if config["tpm"] and stats["accepted"]:
        spacing = max(spacing, stats["admitted_tokens"] / stats["accepted"] * 60.0 / config["tpm"])
    return spacing


def row(
    name: str,
    stats: dict[str, Any],
    *,
    images: int,
    wall_s: float,
    lost: int,
    cpu_s: float,
    rss_mib: float,
    command: str,
) -> dict[str, Any]:
    config = stats["config"]
    spacing = request_spacing(stats)
    ideal = images * spacing
    span = stats["first_arrival_to_last_completion_s"]
    completed = stats["completed"]
    return {
        "client": name,
        "wall_s": wall_s,
        "server_span_s": span,
        "ideal_s": ideal,
        "ideal_plus_latency_s": ideal + config["latency_median_s"],
        "floor_s": latency_floor(images, spacing, config["latency_median_s"], config["latency_sigma"]),
        "over_ideal_pct": 100.0 * (wall_s / ideal - 1.0),
        # answered requests per second against the rate the limits allow
        "share_of_ceiling": completed * spacing / wall_s,
        "share_of_ceiling_span": completed * spacing / span if span else None,
        "tokens_per_request": stats["admitted_tokens"] / max(stats["accepted"], 1),
        "answered": completed,
        "requests_sent": stats["requests"],
        "answered_429": stats["rejected_429"],
        "lost": lost,
        "max_in_window": stats["max_accepted_in_a_window"],
        "max_in_flight": stats["max_in_flight"],
        "cpu_ms_per_image": 1000.0 * cpu_s / images,
        "peak_rss_mib": rss_mib,
        # one image per request: the mean body size of every request that reached the server (429'd too)
        "bytes_per_image": stats["bytes_received"] / max(stats["requests"], 1),
        "command": command,
    }


COLUMNS = [
    ("client", "client"),
    ("wall_s", "wall s"),
    ("server_span_s", "server span s"),
    ("before_first_request_s", "start-up to 1st request s"),
    ("after_last_answer_s", "last answer to exit s"),
    ("ideal_s", "ideal s"),
    ("over_ideal_pct", "vs ideal, %"),
    ("ideal_plus_latency_s", "ideal + median latency s"),
    ("floor_s", "perfect pacer finishes at, s"),
    ("share_of_ceiling", "share of ceiling (wall)"),
    ("share_of_ceiling_span", "share of ceiling (span)"),
    ("requests_sent", "requests sent"),
    ("answered", "answered"),
    ("answered_429", "429s"),
    ("lost", "lost"),
    ("max_in_window", "max in a 1 s window"),
    ("cpu_ms_per_image", "CPU ms/img"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("bytes_per_image", "bytes/img sent"),
    ("tokens_per_request", "tokens/request admitted"),
]


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table([title for _, title in COLUMNS], [[r.get(key) for key, _ in COLUMNS] for r in rows])


def parse_layout(text: str) -> tuple[int, int]:
    properties, categories = text.lower().split("x")
    return int(properties), int(categories)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.4, 1.5], help="median seconds")
    parser.add_argument("--latency-sigma", type=float, default=0.35)
    parser.add_argument(
        "--clients",
        nargs="+",
        default=["tool-rpm", "tool-learnt", "asyncio", "threads"],
        choices=["tool-rpm", "tool-learnt", "asyncio", "threads", "limiter"],
    )
    parser.add_argument("--layout", default="10x10", help="PROPERTIESxCATEGORIES, one image each")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--rpm", type=int, default=RPM, help="the simulator's requests per minute")
    parser.add_argument("--tpm", type=int, default=0, help="the simulator's tokens per minute (0: none)")
    parser.add_argument("--json-out", type=Path, help="also write every row as JSON here")
    args = parser.parse_args(argv)

    properties, categories = parse_layout(args.layout)
    shape = TreeShape(properties, categories, 1, args.width, args.height, distinct=50)
    print(f"<!-- {machine_line()} -->")
    limits = ["--rpm", str(args.rpm)] + (["--tpm", str(args.tpm)] if args.tpm else [])
    tpm_text = f", {args.tpm:,} TPM" if args.tpm else ""
    print(f"Tree: {shape.describe()}; simulator: {args.rpm} RPM{tpm_text} in {WINDOW_S:g} s windows\n")
    everything: list[dict[str, Any]] = []
    with scratch_dir("ratelimit") as work:
        tree = write_tree(work / "images", shape)
        for latency in args.latencies:
            sim_args = [*limits, "--window", str(WINDOW_S), "--latency-median", str(latency)]
            sim_args += ["--latency-sigma", str(args.latency_sigma)]
            rows = []
            with sim_server(*sim_args) as sim:
                for client in args.clients:
                    if client == "tool-rpm":
                        name = "image-analyzer " + " ".join(limits)
                        result = run_tool(name, sim, tree, work, shape, limits)
                    elif client == "tool-learnt":
                        result = run_tool("image-analyzer (learnt)", sim, tree, work, shape, [])
                    else:
                        result = run_baseline(client, sim, shape)
                    result["latency_median_s"] = latency
                    rows.append(result)
                    print(f"<!-- {result['client']}: {result['command']} -->", flush=True)
            print(f"\n### Median latency {latency:g} s (lognormal, sigma {args.latency_sigma:g})\n")
            print(table(rows), flush=True)
            everything += rows
    if args.json_out:
        args.json_out.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
