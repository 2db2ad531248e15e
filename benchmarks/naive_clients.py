"""The clients image-analyzer is measured against, run against `sim_server.py`.

    # one command: start a simulator, run both clients one after the other, print a table
    .venv/bin/python benchmarks/naive_clients.py all --spawn-server "--rpm 600 --window 1" --requests 100

    # or against a simulator you started yourself
    .venv/bin/python benchmarks/naive_clients.py asyncio --base-url http://127.0.0.1:8765/v1

* `asyncio`: the common script. One `AsyncOpenAI` with the SDK's default retries (2, honouring
  retry-after), `asyncio.gather` under a semaphore of `--concurrency` (32), no limiter.
* `limiter` (a reference, not a baseline): the same asyncio loop behind image-analyzer's RateLimiter,
  limits learnt from the headers, SDK retries off; `--compare asyncio threads limiter` adds it.
* `threads`: shaped like the original tool. A pool of 12 category threads, each with its own pool of
  12 batch threads, one shared sync `OpenAI` client with default retries, no limiter.

Each request carries `--images` generated JPEGs (one by default: `--batch-size 1` in the issue's bar)
and a small strict response schema. Every client runs in its own process (so CPU and peak RSS are its
own) and prints one JSON object: wall time, the ideal time the limits allow, the share of that ceiling
reached, 429s the server answered, requests lost (failed after the SDK's retries), client CPU per image,
peak RSS and bytes sent per image.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "photo_facts",
        "strict": True,
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["room_type", "condition", "features"],
            "properties": {
                "room_type": {"type": "string", "enum": ["kitchen", "bedroom", "bathroom", "other"]},
                "condition": {"type": ["string", "null"]},
                "features": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}
PROMPT = "Describe the room in this real-estate photo as JSON that matches the schema."


def make_jpeg(seed: int, width: int, height: int) -> bytes:
    """A photo-like JPEG: smooth gradients plus noise, so it compresses like a real picture."""
    from PIL import Image, ImageFilter

    rng = random.Random(seed)
    small = Image.new("RGB", (32, 24))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(32 * 24)])
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    noise = Image.effect_noise((width, height), 24).convert("RGB")
    image = Image.blend(image, noise, 0.15).filter(ImageFilter.SMOOTH)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def build_messages(images: list[bytes]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": PROMPT}]
    for data in images:
        url = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        parts.append({"type": "image_url", "image_url": {"url": url, "detail": "auto"}})
    return [{"role": "user", "content": parts}]


def request_kwargs(images: list[bytes], model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": build_messages(images),
        "response_format": RESPONSE_FORMAT,
        "max_tokens": 300,
    }


def sim_call(base_url: str, path: str, method: str = "GET") -> dict[str, Any]:
    root = base_url.rstrip("/").removesuffix("/v1")
    request = urllib.request.Request(root + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


# --- the two clients ---------------------------------------------------------------------------------


def run_asyncio_client(base_url: str, jobs: list[list[bytes]], concurrency: int, model: str) -> int:
    """The common script: gather everything under a semaphore. Returns requests lost."""
    from openai import APIError, AsyncOpenAI

    async def main() -> int:
        client = AsyncOpenAI(base_url=base_url, api_key="sk-sim")  # SDK default: max_retries=2
        gate = asyncio.Semaphore(concurrency)
        lost = 0

        async def one(images: list[bytes]) -> None:
            nonlocal lost
            async with gate:
                try:
                    await client.chat.completions.create(**request_kwargs(images, model))
                except APIError:
                    lost += 1

        try:
            await asyncio.gather(*(one(images) for images in jobs))
        finally:
            await client.close()
        return lost

    return asyncio.run(main())


def run_limited_client(base_url: str, jobs: list[list[bytes]], concurrency: int, model: str) -> int:
    """A reference point, not a baseline: the asyncio client with image-analyzer's RateLimiter in front
    (no --rpm: limits learnt from headers), SDK retries off and 429s retried after the limiter's pause."""
    from openai import APIError, AsyncOpenAI, RateLimitError

    from image_analyzer.ratelimit import RateLimiter

    async def main() -> int:
        client = AsyncOpenAI(base_url=base_url, api_key="sk-sim", max_retries=0)
        limiter = RateLimiter()
        gate = asyncio.Semaphore(concurrency)
        lost = 0

        async def one(images: list[bytes]) -> None:
            nonlocal lost
            kwargs = request_kwargs(images, model)
            estimate = 800 * len(images) + 400
            async with gate:
                for _attempt in range(6):
                    reservation = await limiter.acquire(estimate)
                    try:
                        raw = await client.chat.completions.with_raw_response.create(**kwargs)
                    except RateLimitError as exc:
                        limiter.observe_headers(exc.response.headers, reservation)
                        limiter.settle(reservation, 0)
                        retry_ms = exc.response.headers.get("retry-after-ms")
                        limiter.pause_for(float(retry_ms) / 1000 if retry_ms else 1.0, "429")
                        continue
                    except APIError:
                        limiter.release_unused(reservation)
                        break
                    limiter.observe_headers(raw.headers, reservation)
                    usage = raw.parse().usage
                    # Settle to what the server counts against TPM: OpenAI admits prompt + max_tokens.
                    counted = usage.prompt_tokens + kwargs["max_tokens"] if usage else None
                    limiter.settle(reservation, counted)
                    return
                lost += 1

        try:
            await asyncio.gather(*(one(images) for images in jobs))
        finally:
            await client.close()
        return lost

    return asyncio.run(main())


def run_thread_client(
    base_url: str, jobs: list[list[bytes]], category_threads: int, batch_threads: int, model: str
) -> int:
    """Shaped like the original tool: category threads, each fanning its batches out to threads."""
    from openai import APIError, OpenAI

    client = OpenAI(base_url=base_url, api_key="sk-sim")  # SDK default: max_retries=2
    categories: list[list[list[bytes]]] = [jobs[i::category_threads] for i in range(category_threads)]

    def send(images: list[bytes]) -> bool:
        try:
            client.chat.completions.create(**request_kwargs(images, model))
        except APIError:
            return False
        return True

    def category(batches: list[list[bytes]]) -> int:
        with ThreadPoolExecutor(max_workers=batch_threads) as pool:
            return sum(1 for ok in pool.map(send, batches) if not ok)

    try:
        with ThreadPoolExecutor(max_workers=category_threads) as pool:
            return sum(pool.map(category, categories))
    finally:
        client.close()


# --- measuring one client in this process --------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    pictures = [make_jpeg(seed, args.image_width, args.image_height) for seed in range(args.distinct_images)]
    jobs = [
        [pictures[(job * args.images + k) % len(pictures)] for k in range(args.images)]
        for job in range(args.requests)
    ]
    sim_call(args.base_url, "/sim/reset", "POST")
    runners: dict[str, Callable[[], int]] = {
        "asyncio": lambda: run_asyncio_client(args.base_url, jobs, args.concurrency, args.model),
        "limiter": lambda: run_limited_client(args.base_url, jobs, args.concurrency, args.model),
        "threads": lambda: run_thread_client(
            args.base_url, jobs, args.category_threads, args.batch_threads, args.model
        ),
    }
    import openai  # noqa: F401  (imported before the clock starts: start-up is not what is measured)

    cpu_before = time.process_time()
    started = time.perf_counter()
    lost = runners[args.client]()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    stats = sim_call(args.base_url, "/sim/stats")
    images = args.requests * args.images
    ideal = ideal_seconds(stats, args.requests)
    ideal_for_completed = ideal_seconds(stats, stats["completed"])
    return {
        "client": args.client,
        "requests": args.requests,
        "images": images,
        "concurrency": args.category_threads * args.batch_threads
        if args.client == "threads"
        else args.concurrency,
        "wall_s": round(wall, 2),
        "ideal_s": None if ideal is None else round(ideal, 2),
        # throughput of answered requests against the rate the limits allow
        "share_of_ceiling": None if ideal_for_completed is None else round(ideal_for_completed / wall, 3),
        "answered_429": stats["rejected_429"],
        "requests_lost": lost,
        "client_cpu_ms_per_image": round(cpu * 1000 / images, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # per image in each request that reached the server, 429'd attempts included
        "bytes_sent_per_image": round(stats["bytes_received"] / max(stats["requests"], 1) / args.images),
        "server": stats,
    }


def ideal_seconds(stats: dict[str, Any], requests: int) -> float | None:
    """The time the limits allow for the whole run: the binding one of requests and tokens."""
    config = stats["config"]
    candidates = []
    if config["rpm"]:
        candidates.append(requests * 60.0 / config["rpm"])
    if config["tpm"] and stats["accepted"]:
        per_request = stats["admitted_tokens"] / stats["accepted"]  # what the server counts per request
        candidates.append(requests * per_request * 60.0 / config["tpm"])
    return max(candidates) if candidates else None


# --- running several clients, each in its own process --------------------------------------------------


def spawn_server(extra: str) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, str(HERE / "sim_server.py"), "--port", "0", *shlex.split(extra)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening on "):
        process.kill()
        raise SystemExit(f"sim_server.py did not start: {line!r}")
    return process, line.removeprefix("listening on ") + "/v1"


def run_each_in_a_process(args: argparse.Namespace, base_url: str) -> list[dict[str, Any]]:
    results = []
    for client in args.compare:
        command = [sys.executable, str(Path(__file__).resolve()), client, "--base-url", base_url]
        command += forwarded_options(args)
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def forwarded_options(args: argparse.Namespace) -> list[str]:
    names = [
        "requests",
        "images",
        "concurrency",
        "category_threads",
        "batch_threads",
        "image_width",
        "image_height",
        "distinct_images",
        "model",
    ]
    options = []
    for name in names:
        options += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return options


def print_table(results: list[dict[str, Any]]) -> None:
    columns = [
        ("client", "client"),
        ("wall_s", "wall s"),
        ("ideal_s", "ideal s"),
        ("share_of_ceiling", "of ceiling"),
        ("answered_429", "429s"),
        ("requests_lost", "lost"),
        ("client_cpu_ms_per_image", "CPU ms/img"),
        ("peak_rss_mib", "RSS MiB"),
        ("bytes_sent_per_image", "bytes/img"),
    ]
    print("| " + " | ".join(title for _, title in columns) + " |", file=sys.stderr)
    print("|" + "---|" * len(columns), file=sys.stderr)
    for result in results:
        print("| " + " | ".join(str(result[key]) for key, _ in columns) + " |", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=["asyncio", "threads", "limiter", "all"])
    parser.add_argument("--base-url", help="the simulator's /v1 URL")
    parser.add_argument("--spawn-server", metavar="ARGS", help="start sim_server.py with these arguments")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=int, default=32, help="asyncio client's semaphore")
    parser.add_argument("--category-threads", type=int, default=12)
    parser.add_argument("--batch-threads", type=int, default=12)
    parser.add_argument("--image-width", type=int, default=1024)
    parser.add_argument("--image-height", type=int, default=768)
    parser.add_argument("--distinct-images", type=int, default=8)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument(
        "--compare", nargs="+", default=["asyncio", "threads"], help="clients `all` runs, in order"
    )
    args = parser.parse_args(argv)
    if not args.base_url and not args.spawn_server:
        parser.error("give --base-url or --spawn-server")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    server = None
    if args.spawn_server is not None:
        server, args.base_url = spawn_server(args.spawn_server)
    try:
        results = run_each_in_a_process(args, args.base_url) if args.client == "all" else [measure(args)]
        for result in results:
            print(json.dumps(result), flush=True)
        print_table(results)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
