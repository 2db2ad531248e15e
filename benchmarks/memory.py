"""Peak RSS against the number of images: `--dry-run` and real runs against the simulator (no rate
limit, zero latency, so the run is as fast and as crowded as it can be), from local folders and from
an S3 bucket served by moto on 127.0.0.1.

    .venv/bin/python benchmarks/memory.py                          # local 1,000 and 10,000 images
    .venv/bin/python benchmarks/memory.py --sizes 1000 --s3 5000   # plus a 5,000-image run from S3
    .venv/bin/python benchmarks/memory.py --sizes --s3 1000 5000   # S3 only

Trees are 10 images x 10 categories per property (so 10,000 images are 100 properties), tiny JPEGs
(`--width`/`--height`, default 160x120) so the run measures the tool's own bookkeeping, not Pillow.
Peak RSS, CPU and wall time are the `image-analyzer` process's own (`os.wait4`). The concurrency is
the rate-limit bar's: `--max-workers 32 --category-workers 32`, batches of 10 (one request per category).
"""

from __future__ import annotations

import argparse
from typing import Any

from bench_common import (
    AWS_TEST_ENV,
    TOOL,
    Measured,
    TreeShape,
    machine_line,
    markdown_table,
    measure_command,
    moto_server,
    scratch_dir,
    sim_server,
    tool_env,
    upload_tree,
    write_tree,
)

CONCURRENCY = ["--max-workers", "32", "--category-workers", "32", "--batch-size", "10"]
COMMON = ["--json", "--quiet", "--no-dashboard"]


def shape_for(images: int, width: int, height: int) -> TreeShape:
    per_property = 100
    if images % per_property:
        raise SystemExit(f"--sizes must be multiples of {per_property}")
    return TreeShape(images // per_property, 10, 10, width, height, distinct=50)


def run(argv: list[str], env: dict[str, str]) -> tuple[Measured, dict[str, Any]]:
    measured = measure_command(argv, env=env, timeout=1800)
    if measured.returncode != 0:
        raise RuntimeError(f"exit {measured.returncode}: {measured.stderr[-3000:]}")
    return measured, measured.json_stdout()


def result_row(
    label: str, source: str, shape: TreeShape, measured: Measured, summary: dict[str, Any], requests: Any
) -> list[Any]:
    analysed = summary.get("images_analysed") if not summary.get("dry_run") else "-"
    return [
        label,
        source,
        shape.total,
        analysed,
        requests,
        measured.peak_rss_mib,
        measured.wall_s,
        1000 * measured.cpu_s / shape.total,
    ]


HEADERS = ["run", "source", "images", "analysed", "requests", "peak RSS MiB", "wall s", "CPU ms/img"]


def local_runs(sizes: list[int], width: int, height: int) -> list[list[Any]]:
    rows = []
    with scratch_dir("memory") as work, sim_server("--rpm", "0", "--latency-median", "0") as sim:
        for images in sizes:
            shape = shape_for(images, width, height)
            tree = write_tree(work / f"images-{images}", shape)
            base = [TOOL, "run", "--all-properties", "--images-dir", str(tree), *CONCURRENCY, *COMMON]
            dry, summary = run([*base, "--output-dir", str(work / f"dry-{images}"), "--dry-run"], tool_env())
            rows.append(
                result_row("--dry-run", "local", shape, dry, summary, summary.get("planned_requests"))
            )
            print(f"<!-- {' '.join(['image-analyzer', *dry.argv[1:]])} -->", flush=True)
            sim.reset()
            real_argv = [*base, "--output-dir", str(work / f"out-{images}"), "--base-url", sim.base_url]
            real, summary = run(real_argv, tool_env())
            rows.append(result_row("real", "local", shape, real, summary, sim.stats()["requests"]))
            print(f"<!-- {' '.join(['image-analyzer', *real.argv[1:]])} -->", flush=True)
    return rows


def s3_runs(images: int, width: int, height: int) -> list[list[Any]]:
    rows = []
    shape = shape_for(images, width, height)
    bucket = "bench-photos"
    with (
        scratch_dir("memory-s3") as work,
        moto_server() as endpoint,
        sim_server("--rpm", "0", "--latency-median", "0") as sim,
    ):
        upload_tree(endpoint, bucket, shape)
        env = tool_env(**AWS_TEST_ENV)
        base = [TOOL, "run", "--all-properties", "--bucket", bucket, "--endpoint-url", endpoint]
        base += [*CONCURRENCY, *COMMON]
        dry, summary = run([*base, "--output-dir", str(work / "dry"), "--dry-run"], env)
        rows.append(
            result_row("--dry-run", "S3 (moto)", shape, dry, summary, summary.get("planned_requests"))
        )
        print(f"<!-- {' '.join(['image-analyzer', *dry.argv[1:]])} -->", flush=True)
        sim.reset()
        real, summary = run([*base, "--output-dir", str(work / "out"), "--base-url", sim.base_url], env)
        rows.append(result_row("real", "S3 (moto)", shape, real, summary, sim.stats()["requests"]))
        print(f"<!-- {' '.join(['image-analyzer', *real.argv[1:]])} -->", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000], help="local runs")
    parser.add_argument("--s3", type=int, nargs="*", default=[], metavar="IMAGES", help="S3 runs, by size")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    args = parser.parse_args(argv)
    print(f"<!-- {machine_line()} -->")
    rows = local_runs(args.sizes, args.width, args.height) if args.sizes else []
    for images in args.s3:
        rows += s3_runs(images, args.width, args.height)
    print(f"\nTrees: properties x 10 categories x 10 images, {args.width}x{args.height} JPEGs\n")
    print(markdown_table(HEADERS, rows))


if __name__ == "__main__":
    main()
