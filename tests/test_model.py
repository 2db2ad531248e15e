"""The OpenAI client boundary, over real sockets against the fake server with the real AsyncOpenAI."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import socket
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from image_analyzer.domain import ImageRef, ModelRequest, ModelResponse, PreparedImage
from image_analyzer.errors import ConfigError, ModelCallError
from image_analyzer.model import (
    DeferredModel,
    OpenAIVisionModel,
    build_messages,
    classify_error,
    is_reasoning_model,
    request_kwargs,
    retry_after_seconds,
)
from tests.fakeopenai import (
    Answer,
    EmptyChoices,
    FakeOpenAIServer,
    GarbageBody,
    Hang,
    Held,
    NoUsage,
    QuotaExceeded,
    Refusal,
    ResetConnection,
    Status,
    Truncated,
)

pytestmark = pytest.mark.anyio

API_KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["image_ids", "space_type"],
    "properties": {
        "image_ids": {"type": "array", "items": {"type": "string", "enum": ["k1", "k2"]}},
        "space_type": {"enum": ["Kitchen", None]},
    },
}


def prepared(image_id: str, fmt: str, mime: str, color: str = "white") -> PreparedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), color).save(buffer, fmt)
    data = buffer.getvalue()
    ref = ImageRef("p1", "kitchen", f"{image_id}.{fmt.lower()}", f"p1/kitchen/{image_id}")
    digest = hashlib.sha256(data).hexdigest()
    return PreparedImage(ref, image_id, data, mime, 96, 64, digest, "jpeg" if fmt == "JPEG" else "png")


IMAGES = (prepared("k1", "JPEG", "image/jpeg", "red"), prepared("k2", "PNG", "image/png", "green"))


def make_request(model: str = "gpt-4o", detail: str = "high") -> ModelRequest:
    return ModelRequest(
        request_id="req-1",
        model=model,
        messages=build_messages("You label rooms.", "Kitchen photos k1, k2.", IMAGES, detail),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "kitchen", "strict": True, "schema": SCHEMA},
        },
        max_tokens=256,
    )


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
async def model(server: FakeOpenAIServer) -> AsyncIterator[OpenAIVisionModel]:
    client = OpenAIVisionModel(api_key=API_KEY, base_url=server.base_url, max_connections=8)
    try:
        yield client
    finally:
        await client.aclose()


async def fails_with(model: OpenAIVisionModel, timeout: float = 10.0) -> ModelCallError:
    with pytest.raises(ModelCallError) as caught:
        await model.complete(make_request(), timeout=timeout)
    return caught.value


# --- building requests --------------------------------------------------------------------------------


def test_build_messages_puts_text_first_then_each_image_after_its_id_label() -> None:
    system, user = build_messages("sys", "look", IMAGES, "low")
    assert system == {"role": "system", "content": "sys"}
    assert user["role"] == "user"
    text, label1, first, label2, second = user["content"]
    assert text == {"type": "text", "text": "look"}
    assert label1 == {"type": "text", "text": f"image_id: {IMAGES[0].image_id}"}
    assert label2 == {"type": "text", "text": f"image_id: {IMAGES[1].image_id}"}
    assert first["image_url"]["detail"] == "low"
    assert first["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert second["image_url"]["url"].startswith("data:image/png;base64,")
    assert base64.b64decode(first["image_url"]["url"].split(",", 1)[1]) == IMAGES[0].data


def test_reasoning_models_get_max_completion_tokens_and_no_temperature() -> None:
    assert is_reasoning_model("gpt-5-mini")
    assert is_reasoning_model("o4-mini")
    assert not is_reasoning_model("gpt-4o")
    assert not is_reasoning_model("gpt-5-chat-latest")
    reasoning = request_kwargs(make_request(model="gpt-5-mini"))
    assert reasoning["max_completion_tokens"] == 256
    assert "temperature" not in reasoning
    assert "max_tokens" not in reasoning
    classic = request_kwargs(make_request(model="gpt-4o"))
    assert (classic["max_tokens"], classic["temperature"]) == (256, 0.0)


# --- successful calls ---------------------------------------------------------------------------------


async def test_success_returns_content_usage_headers_and_sends_real_images(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    response = await model.complete(make_request(), timeout=10)

    assert response.content == '{"image_ids": ["k1", "k2"], "space_type": null}'
    assert response.finish_reason == "stop"
    assert response.refusal is None
    assert response.model == "gpt-4o"
    (record,) = server.requests
    assert response.usage is not None
    assert response.usage.prompt_tokens == record.prompt_tokens
    assert response.usage.completion_tokens == -(-len(response.content) // 4)
    assert response.headers["x-request-id"] == "req_fake0"
    assert record.image_mimes == ["image/jpeg", "image/png"]
    assert record.image_formats == ["JPEG", "PNG"]
    assert record.image_hashes == [hashlib.sha256(i.data).hexdigest() for i in IMAGES]
    assert record.image_details == ["high", "high"]
    assert record.image_ids == ["k1", "k2"]
    assert record.authorization == f"Bearer {API_KEY}"
    assert record.temperature == 0.0


async def test_reasoning_model_request_shape_on_the_wire(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    await model.complete(make_request(model="gpt-5-mini"), timeout=10)
    (record,) = server.requests
    assert record.body["max_completion_tokens"] == 256
    assert "temperature" not in record.body


async def test_cached_tokens_are_read_from_prompt_tokens_details(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script([Answer({"image_ids": [], "space_type": None}, cached_tokens=64)])
    response = await model.complete(make_request(), timeout=10)
    assert response.usage is not None
    assert response.usage.cached_tokens == 64


async def test_empty_choices_and_missing_usage(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([EmptyChoices(), NoUsage()])
    empty = await model.complete(make_request(), timeout=10)
    assert (empty.content, empty.finish_reason) == (None, "empty")
    assert empty.usage is not None

    no_usage = await model.complete(make_request(), timeout=10)
    assert no_usage.content is not None
    assert no_usage.usage is None


async def test_refusal_and_truncation_come_back_as_responses(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script([Refusal("no"), Truncated()])
    refused = await model.complete(make_request(), timeout=10)
    assert (refused.content, refused.refusal) == (None, "no")
    truncated = await model.complete(make_request(), timeout=10)
    assert truncated.finish_reason == "length"


# --- failures -----------------------------------------------------------------------------------------


async def test_rate_limit_is_retryable_with_the_servers_hint(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script(
        [Status(429, headers={"retry-after": "0"}), Status(429, headers={"retry-after-ms": "1500"})]
    )
    first = await fails_with(model)
    assert (first.retryable, first.fatal, first.status, first.kind) == (True, False, 429, "rate_limit")
    assert first.retry_after == 0.0
    second = await fails_with(model)
    assert second.retry_after == 1.5
    assert len(server.requests) == 2  # the SDK's own retries are off


async def test_insufficient_quota_is_fatal(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([QuotaExceeded()])
    error = await fails_with(model)
    assert (error.retryable, error.fatal, error.kind) == (False, True, "quota")
    assert "insufficient_quota" in str(error)


async def test_bad_key_is_fatal_and_never_echoed(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([Status(401)])
    error = await fails_with(model)
    assert (error.retryable, error.fatal, error.status) == (False, True, 401)
    assert "OPENAI_API_KEY" in str(error)
    rendered = "".join(traceback.format_exception(error))
    assert API_KEY not in rendered
    assert API_KEY not in repr(error)
    assert error.__cause__ is None
    assert error.__context__ is None


async def test_403_is_fatal(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([Status(403)])
    error = await fails_with(model)
    assert (error.retryable, error.fatal, error.kind) == (False, True, "auth")


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
async def test_server_errors_are_retryable(
    server: FakeOpenAIServer, model: OpenAIVisionModel, status: int
) -> None:
    server.script([Status(status)])
    error = await fails_with(model)
    assert (error.retryable, error.fatal, error.status) == (True, False, status)


@pytest.mark.parametrize(("status", "fatal"), [(400, False), (404, True), (422, False), (413, False)])
async def test_client_errors_are_not_retryable(
    server: FakeOpenAIServer, model: OpenAIVisionModel, status: int, fatal: bool
) -> None:
    server.script([Status(status, body={"error": {"message": f"bad thing\nkey {API_KEY}", "code": "x"}})])
    error = await fails_with(model)
    assert (error.retryable, error.fatal) == (False, fatal)
    message = str(error)
    assert "\n" not in message
    assert "bad thing" in message
    assert API_KEY not in message


async def test_hang_times_out_and_the_client_stays_usable(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script([Hang()])
    error = await fails_with(model, timeout=0.3)
    assert (error.retryable, error.kind) == (True, "timeout")
    await server.until(lambda s: s.in_flight == 0)  # the abandoned request was really cancelled

    response = await model.complete(make_request(), timeout=10)
    assert response.finish_reason == "stop"
    assert [r.outcome for r in server.requests] == ["hang", "ok"]


async def test_dropped_connection_and_garbage_body_are_retryable(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script([ResetConnection(), GarbageBody()])
    dropped = await fails_with(model)
    assert (dropped.retryable, dropped.kind) == (True, "connection")
    garbage = await fails_with(model)
    assert (garbage.retryable, garbage.kind) == (True, "bad_response")


async def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAIVisionModel(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1")
    try:
        error = await fails_with(model)
    finally:
        await model.aclose()
    assert (error.retryable, error.kind) == (True, "connection")
    assert "--base-url" in str(error)


async def test_many_concurrent_calls_share_one_client(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script([Held()] * 8)
    calls = asyncio.gather(*(model.complete(make_request(), timeout=10) for _ in range(20)))
    await server.until(lambda s: s.in_flight == 8)
    server.release()
    responses = await calls
    assert all(r.finish_reason == "stop" for r in responses)
    assert server.max_in_flight == 8  # max_connections caps the pool


# --- classification without a server ------------------------------------------------------------------


def test_classify_plain_exceptions() -> None:
    assert classify_error(TimeoutError()).kind == "timeout"
    assert classify_error(TimeoutError()).retryable
    passthrough = ModelCallError("x", retryable=False, fatal=True)
    assert classify_error(passthrough) is passthrough
    unknown = classify_error(RuntimeError("boom"))
    assert (unknown.retryable, unknown.fatal) == (False, False)


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# --- construction -------------------------------------------------------------------------------------


async def test_repr_never_shows_the_key_or_url_credentials() -> None:
    model = OpenAIVisionModel(api_key=API_KEY, base_url="https://user:pw@example.com/v1?key=abc")
    try:
        text = repr(model)
    finally:
        await model.aclose()
    assert API_KEY not in text
    assert "pw" not in text
    assert "key=abc" not in text
    assert "example.com/v1" in text


def test_empty_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIVisionModel(api_key="", base_url=None)


def test_importing_the_modules_does_not_import_openai() -> None:
    code = (
        "import sys, image_analyzer.model, image_analyzer.retry, image_analyzer.cost; "
        "heavy = {'openai', 'httpx2', 'PIL'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.anyio
async def test_deferred_model_is_built_once_after_its_library_loaded() -> None:
    built: list[int] = []
    loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Echo:
        async def complete(self, request: ModelRequest, *, timeout: float) -> ModelResponse:
            return ModelResponse(content=request.request_id, finish_reason="stop", refusal=None, usage=None)

        async def aclose(self) -> None:
            return None

    def build() -> Echo:
        built.append(1)
        return Echo()

    deferred = DeferredModel(build, loaded)
    calls = [asyncio.create_task(deferred.complete(make_request(), timeout=5)) for _ in range(5)]
    await asyncio.sleep(0)
    assert built == []
    loaded.set_result(None)
    answers = await asyncio.gather(*calls)
    assert built == [1]
    assert {a.content for a in answers} == {make_request().request_id}
    await deferred.aclose()
