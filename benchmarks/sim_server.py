"""A simulated OpenAI-compatible Chat Completions server for benchmarks (not used by the test suite).

    .venv/bin/python benchmarks/sim_server.py --rpm 600 --window 1 --latency-median 1.5 --port 8765

* Limits are per minute, as OpenAI advertises them, and enforced in fixed windows of `--window` seconds
  (600 RPM in 1-second windows is 10 per window; a request is counted when it arrives, so one arriving
  at a window's edge counts in the next). Past a window's budget it answers 429 at once, with
  `retry-after`, `retry-after-ms` and the `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
  headers OpenAI sends (limits per minute, remaining and reset for the current window).
* Tokens are counted at admission like OpenAI: the prompt (text at ~4 characters a token, images by the
  tile/patch formulas, the response schema) plus `max_tokens`, whatever the answer then uses.
* Accepted requests wait a seeded lognormal latency, then get a schema-valid answer generated from the
  request's own `response_format` schema, and `usage`.
* `GET /sim/stats` returns counters (429s, accepted, tokens, bytes, peak concurrency, the most requests
  seen in any window); `POST /sim/reset` zeroes them and restarts the windows.

The first line on stdout is `listening on http://HOST:PORT` (use `--port 0` for a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The test suite's fake server already knows how OpenAI counts prompt tokens and how to build an answer
# from a strict response schema (every image id assigned): the simulator reuses exactly that.
from tests.fakeopenai import format_reset, generate_answer, prompt_tokens_for


@dataclass
class SimConfig:
    rpm: int | None = 600
    tpm: int | None = None
    window: float = 1.0
    latency_median: float = 1.5
    latency_sigma: float = 0.35
    latency_max: float = 30.0
    reject_latency: float = 0.002
    tpm_counts_max_tokens: bool = True
    count_schema: bool = True
    seed: int = 1

    def window_budget(self, per_minute: int) -> int:
        return max(1, math.floor(per_minute * self.window / 60.0 + 1e-9))


@dataclass
class SimStats:
    requests: int = 0
    accepted: int = 0
    completed: int = 0
    rejected_429: int = 0
    rejected_by_kind: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    admitted_tokens: int = 0
    bytes_received: int = 0
    images: int = 0
    text_only_completed: int = 0
    text_only_prompt_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    max_accepted_in_a_window: int = 0
    first_arrival: float | None = None
    last_completion: float | None = None
    first_arrival_unix: float | None = None
    last_completion_unix: float | None = None

    def as_dict(self, config: SimConfig) -> dict[str, Any]:
        span = None
        if self.first_arrival is not None and self.last_completion is not None:
            span = round(self.last_completion - self.first_arrival, 3)
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "completed": self.completed,
            "rejected_429": self.rejected_429,
            "rejected_by_kind": dict(self.rejected_by_kind),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "admitted_tokens": self.admitted_tokens,
            "bytes_received": self.bytes_received,
            "images": self.images,
            # requests without images (image-analyzer's room-grouping request), already in the totals above
            "text_only_completed": self.text_only_completed,
            "text_only_prompt_tokens": self.text_only_prompt_tokens,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_accepted_in_a_window": self.max_accepted_in_a_window,
            "first_arrival_to_last_completion_s": span,
            # wall-clock times, to place the requests inside a client process's lifetime
            "first_arrival_unix": self.first_arrival_unix,
            "last_completion_unix": self.last_completion_unix,
            "config": {
                "rpm": config.rpm,
                "tpm": config.tpm,
                "window_s": config.window,
                "requests_per_window": config.window_budget(config.rpm) if config.rpm else None,
                "tokens_per_window": config.window_budget(config.tpm) if config.tpm else None,
                "latency_median_s": config.latency_median,
                "latency_sigma": config.latency_sigma,
            },
        }


class _Windows:
    """Fixed windows aligned to the server's (re)start; one counter per limited kind."""

    def __init__(self, config: SimConfig, started: float) -> None:
        self.config = config
        self.started = started
        self.index = -1
        self.used: Counter[str] = Counter()

    def _roll(self, now: float) -> None:
        index = int((now - self.started) // self.config.window)
        if index != self.index:
            self.index = index
            self.used = Counter()

    def reset_in(self, now: float) -> float:
        self._roll(now)
        return self.started + (self.index + 1) * self.config.window - now

    def budgets(self) -> dict[str, int]:
        limits = {"requests": self.config.rpm, "tokens": self.config.tpm}
        return {kind: self.config.window_budget(limit) for kind, limit in limits.items() if limit}

    def admit(self, now: float, tokens: int) -> str | None:
        """Count the request in the current window, or return the kind that is exhausted."""
        self._roll(now)
        cost = {"requests": 1, "tokens": tokens}
        for kind, budget in self.budgets().items():
            if self.used[kind] + cost[kind] > budget:
                return kind
        for kind in self.budgets():
            self.used[kind] += cost[kind]
        return None

    def headers(self, now: float) -> dict[str, str]:
        reset = format_reset(self.reset_in(now))
        limits = {"requests": self.config.rpm, "tokens": self.config.tpm}
        headers: dict[str, str] = {}
        for kind, budget in self.budgets().items():
            headers[f"x-ratelimit-limit-{kind}"] = str(limits[kind])
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(budget - self.used[kind], 0))
            headers[f"x-ratelimit-reset-{kind}"] = reset
        return headers


class SimServer:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.rng = random.Random(config.seed)
        self.windows = _Windows(config, time.monotonic())
        self.app = web.Application(client_max_size=256 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/sim/stats", self.get_stats)
        self.app.router.add_post("/sim/reset", self.reset)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict(self.config))

    async def reset(self, request: web.Request) -> web.Response:
        self.stats = SimStats()
        self.rng = random.Random(self.config.seed)
        self.windows = _Windows(self.config, time.monotonic())
        return web.json_response({"ok": True})

    async def chat(self, request: web.Request) -> web.Response:
        raw = await request.read()
        now = time.monotonic()  # counted on arrival of the whole body, like the real service
        stats = self.stats
        stats.requests += 1
        stats.bytes_received += len(raw)
        if stats.first_arrival is None:
            stats.first_arrival, stats.first_arrival_unix = now, time.time()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        prompt_tokens = self._prompt_tokens(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        admitted_tokens = prompt_tokens + (int(max_tokens) if self.config.tpm_counts_max_tokens else 0)
        exhausted = self.windows.admit(now, admitted_tokens)
        headers = self.windows.headers(now)
        if exhausted is not None:
            return await self._reject(exhausted, now, headers)
        stats.accepted += 1
        stats.admitted_tokens += admitted_tokens
        stats.max_accepted_in_a_window = max(stats.max_accepted_in_a_window, self.windows.used["requests"])
        images = _count_images(body)
        stats.images += images
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            await asyncio.sleep(self._latency())
        finally:
            stats.in_flight -= 1
        content = self._answer(body)
        completion_tokens = math.ceil(len(content) / 4)
        stats.completed += 1
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        if images == 0:
            stats.text_only_completed += 1
            stats.text_only_prompt_tokens += prompt_tokens
        stats.last_completion, stats.last_completion_unix = time.monotonic(), time.time()
        return web.json_response(
            {
                "id": f"chatcmpl-sim{stats.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
            },
            headers=headers,
        )

    async def _reject(self, kind: str, now: float, headers: dict[str, str]) -> web.Response:
        self.stats.rejected_429 += 1
        self.stats.rejected_by_kind[kind] += 1
        wait = self.windows.reset_in(now)
        headers["retry-after-ms"] = str(max(round(wait * 1000), 1))
        headers["retry-after"] = str(max(math.ceil(wait), 1))
        await asyncio.sleep(self.config.reject_latency)
        limit = self.config.rpm if kind == "requests" else self.config.tpm
        message = f"Rate limit reached on {kind} per min: Limit {limit}. Please try again."
        return _error(429, message, kind, code="rate_limit_exceeded", headers=headers)

    def _prompt_tokens(self, body: dict[str, Any]) -> int:
        tokens = prompt_tokens_for(body)
        schema = _response_schema(body)
        if self.config.count_schema and schema is not None:
            tokens += math.ceil(len(json.dumps(schema, separators=(",", ":"))) / 4)
        return tokens

    def _latency(self) -> float:
        median, sigma = self.config.latency_median, self.config.latency_sigma
        if median <= 0:
            return 0.0
        return min(self.rng.lognormvariate(math.log(median), sigma), self.config.latency_max)

    def _answer(self, body: dict[str, Any]) -> str:
        schema = _response_schema(body)
        if schema is None:
            return "{}" if (body.get("response_format") or {}).get("type") == "json_object" else "ok"
        return json.dumps(generate_answer(schema), separators=(",", ":"))


def _response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = body.get("response_format") or {}
    json_schema = response_format.get("json_schema") or {}
    schema = json_schema.get("schema")
    return schema if isinstance(schema, dict) else None


def _count_images(body: dict[str, Any]) -> int:
    count = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            count += sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")
    return count


def _error(
    status: int, message: str, kind: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(payload, status=status, headers=headers)


async def serve(config: SimConfig, host: str, port: int) -> None:
    server = SimServer(config)
    runner = web.AppRunner(server.app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> tuple[SimConfig, str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--rpm", type=int, default=600, help="requests per minute (0: unlimited)")
    parser.add_argument("--tpm", type=int, default=0, help="tokens per minute (0: unlimited)")
    parser.add_argument("--window", type=float, default=1.0, help="enforcement window in seconds")
    parser.add_argument("--latency-median", type=float, default=1.5, help="seconds (lognormal median)")
    parser.add_argument("--latency-sigma", type=float, default=0.35, help="lognormal sigma")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-max-tokens-in-tpm", action="store_true", help="admit on prompt tokens only, not + max_tokens"
    )
    args = parser.parse_args(argv)
    config = SimConfig(
        rpm=args.rpm or None,
        tpm=args.tpm or None,
        window=args.window,
        latency_median=args.latency_median,
        latency_sigma=args.latency_sigma,
        tpm_counts_max_tokens=not args.no_max_tokens_in_tpm,
        seed=args.seed,
    )
    return config, args.host, args.port


def main(argv: list[str] | None = None) -> None:
    config, host, port = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host, port))


if __name__ == "__main__":
    main()
