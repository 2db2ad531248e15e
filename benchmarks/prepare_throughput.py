"""Image preparation throughput: 12 MP JPEGs through `images.prepare_image`, serially and in worker
threads the way the pipeline runs it (`asyncio.to_thread`, here on an executor of 1 or 2 threads).

    .venv/bin/python benchmarks/prepare_throughput.py                  # 24 distinct 4000x3000 JPEGs
    .venv/bin/python benchmarks/prepare_throughput.py --images 48 --rounds 2

Pillow releases the GIL while it decodes, resizes and encodes, so two threads on two cores should
come close to twice the serial rate. The "full decode" row is a reference: the same output made
without libjpeg's draft mode (decode all 12 MP, then resize), i.e. what the draft step saves.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench_common import machine_line, markdown_table, photo_jpeg

from image_analyzer.domain import ImageRef, PreparedImage
from image_analyzer.images import JPEG_QUALITY, prepare_image, target_size

REF = ImageRef(property_id="p", category="kitchen", name="photo.jpg", locator="bench/photo.jpg")


def prepare(data: bytes, model: str, detail: str) -> PreparedImage:
    return prepare_image(REF, data, image_id="img", model=model, detail=detail)


def full_decode(data: bytes, model: str, detail: str) -> bytes:
    """The same result without draft mode: decode every pixel, orient, resize, encode."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image).convert("RGB")
    wanted = target_size(model, upright.width, upright.height, detail=detail)
    resized = upright.resize(wanted, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def serial(work: Callable[[bytes], Any], inputs: list[bytes]) -> list[Any]:
    return [work(data) for data in inputs]


def threaded(work: Callable[[bytes], Any], inputs: list[bytes], threads: int | None) -> list[Any]:
    """As the pipeline does it: every image awaited through asyncio.to_thread, on `threads` threads
    (None: asyncio's default executor, min(32, CPUs + 4) threads, which is what a run uses)."""

    async def main() -> list[Any]:
        if threads is not None:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=threads))
        return list(await asyncio.gather(*(asyncio.to_thread(work, data) for data in inputs)))

    return asyncio.run(main())


def timed(run: Callable[[], list[Any]], rounds: int) -> tuple[float, float, list[Any]]:
    """(best wall seconds, CPU seconds of that round, results)."""
    best_wall, best_cpu, results = float("inf"), 0.0, []
    for _ in range(rounds):
        cpu = time.process_time()
        started = time.perf_counter()
        results = run()
        wall = time.perf_counter() - started
        if wall < best_wall:
            best_wall, best_cpu = wall, time.process_time() - cpu
    return best_wall, best_cpu, results


def size_of(result: Any) -> int:
    return len(result.data) if isinstance(result, PreparedImage) else len(result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--detail-noise", type=float, default=0.45, help="photo_jpeg detail (file size)")
    parser.add_argument("--rounds", type=int, default=5, help="best of N")
    args = parser.parse_args(argv)

    print(f"<!-- {machine_line()} -->")
    inputs = [
        photo_jpeg(seed, args.width, args.height, detail=args.detail_noise, quality=90)
        for seed in range(args.images)
    ]
    mean_in = statistics.mean(len(d) for d in inputs)
    print(
        f"{args.images} distinct {args.width}x{args.height} JPEGs, mean {mean_in / 1e6:.2f} MB; "
        f"best of {args.rounds} rounds\n"
    )

    rows = []
    cases: list[tuple[str, str, str, Callable[[], list[Any]]]] = []
    default_threads = min(32, (os.cpu_count() or 1) + 4)
    for model, detail in (("gpt-4o", "auto"), ("gpt-4o", "low"), ("gpt-4.1-mini", "auto")):
        work = functools.partial(prepare, model=model, detail=detail)
        label = f"{model} detail={detail}"
        modes: list[tuple[str, int | None]] = [("to_thread x2", 2)]
        if (model, detail) == ("gpt-4o", "auto"):
            modes = [
                ("serial", 0),
                ("to_thread x1", 1),
                *modes,
                (f"to_thread, default ({default_threads})", None),
            ]
        for mode, threads in modes:
            runner: Callable[[], list[Any]] = (
                functools.partial(serial, work, inputs)
                if threads == 0
                else functools.partial(threaded, work, inputs, threads)
            )
            cases.append((label, mode, "prepare_image", runner))
    cases.append(
        (
            "gpt-4o detail=auto",
            "to_thread x2",
            "full decode, no draft (reference)",
            functools.partial(
                threaded, functools.partial(full_decode, model="gpt-4o", detail="auto"), inputs, 2
            ),
        )
    )

    for label, mode, path, run in cases:
        wall, cpu, results = timed(run, args.rounds)
        out_sizes = [size_of(r) for r in results]
        first = results[0]
        dims = f"{first.width}x{first.height}" if isinstance(first, PreparedImage) else "same"
        rows.append(
            [
                label,
                path,
                mode,
                args.images / wall,
                1000 * wall / args.images,
                1000 * cpu / args.images,
                round(mean_in / 1000),
                dims,
                round(statistics.mean(out_sizes) / 1000),
                f"{mean_in / statistics.mean(out_sizes):.0f}x",
            ]
        )
        print(f"<!-- {label} {path} {mode}: {args.images / wall:.1f} img/s -->", flush=True)
    headers = [
        "model / detail", "code path", "threads", "images/s", "wall ms/img", "CPU ms/img",
        "KB in", "sent as", "KB out", "smaller by",
    ]  # fmt: skip
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
