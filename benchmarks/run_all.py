"""Run every benchmark of docs/benchmarks.md, one after the other, and collect their tables.

    .venv/bin/python benchmarks/run_all.py                         # everything, ~10 minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py --only startup prepare  # some of them
    .venv/bin/python benchmarks/run_all.py --out /tmp/bench.md     # also write the report to a file

On demand only, never in CI: the figures depend on the machine and on what else it is doing. Each
benchmark is its own script (run it alone to repeat one figure); this runs them as child processes
with a time limit each and prints their markdown, headed by the exact command. All traffic stays on
127.0.0.1, and every server a benchmark starts is stopped when that benchmark ends.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench_common import HERE, machine_line

TOOL_ONLY = ["--clients", "tool-rpm", "tool-learnt"]
TOOL_AND_ASYNCIO = [*TOOL_ONLY, "asyncio", "limiter"]
BENCHMARKS: dict[str, tuple[str, list[str], int]] = {
    # name: (title, script and arguments, time limit in seconds)
    "ratelimit": (
        "Rate-limit bar: 100 one-image requests at 600 RPM (1 s windows)",
        ["ratelimit_bar.py", "--clients", "tool-rpm", "tool-learnt", "asyncio", "threads", "limiter"],
        900,
    ),
    "ratelimit-100x1": (
        "Rate-limit bar, other layout: 100 properties x 1 category",
        ["ratelimit_bar.py", "--latencies", "0.4", "--layout", "100x1", *TOOL_ONLY],
        600,
    ),
    "ratelimit-tpm": (
        "Rate-limit bar, tokens binding: 600 RPM and 3,000,000 TPM (1 s windows)",
        ["ratelimit_bar.py", "--latencies", "0.4", "--tpm", "3000000", *TOOL_AND_ASYNCIO],
        600,
    ),
    "prepare": ("Image preparation throughput (12 MP JPEGs)", ["prepare_throughput.py"], 900),
    "startup": ("Start-up time", ["startup.py"], 300),
    "memory": ("Peak RSS against the number of images (local)", ["memory.py"], 1800),
    "memory-s3": ("Peak RSS from S3 (moto)", ["memory.py", "--sizes", "--s3", "1000", "5000"], 1800),
    "cost": ("Cost prediction: dry-run estimate against the server's count", ["cost_estimate.py"], 900),
}


def run_one(name: str) -> str:
    title, arguments, limit = BENCHMARKS[name]
    command = [sys.executable, str(HERE / arguments[0]), *arguments[1:]]
    shown = " ".join([".venv/bin/python", f"benchmarks/{arguments[0]}", *arguments[1:]])
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=HERE)
    except subprocess.TimeoutExpired:
        return f"## {title}\n\n`{shown}`: did not finish in {limit} s\n"
    took = time.perf_counter() - started
    body = completed.stdout.strip()
    if completed.returncode != 0:
        body += f"\n\nFAILED (exit {completed.returncode}):\n```\n{completed.stderr.strip()[-3000:]}\n```"
    return f"## {title}\n\n```\n{shown}\n```\n\n{body}\n\n(took {took:.0f} s)\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    sections = [f"# Benchmark run\n\n{machine_line()}\n"]
    print(sections[0], flush=True)
    for name in args.only or list(BENCHMARKS):
        section = run_one(name)
        sections.append(section)
        print(section, flush=True)
    if args.out:
        args.out.write_text("\n".join(sections))


if __name__ == "__main__":
    main()
