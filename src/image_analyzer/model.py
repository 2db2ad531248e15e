"""The model boundary: the OpenAI-compatible client, request building and error classification.

The only module that imports `openai` (lazily, inside the client constructor and `classify_error`, so
`--help` never pays for it). One shared `AsyncOpenAI` with the SDK's retries turned off: `retry.py`
owns the single retry loop. Every failure leaves here as a `ModelCallError` whose `retryable`/`fatal`
flags drive that loop, with a one-line message that never carries the key or a request body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from image_analyzer.domain import ModelRequest, ModelResponse, PreparedImage, Usage, VisionModel
from image_analyzer.errors import ConfigError, ModelCallError

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletion

CLIENT_TIMEOUT_S = 600.0
"""The SDK's own ceiling; each call also runs under `asyncio.wait_for` with the caller's timeout."""
_SDK_TIMEOUT_MARGIN_S = 5.0
_CONNECT_TIMEOUT_S = 10.0
_SERVER_MESSAGE_LIMIT = 200
_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def build_messages(
    system: str,
    user_text: str,
    images: Sequence[PreparedImage],
    detail: str,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """A system message, then one user message: the text, then each image after its label.

    The label right before each image (its id, or the given label) ties the picture to its id, which is
    more reliable than asking the model to count positions in a list.
    """
    parts: list[dict[str, Any]] = [{"type": "text", "text": user_text}]
    for n, image in enumerate(images):
        encoded = base64.b64encode(image.data).decode("ascii")
        label = labels[n] if labels is not None else f"image_id: {image.image_id}"
        parts.append({"type": "text", "text": label})
        parts.append(
            {
                "type": "image_url",
                "image_url": {"url": f"data:{image.mime};base64,{encoded}", "detail": detail},
            }
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": parts}]


def is_reasoning_model(model: str) -> bool:
    """o-series and gpt-5 models reject `temperature` and `max_tokens` (they take `max_completion_tokens`)."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    return name.startswith(_REASONING_PREFIXES) and not name.startswith("gpt-5-chat")


def request_kwargs(request: ModelRequest) -> dict[str, Any]:
    """The Chat Completions arguments for `request`, adjusted to what the model family accepts."""
    kwargs: dict[str, Any] = {"model": request.model, "messages": list(request.messages)}
    if request.response_format is not None:
        kwargs["response_format"] = dict(request.response_format)
    if is_reasoning_model(request.model):
        kwargs["max_completion_tokens"] = request.max_tokens
    else:
        # `max_tokens` is what every OpenAI-compatible server understands.
        kwargs["max_tokens"] = request.max_tokens
        kwargs["temperature"] = request.temperature
    return kwargs


def preload_client_library() -> None:
    """Import openai (about half a second) so a worker thread can do it while images are prepared."""
    import httpx2  # noqa: F401
    import openai  # noqa: F401


class DeferredModel:
    """A `VisionModel` built on first use, once its library has finished loading in the background.

    The run starts listing and preparing images at once (Pillow releases the GIL) while openai is
    imported in a worker thread; the client itself is then made on the event loop's own thread.
    """

    def __init__(self, build: Callable[[], VisionModel], loaded: Awaitable[None]) -> None:
        self._build = build
        self._loaded = loaded
        self._inner: VisionModel | None = None

    async def _model(self) -> VisionModel:
        if self._inner is None:
            await self._loaded
            if self._inner is None:
                self._inner = self._build()
        return self._inner

    async def complete(self, request: ModelRequest, *, timeout: float) -> ModelResponse:
        return await (await self._model()).complete(request, timeout=timeout)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
        elif isinstance(self._loaded, asyncio.Future):
            with contextlib.suppress(BaseException):
                await self._loaded

    def __repr__(self) -> str:
        return f"DeferredModel({self._inner!r})"


class OpenAIVisionModel:
    """`VisionModel` over an OpenAI-compatible Chat Completions endpoint. Sends once; never retries."""

    def __init__(self, *, api_key: str, base_url: str | None, max_connections: int = 64) -> None:
        if not api_key:
            raise ConfigError(
                "No API key: set OPENAI_API_KEY or pass --api-key (any placeholder works for a local server)"
            )
        import httpx2
        import openai

        self._base_url = base_url
        self._max_connections = max_connections
        self._secrets = (api_key,)
        http_client = openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._client: AsyncOpenAI = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=httpx2.Timeout(CLIENT_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S),
            http_client=http_client,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIVisionModel(base_url={_redact_url(self._base_url)!r}, "
            f"max_connections={self._max_connections})"
        )

    # `timeout` is part of the VisionModel protocol; it is applied with asyncio.wait_for below.
    async def complete(self, request: ModelRequest, *, timeout: float) -> ModelResponse:
        call = self._client.chat.completions.with_raw_response.create(
            **request_kwargs(request), timeout=timeout + _SDK_TIMEOUT_MARGIN_S
        )
        try:
            raw = await asyncio.wait_for(call, timeout)
            completion = raw.parse()
            headers = {key.lower(): value for key, value in raw.headers.items()}
            return _to_response(completion, headers)
        except Exception as exc:
            error = classify_error(exc, secrets=self._secrets)
            if error.kind != "auth":
                raise error from exc
        # Raised outside the except block so the SDK's exception, whose text quotes the key back,
        # is neither the cause nor the context of ours and cannot reach a --debug traceback.
        raise error

    async def aclose(self) -> None:
        await self._client.close()


def _to_response(completion: ChatCompletion, headers: dict[str, str]) -> ModelResponse:
    choices = completion.choices or []
    usage = _usage(completion)
    if not choices:
        return ModelResponse(None, "empty", None, usage, headers, completion.model)
    choice = choices[0]
    message = choice.message
    return ModelResponse(
        content=message.content if message is not None else None,
        finish_reason=choice.finish_reason,
        refusal=getattr(message, "refusal", None),
        usage=usage,
        headers=headers,
        model=completion.model,
    )


def _usage(completion: ChatCompletion) -> Usage | None:
    usage = completion.usage
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens if details is not None else None) or 0
    return Usage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        cached_tokens=cached,
    )


# --- error classification ---------------------------------------------------------------------------


def classify_error(exc: BaseException, *, secrets: Sequence[str] = ()) -> ModelCallError:
    """Translate whatever a model call raised into a `ModelCallError` the retry loop can act on."""
    if isinstance(exc, ModelCallError):
        return exc
    import openai

    if isinstance(exc, openai.APIStatusError):
        return _classify_status(exc, secrets)
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return ModelCallError("model request timed out", retryable=True, kind="timeout")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return ModelCallError(
            f"connection to the model endpoint failed{detail}: check --base-url and the network",
            retryable=True,
            kind="connection",
        )
    if isinstance(exc, openai.APIResponseValidationError | ValueError | AttributeError | TypeError):
        # The server answered 2xx with a body that is not a chat completion.
        return ModelCallError(
            f"model endpoint sent an unreadable response ({type(exc).__name__})",
            retryable=True,
            kind="bad_response",
        )
    return ModelCallError(
        f"unexpected error from the model client: {type(exc).__name__}", retryable=False, kind="error"
    )


def _classify_status(exc: Any, secrets: Sequence[str]) -> ModelCallError:
    status: int = exc.status_code
    code = exc.code if isinstance(exc.code, str) else None
    if status == 429 and "insufficient_quota" in (code, getattr(exc, "type", None)):
        return ModelCallError(
            "quota exhausted (HTTP 429 insufficient_quota): add credit or raise the limit, then resume",
            retryable=False,
            fatal=True,
            status=status,
            kind="quota",
        )
    if status == 429:
        return ModelCallError(
            "rate limited (HTTP 429)",
            retryable=True,
            status=status,
            retry_after=retry_after_seconds(exc.response.headers),
            kind="rate_limit",
            headers={k.lower(): v for k, v in exc.response.headers.items()},
        )
    if status in (401, 403):
        # Never echo the server's text here: OpenAI's 401 message quotes the key back.
        return ModelCallError(
            f"authentication failed (HTTP {status}): check OPENAI_API_KEY or --api-key",
            retryable=False,
            fatal=True,
            status=status,
            kind="auth",
        )
    said = _server_message(exc, secrets)
    if status == 404:
        return ModelCallError(
            f"model or endpoint not found (HTTP 404): check --model and --base-url{said}",
            retryable=False,
            fatal=True,
            status=status,
            kind="not_found",
        )
    label = f"HTTP {status} {code}" if code else f"HTTP {status}"
    if status >= 500 or status in (408, 409):
        return ModelCallError(
            f"model server error ({label}){said}",
            retryable=True,
            status=status,
            retry_after=retry_after_seconds(exc.response.headers),
            kind="server",
        )
    return ModelCallError(
        f"model request rejected ({label}){said}", retryable=False, status=status, kind="rejected"
    )


def _server_message(exc: Any, secrets: Sequence[str]) -> str:
    """The server's own error text, one line, short, with anything key-like blanked out."""
    body = exc.body
    message = body.get("message") if isinstance(body, Mapping) else None
    if not isinstance(message, str) or not message.strip():
        return ""
    text = " ".join(message.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _KEY_LIKE.sub("***", text)
    if len(text) > _SERVER_MESSAGE_LIMIT:
        text = text[: _SERVER_MESSAGE_LIMIT - 3] + "..."
    return f" (server said: {text})"


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The server's wait hint: `retry-after-ms`, else `retry-after` as seconds or an HTTP date."""
    lowered = {key.lower(): value for key, value in headers.items()}
    millis = _finite_float(lowered.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000.0, 0.0)
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _finite_float(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _finite_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _redact_url(url: str | None) -> str | None:
    """Drop user:password and the query string from a URL before it is shown anywhere."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
