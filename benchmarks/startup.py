"""Start-up time: `image-analyzer --help` and `image-analyzer run --help` against a bare interpreter
start, median of N runs each (a plain timing loop, so nothing beyond Python is needed), and which
heavy libraries `--help` imports (none of them should be).

    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from bench_common import TOOL, machine_line, markdown_table, measure_command, tool_env

HEAVY = ("openai", "aioboto3", "aiobotocore", "botocore", "boto3", "PIL", "jsonschema", "httpx", "httpx2")

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -S -c pass (no site)": [sys.executable, "-S", "-c", "pass"],
    "image-analyzer --help": [TOOL, "--help"],
    "image-analyzer run --help": [TOOL, "run", "--help"],
    "python -c 'import openai' (for scale)": [sys.executable, "-c", "import openai"],
}

# Runs the CLI in-process the way the console script does, then lists the heavy modules it loaded.
_PROBE = """
import sys
from image_analyzer.cli import main
try:
    sys.argv = ["image-analyzer", *sys.argv[1:]]
    main()
except SystemExit:
    pass
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY))
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


def heavy_imports(args: list[str]) -> str:
    code = f"HEAVY = {HEAVY!r}\n" + _PROBE
    completed = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=tool_env(), timeout=60
    )
    for line in completed.stderr.splitlines():
        if line.startswith("HEAVY:"):
            return line.removeprefix("HEAVY:") or "none"
    return f"(probe failed: {completed.stderr.strip()[-200:]})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"<!-- {machine_line()} -->")
    env = tool_env(COLUMNS="100")
    rows = []
    baseline = None
    for label, command in COMMANDS.items():
        measure_command(command, env=env)  # warm the page cache and .pyc files
        runs = [measure_command(command, env=env) for _ in range(args.runs)]
        walls = sorted(1000 * r.wall_s for r in runs)
        median = statistics.median(walls)
        baseline = median if baseline is None else baseline
        rows.append(
            [
                label,
                median,
                walls[0],
                walls[-1],
                median - baseline,
                statistics.median(1000 * r.cpu_s for r in runs),
                statistics.median(r.peak_rss_mib for r in runs),
            ]
        )
    print(f"median of {args.runs} runs each, after one warm-up run\n")
    headers = [
        "command",
        "median ms",
        "min ms",
        "max ms",
        "over python -c pass, ms",
        "CPU ms",
        "peak RSS MiB",
    ]
    print(markdown_table(headers, rows))
    print()
    probe_rows = [
        ["image-analyzer --help", heavy_imports(["--help"])],
        ["image-analyzer run --help", heavy_imports(["run", "--help"])],
    ]
    print(markdown_table(["command", f"heavy modules imported (of {', '.join(HEAVY)})"], probe_rows))


if __name__ == "__main__":
    main()
