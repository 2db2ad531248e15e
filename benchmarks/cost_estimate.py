"""Cost prediction: the prompt tokens `--dry-run --json` estimates against the prompt tokens the
simulator counts for the same images in a real run, and the real run's reported usage against what
the server returned.

    .venv/bin/python benchmarks/cost_estimate.py

The simulator counts like OpenAI documents it (text at ~4 characters a token, images by the tile or
patch formulas, the response schema), reusing the test suite's `tests/fakeopenai.py`. This compares our
estimator with a reimplementation of the service's counting, not with the real service: both sides
follow the same published formulas, so it checks the estimator's bookkeeping (which images, at which
size, which texts, the schema, the extra room-grouping request) rather than the formulas themselves.

The tree mixes photo sizes and orientations (12 MP landscape and portrait, square, small) and category
sizes from 1 to 25 images, so that some categories need several batches and then one text-only
room-grouping request, which the dry run does not plan.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from bench_common import (
    TOOL,
    machine_line,
    markdown_table,
    measure_command,
    photo_jpeg,
    scratch_dir,
    sim_server,
    tool_env,
)

SIZES = [(4000, 3000), (3000, 4000), (2048, 2048), (1600, 1200), (1024, 768), (800, 600), (640, 480)]
CATEGORY_IMAGES = {"kitchen": 3, "bedroom": 14, "bathroom": 25, "exterior": 1, "living_room": 10}
PROPERTIES = 4
CASES = [("gpt-4o", "auto"), ("gpt-4o", "low"), ("gpt-4.1-mini", "auto")]


def write_mixed_tree(root: Path) -> int:
    pictures = [photo_jpeg(seed, w, h) for seed, (w, h) in enumerate(SIZES * 2)]
    cycle = itertools.cycle(range(len(pictures)))
    count = 0
    for p in range(PROPERTIES):
        for category, images in CATEGORY_IMAGES.items():
            folder = root / f"{p:04d}" / category
            folder.mkdir(parents=True, exist_ok=True)
            # distinct within a category (the tool sends identical images once)
            for i in range(images):
                (folder / f"photo_{i:03d}.jpg").write_bytes(pictures[next(cycle)] + bytes([i]) * (i + 1))
                count += 1
    return count


def run_json(argv: list[str]) -> dict[str, Any]:
    measured = measure_command(argv, env=tool_env(), timeout=900)
    if measured.returncode != 0:
        raise RuntimeError(f"exit {measured.returncode}: {measured.stderr[-3000:]}")
    return measured.json_stdout()


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(f"<!-- {machine_line()} -->")
    rows = []
    with scratch_dir("cost") as work, sim_server("--rpm", "0", "--latency-median", "0") as sim:
        images = write_mixed_tree(work / "images")
        for index, (model, detail) in enumerate(CASES):
            base = [TOOL, "run", "--all-properties", "--images-dir", str(work / "images"), "--model", model]
            base += ["--detail", detail, "--parallel-categories", "--json", "--quiet", "--no-dashboard"]
            dry = run_json([*base, "--output-dir", str(work / f"dry-{index}"), "--dry-run"])
            sim.reset()
            real = run_json([*base, "--output-dir", str(work / f"out-{index}"), "--base-url", sim.base_url])
            stats = sim.stats()
            estimate = int(dry["estimated_prompt_tokens"])
            server_all = int(stats["prompt_tokens"])
            server_images = server_all - int(stats["text_only_prompt_tokens"])
            rows.append(
                [
                    f"{model} detail={detail}",
                    f"{dry['planned_requests']} / {stats['requests']}",
                    estimate,
                    server_images,
                    f"{100 * (estimate / server_images - 1):+.1f}%",
                    server_all,
                    f"{100 * (estimate / server_all - 1):+.1f}%",
                    "yes" if int(real["prompt_tokens"]) == server_all else f"no ({real['prompt_tokens']})",
                    dry.get("cost_usd") if dry.get("cost_usd") is not None else "-",
                    real.get("cost_usd"),
                ]
            )
            command = " ".join(["image-analyzer", *base[1:]])
            print(f"<!-- {command} --dry-run / --base-url SIM -->", flush=True)
    print(
        f"\n{images} images in {PROPERTIES} properties x {len(CATEGORY_IMAGES)} categories of "
        f"{sorted(CATEGORY_IMAGES.values())} images, sizes {', '.join(f'{w}x{h}' for w, h in SIZES)}; "
        "batches of 10\n"
    )
    headers = [
        "model", "requests planned / sent", "dry-run estimate", "server: image requests",
        "estimate vs image requests", "server: whole run", "estimate vs whole run",
        "reported usage = server's", "dry-run cost USD", "real cost USD",
    ]  # fmt: skip
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
