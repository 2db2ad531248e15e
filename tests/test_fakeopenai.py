"""The fake OpenAI server itself: defaults, scripts, rules, rate limits, records, lifecycle."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import urllib.request
from typing import Any

import aiohttp
import jsonschema
import pytest
from openai import AsyncOpenAI
from PIL import Image

from tests.fakeopenai import (
    DEFAULT,
    Answer,
    FakeOpenAIServer,
    Hang,
    Held,
    Latency,
    Malformed,
    NoUsage,
    QuotaExceeded,
    RequestRecord,
    ResetConnection,
    SchemaInvalid,
    Status,
    Truncated,
    format_reset,
    generate_answer,
    image_tokens,
    prompt_tokens_for,
)

pytestmark = pytest.mark.anyio

ROOM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rooms", "notes"],
    "properties": {
        "rooms": {
            "type": "array",
            "items": {"$ref": "#/$defs/room"},
        },
        "notes": {"type": ["string", "null"]},
    },
    "$defs": {
        "room": {
            "type": "object",
            "additionalProperties": False,
            "required": ["image_ids", "space_type", "space_index", "has_windows", "area"],
            "properties": {
                "image_ids": {"type": "array", "items": {"type": "string", "enum": ["img-1", "img-2"]}},
                "space_type": {"enum": ["Kitchen", "Bedroom", None]},
                "space_index": {"type": "integer", "minimum": 1},
                "has_windows": {"type": "boolean"},
                "area": {"anyOf": [{"type": "number", "minimum": 0.5}, {"type": "null"}]},
            },
        }
    },
}


def jpeg(size: tuple[int, int] = (64, 48), color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "blue").save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_body(
    text: str = "Images img-1 and img-2 of the kitchen.",
    images: list[tuple[bytes, str]] | None = None,
    schema: dict[str, Any] | None = None,
    model: str = "gpt-4o",
    detail: str = "high",
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for data, mime in images if images is not None else [(jpeg(), "image/jpeg"), (png(), "image/png")]:
        parts.append({"type": "image_url", "image_url": {"url": data_url(data, mime), "detail": detail}})
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": "You label rooms."}, {"role": "user", "content": parts}],
        "max_tokens": 300,
        "temperature": 0,
    }
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "kitchen_rooms", "strict": True, "schema": schema or ROOM_SCHEMA},
    }
    return body


async def post(
    session: aiohttp.ClientSession, srv: FakeOpenAIServer, body: dict[str, Any]
) -> tuple[int, dict[str, str], Any]:
    # A file-like body: aiohttp warns about large raw bytes bodies under -X dev.
    data = io.BytesIO(json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    async with session.post(f"{srv.base_url}/chat/completions", data=data, headers=headers) as response:
        text = await response.text()
        try:
            payload: Any = json.loads(text)
        except ValueError:
            payload = text
        return response.status, {k.lower(): v for k, v in response.headers.items()}, payload


# --- answers generated from the schema ----------------------------------------------------------------


def test_generated_answer_is_valid_and_assigns_every_image_id() -> None:
    answer = generate_answer(ROOM_SCHEMA)
    jsonschema.validate(answer, ROOM_SCHEMA)
    assert answer["rooms"] == [
        {
            "image_ids": ["img-1", "img-2"],
            "space_type": None,
            "space_index": 1,
            "has_windows": False,
            "area": None,
        }
    ]
    assert answer["notes"] is None


def test_generated_answer_without_nulls_and_with_a_chooser() -> None:
    answer = generate_answer(ROOM_SCHEMA, prefer_null=False)
    jsonschema.validate(answer, ROOM_SCHEMA)
    assert answer["rooms"][0]["space_type"] == "Kitchen"
    assert answer["rooms"][0]["area"] == 0.5
    assert answer["notes"] == "x"

    by_name = generate_answer(ROOM_SCHEMA, choose={"space_type": "Bedroom"})
    assert by_name["rooms"][0]["space_type"] == "Bedroom"

    seen: list[tuple[Any, ...]] = []

    def chooser(path: tuple[Any, ...], members: list[Any]) -> Any:
        seen.append(path)
        return DEFAULT

    assert generate_answer(ROOM_SCHEMA, choose=chooser)["rooms"][0]["space_type"] is None
    assert ("rooms", 0, "space_type") in seen


def test_generated_strings_respect_format_and_min_length() -> None:
    schema = {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date"},
            "code": {"type": "string", "minLength": 4},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        },
    }
    assert generate_answer(schema) == {"when": "2024-01-01", "code": "xxxx", "tags": ["x", "x"]}


# --- token counting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "detail", "model", "expected"),
    [
        ((1024, 1024), "high", "gpt-4o", 765),  # OpenAI's worked example: 4 tiles
        ((2048, 4096), "high", "gpt-4o", 1105),  # -> 1024x2048 -> 768x1536: 6 tiles
        ((4000, 3000), "low", "gpt-4o", 85),
        ((512, 512), "auto", "gpt-4o-2024-08-06", 255),
        ((1024, 1024), "high", "gpt-4o-mini", 2833 + 4 * 5667),
        ((1024, 1024), "high", "gpt-5", 70 + 4 * 140),
        ((1024, 1024), "high", "gpt-4.1-mini", 1659),  # 1024 patches x 1.62
        ((1800, 2400), "high", "gpt-4.1-nano", 3572),  # capped at 1452 patches x 2.46
    ],
)
def test_image_tokens(size: tuple[int, int], detail: str, model: str, expected: int) -> None:
    assert image_tokens(*size, detail=detail, model=model) == expected


def test_prompt_tokens_count_text_and_real_image_dimensions() -> None:
    body = chat_body(text="abcdefgh", images=[(jpeg((1024, 1024)), "image/jpeg")])
    text_chars = len("You label rooms.") + len("abcdefgh")
    assert prompt_tokens_for(body) == -(-text_chars // 4) + 765


# --- default answers over HTTP ------------------------------------------------------------------------


async def test_default_answer_usage_and_records() -> None:
    images = [(jpeg(), "image/jpeg"), (png(), "image/png")]
    body = chat_body(images=images)
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        status, headers, payload = await post(session, srv, body)

    assert status == 200
    assert "x-request-id" in headers
    choice = payload["choices"][0]
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    jsonschema.validate(json.loads(content), ROOM_SCHEMA)
    usage = payload["usage"]
    assert usage["prompt_tokens"] == prompt_tokens_for(body)
    assert usage["completion_tokens"] == -(-len(content) // 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    (record,) = srv.requests
    assert record.model == "gpt-4o"
    assert record.image_count == 2
    assert record.image_mimes == ["image/jpeg", "image/png"]
    assert record.image_formats == ["JPEG", "PNG"]
    assert record.image_sizes == [(64, 48), (40, 30)]
    assert record.image_hashes == [hashlib.sha256(d).hexdigest() for d, _ in images]
    assert record.image_ids == ["img-1", "img-2"]
    assert record.response_format_name == "kitchen_rooms"
    assert record.temperature == 0
    assert record.max_tokens == 300
    assert (record.status, record.outcome) == (200, "ok")
    assert srv.successful_image_hashes() == record.image_hashes


async def test_answer_with_custom_function_and_prefer_null_off() -> None:
    async with FakeOpenAIServer(prefer_null=False) as srv, aiohttp.ClientSession() as session:
        _, _, payload = await post(session, srv, chat_body())
        assert json.loads(payload["choices"][0]["message"]["content"])["rooms"][0]["space_type"] == "Kitchen"

        srv.answer_with(lambda body: {"echo": body["model"]})
        _, _, payload = await post(session, srv, chat_body(model="gpt-4.1"))
        assert json.loads(payload["choices"][0]["message"]["content"]) == {"echo": "gpt-4.1"}


async def test_big_bodies_are_accepted() -> None:
    noisy = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG", compress_level=0)
    assert len(buffer.getvalue()) > 1024 * 1024  # over aiohttp's default body limit
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        status, _, _ = await post(session, srv, chat_body(images=[(buffer.getvalue(), "image/png")]))
    assert status == 200


async def test_invalid_images_and_wrong_key_are_rejected_like_openai() -> None:
    async with FakeOpenAIServer(api_key="sk-right") as srv, aiohttp.ClientSession() as session:
        status, _, payload = await post(session, srv, chat_body())
        assert status == 401
        assert payload["error"]["code"] == "invalid_api_key"

        session.headers["Authorization"] = "Bearer sk-right"
        status, _, payload = await post(session, srv, chat_body(images=[(b"not an image", "image/jpeg")]))
        assert status == 400
        assert payload["error"]["code"] == "invalid_image_format"

        status, _, _ = await post(session, srv, chat_body())
        assert status == 200
    assert [r.outcome for r in srv.requests] == ["unauthorized", "invalid_image", "ok"]


async def test_models_endpoint() -> None:
    async with FakeOpenAIServer(models=["gpt-4o", "gpt-5-mini"]) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        try:
            models = await client.models.list()
        finally:
            await client.close()
    assert [m.id for m in models.data] == ["gpt-4o", "gpt-5-mini"]


# --- scripts ------------------------------------------------------------------------------------------


async def test_script_is_consumed_in_order_then_default() -> None:
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        srv.script(
            [
                Status(429, headers={"retry-after": "0"}),
                QuotaExceeded(),
                Status(503, body="upstream down"),
                Malformed(),
                SchemaInvalid(),
                Truncated(),
                NoUsage(),
                Answer({"rooms": []}, cached_tokens=10),
            ]
        )
        results = [await post(session, srv, chat_body()) for _ in range(9)]

    statuses = [status for status, _, _ in results]
    assert statuses == [429, 429, 503, 200, 200, 200, 200, 200, 200]
    assert results[0][1]["retry-after"] == "0"
    assert results[1][2]["error"]["code"] == "insufficient_quota"
    assert results[2][2] == "upstream down"
    with pytest.raises(ValueError, match="Expecting"):
        json.loads(results[3][2]["choices"][0]["message"]["content"])
    invalid = json.loads(results[4][2]["choices"][0]["message"]["content"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(invalid, ROOM_SCHEMA)
    assert results[5][2]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in results[6][2]
    assert results[7][2]["usage"]["prompt_tokens_details"]["cached_tokens"] == 10
    assert json.loads(results[8][2]["choices"][0]["message"]["content"])["rooms"]
    assert srv.pending_actions() == 0
    assert srv.status_counts == {200: 6, 429: 2, 503: 1}
    assert [r.outcome for r in srv.requests] == [
        "status",
        "quota_exceeded",
        "status",
        "malformed",
        "schema_invalid",
        "truncated",
        "ok",
        "ok",
        "ok",
    ]


async def test_rules_pick_requests_by_content_under_concurrency() -> None:
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        srv.script_for(lambda req: "kitchen" in req.text, [Status(500), Status(500)])
        bodies = [chat_body(text=f"{room} photos img-1") for room in ["kitchen", "bedroom"] * 3]
        results = await asyncio.gather(*(post(session, srv, b) for b in bodies))

    by_room: dict[str, list[int]] = {"kitchen": [], "bedroom": []}
    for body, (status, _, _) in zip(bodies, results, strict=True):
        room = body["messages"][1]["content"][0]["text"].split()[0]
        by_room[room].append(status)
    assert sorted(by_room["kitchen"]) == [200, 500, 500]
    assert by_room["bedroom"] == [200, 200, 200]


async def test_held_requests_show_the_clients_concurrency() -> None:
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        srv.script([Held()] * 4)
        tasks = [asyncio.create_task(post(session, srv, chat_body())) for _ in range(4)]
        await srv.until(lambda s: s.in_flight == 4)
        assert all(r.status is None for r in srv.requests)
        srv.release()
        results = await asyncio.gather(*tasks)
    assert [status for status, _, _ in results] == [200] * 4
    assert srv.max_in_flight == 4
    assert srv.in_flight == 0


async def test_latency_then_another_action() -> None:
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        srv.script([Latency(0.01, then=Status(500))])
        status, _, _ = await post(session, srv, chat_body())
    assert status == 500


async def test_reset_connection_drops_the_socket() -> None:
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        srv.script([ResetConnection()])
        with pytest.raises(aiohttp.ClientError):
            await post(session, srv, chat_body())
        status, _, _ = await post(session, srv, chat_body())
    assert status == 200
    assert [r.status for r in srv.requests] == [None, 200]


async def test_hang_ends_when_the_client_gives_up() -> None:
    async with FakeOpenAIServer() as srv, aiohttp.ClientSession() as session:
        srv.script([Hang()])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(session, srv, chat_body()), 0.2)
        await srv.until(lambda s: s.in_flight == 0)
        status, _, _ = await post(session, srv, chat_body())
    assert status == 200
    assert [r.outcome for r in srv.requests] == ["hang", "ok"]


async def test_hang_does_not_block_shutdown() -> None:
    srv = await FakeOpenAIServer().start()
    srv.script([Hang()])
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(post(session, srv, chat_body()))
        await srv.until(lambda s: s.in_flight == 1)
        await srv.stop()
        try:
            status, _, _ = await pending
        except aiohttp.ClientError:
            status = 0
    assert status in (0, 503)
    assert srv.in_flight == 0


# --- rate limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.12, "120ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (61.25, "1m1.25s"), (3600, "1h0m0s")],
)
def test_format_reset(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


async def test_request_limit_answers_429_with_openai_headers() -> None:
    async with FakeOpenAIServer(rpm=2, window=3600) as srv, aiohttp.ClientSession() as session:
        results = [await post(session, srv, chat_body()) for _ in range(3)]

    assert [status for status, _, _ in results] == [200, 200, 429]
    first, second, limited = (headers for _, headers, _ in results)
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert second["x-ratelimit-remaining-requests"] == "0"
    assert limited["x-ratelimit-remaining-requests"] == "0"
    assert limited["x-ratelimit-reset-requests"].endswith("s")
    assert int(limited["retry-after"]) >= 1
    assert int(limited["retry-after-ms"]) > 0
    assert results[2][2]["error"]["code"] == "rate_limit_exceeded"
    assert srv.requests[2].outcome == "rate_limited"


async def test_token_limit_counts_prompt_and_max_tokens() -> None:
    body = chat_body()
    per_request = prompt_tokens_for(body) + body["max_tokens"]
    async with FakeOpenAIServer(tpm=per_request * 2 + 1, window=3600) as srv, aiohttp.ClientSession() as s:
        results = [await post(s, srv, body) for _ in range(3)]
    assert [status for status, _, _ in results] == [200, 200, 429]
    assert results[0][1]["x-ratelimit-remaining-tokens"] == str(per_request + 1)
    assert "x-ratelimit-limit-requests" not in results[0][1]


# --- running in a thread ------------------------------------------------------------------------------


def test_running_in_a_thread_serves_sync_callers() -> None:
    with FakeOpenAIServer.running_in_thread() as srv:
        srv.script([Status(500)])
        statuses = []
        for _ in range(2):
            request = urllib.request.Request(
                f"{srv.base_url}/chat/completions",
                data=json.dumps(chat_body()).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as error:
                statuses.append(error.code)
        srv.wait_until(lambda s: len(s.requests) == 2)
        records: list[RequestRecord] = srv.requests
    assert statuses == [500, 200]
    assert [r.status for r in records] == [500, 200]
