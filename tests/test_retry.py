"""The single retry loop: the real client against the fake server; sleeps are recorded, not slept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from image_analyzer.domain import ModelRequest, ModelResponse
from image_analyzer.errors import ModelCallError
from image_analyzer.model import OpenAIVisionModel, build_messages
from image_analyzer.retry import RetryPolicy, send_with_retries
from tests.fakeopenai import FakeOpenAIServer, Hang, QuotaExceeded, Status

pytestmark = pytest.mark.anyio

REQUEST = ModelRequest(
    request_id="r1",
    model="gpt-4o",
    messages=build_messages("sys", "hello", [], "low"),
    response_format=None,
    max_tokens=64,
)


@dataclass
class Recorder:
    """Collects every hook call and every requested sleep."""

    sleeps: list[float] = field(default_factory=list)
    retries: list[tuple[int, float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    responses: list[ModelResponse] = field(default_factory=list)
    attempts: int = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_retry(self, attempt: int, delay: float, error: ModelCallError) -> None:
        self.retries.append((attempt, delay, error.kind))

    def on_error(self, error: ModelCallError) -> None:
        self.errors.append(error.kind)

    def after_response(self, response: ModelResponse) -> None:
        self.responses.append(response)

    async def before_attempt(self) -> None:
        self.attempts += 1


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
async def model(server: FakeOpenAIServer) -> AsyncIterator[OpenAIVisionModel]:
    client = OpenAIVisionModel(api_key="sk-test", base_url=server.base_url)
    try:
        yield client
    finally:
        await client.aclose()


def fixed_policy(**overrides: float) -> RetryPolicy:
    """No jitter (random() == 0.5 puts the spread at exactly 1.0)."""
    return RetryPolicy(random=lambda: 0.5, **overrides)  # type: ignore[arg-type]


async def send(
    model: OpenAIVisionModel, recorder: Recorder, policy: RetryPolicy, timeout: float = 10.0
) -> ModelResponse:
    return await send_with_retries(
        model,
        REQUEST,
        timeout=timeout,
        policy=policy,
        on_retry=recorder.on_retry,
        before_attempt=recorder.before_attempt,
        after_response=recorder.after_response,
        on_error=recorder.on_error,
        sleep=recorder.sleep,
    )


# --- against the fake server --------------------------------------------------------------------------


async def test_rate_limit_then_success_retries_once(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script([Status(429, headers={"retry-after": "0"})])
    recorder = Recorder()
    response = await send(model, recorder, fixed_policy(base_delay=0.5))

    assert response.finish_reason == "stop"
    assert recorder.retries == [(1, 0.5, "rate_limit")]
    assert recorder.sleeps == [0.5]
    assert recorder.errors == ["rate_limit"]
    assert recorder.attempts == 2
    assert recorder.responses == [response]
    assert [r.status for r in server.requests] == [429, 200]


async def test_fatal_errors_are_not_retried(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([Status(401)])
    recorder = Recorder()
    with pytest.raises(ModelCallError) as caught:
        await send(model, recorder, fixed_policy())
    assert caught.value.fatal
    assert len(server.requests) == 1
    assert recorder.retries == []
    assert recorder.sleeps == []
    assert recorder.errors == ["auth"]


async def test_quota_exhausted_is_not_retried(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([QuotaExceeded()])
    with pytest.raises(ModelCallError, match="quota"):
        await send(model, Recorder(), fixed_policy())
    assert len(server.requests) == 1


async def test_server_errors_give_up_after_max_retries(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    policy = fixed_policy(max_retries=3, base_delay=1.0, max_delay=3.0)
    server.script([Status(503)] * 4)
    recorder = Recorder()
    with pytest.raises(ModelCallError) as caught:
        await send(model, recorder, policy)

    assert caught.value.status == 503
    assert len(server.requests) == 4  # the first attempt plus three retries
    assert [attempt for attempt, _, _ in recorder.retries] == [1, 2, 3]
    assert recorder.sleeps == [1.0, 2.0, 3.0]  # doubling, capped at max_delay
    assert recorder.responses == []


async def test_the_servers_retry_after_wins_over_a_shorter_backoff(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script(
        [Status(429, headers={"retry-after": "7"}), Status(503, headers={"retry-after-ms": "2500"})]
    )
    recorder = Recorder()
    await send(model, recorder, fixed_policy(base_delay=0.1))
    assert recorder.sleeps == [7.0, 2.5]


async def test_a_retry_after_too_long_to_wait_for_is_raised(
    server: FakeOpenAIServer, model: OpenAIVisionModel
) -> None:
    server.script([Status(429, headers={"retry-after": "86400"})])
    recorder = Recorder()
    with pytest.raises(ModelCallError) as caught:
        await send(model, recorder, fixed_policy(max_retry_after=600))
    assert caught.value.retry_after == 86400
    assert recorder.sleeps == []


async def test_timeouts_are_retried(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([Hang()])
    recorder = Recorder()
    response = await send(model, recorder, fixed_policy(), timeout=0.3)
    assert response.content is not None
    assert [kind for _, _, kind in recorder.retries] == ["timeout"]


async def test_zero_retries_means_one_attempt(server: FakeOpenAIServer, model: OpenAIVisionModel) -> None:
    server.script([Status(500)])
    with pytest.raises(ModelCallError):
        await send(model, Recorder(), fixed_policy(max_retries=0))
    assert len(server.requests) == 1


# --- the policy alone ---------------------------------------------------------------------------------


def test_backoff_doubles_and_is_capped() -> None:
    policy = fixed_policy(base_delay=1.0, max_delay=10.0)
    assert [policy.delay_for(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_stays_within_its_band() -> None:
    low = RetryPolicy(base_delay=4.0, jitter=0.25, random=lambda: 0.0)
    high = RetryPolicy(base_delay=4.0, jitter=0.25, random=lambda: 1.0)
    assert low.delay_for(1) == 3.0
    assert high.delay_for(1) == 5.0


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    policy = fixed_policy(base_delay=1.0, max_delay=5.0)
    error = ModelCallError("rate limited", retryable=True, retry_after=30.0)
    assert policy.delay_for(1, error) == 30.0
    short = ModelCallError("rate limited", retryable=True, retry_after=0.2)
    assert policy.delay_for(3, short) == 4.0


def test_should_retry_rules() -> None:
    policy = RetryPolicy(max_retries=2)
    retryable = ModelCallError("x", retryable=True)
    assert policy.should_retry(1, retryable)
    assert policy.should_retry(2, retryable)
    assert not policy.should_retry(3, retryable)
    assert not policy.should_retry(1, ModelCallError("x", retryable=False))
    assert not policy.should_retry(1, ModelCallError("x", retryable=True, fatal=True))
