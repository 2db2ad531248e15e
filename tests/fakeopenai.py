"""A fake OpenAI-compatible Chat Completions server for the test suite.

Real sockets on 127.0.0.1 with an ephemeral port, so the real `AsyncOpenAI` talks to it over HTTP.

    async with FakeOpenAIServer() as srv:              # inside an async test
        client = AsyncOpenAI(base_url=srv.base_url, api_key="test")

    with FakeOpenAIServer.running_in_thread() as srv:   # alive while a CLI subprocess runs
        subprocess.run([..., "--base-url", srv.base_url])

By default every request is answered 200 with a valid answer generated from the request's own
`response_format.json_schema.schema` (see `generate_answer`), with `usage` counted the way OpenAI
counts it (`prompt_tokens_for`). Per test you can:

- script faults, consumed one per request in order, then back to the default:
  `srv.script([Status(429, headers={"retry-after": "0"}), Hang(), Malformed()])`
- script faults only for matching requests (deterministic under concurrency):
  `srv.script_for(lambda req: "kitchen" in req.text, [Status(500)])`
- answer with your own function: `srv.answer_with(lambda body: {...})`
- enforce rate limits: `FakeOpenAIServer(rpm=5, tpm=10_000, window=1.0)`

and inspect `srv.requests` (one `RequestRecord` each), `srv.max_in_flight`, `srv.status_counts`,
`srv.successful_image_hashes()`. Waiting for the server is done with `srv.wait_until(pred)` (sync) or
`await srv.until(pred)`, never with sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import itertools
import json
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

# --- scripted actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """Answer with this HTTP status. `body`: a dict (sent as JSON), a str (sent as text) or None
    (an OpenAI-style error object). `code` goes into that error object."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    code: str | None = None


@dataclass(frozen=True)
class QuotaExceeded:
    """429 with error code `insufficient_quota`: the account is out of credit."""


@dataclass(frozen=True)
class Hang:
    """Never answer, until the client disconnects or the server stops (then 503)."""


@dataclass(frozen=True)
class Held:
    """Hold the request until the test calls `srv.release()` (then `then`, default the normal answer).

    Lets a test see exactly how many requests a client keeps in flight without timing anything."""

    then: Action | None = None


@dataclass(frozen=True)
class Malformed:
    """200, a well-formed completion whose message content is not JSON."""

    content: str = 'Here is the analysis you asked for: {"layouts": ['


@dataclass(frozen=True)
class SchemaInvalid:
    """200 with JSON content that violates the requested schema."""

    content: Any = field(default_factory=lambda: {"unexpected_key": 1})


@dataclass(frozen=True)
class Truncated:
    """200 with `finish_reason: "length"` and the answer cut in half."""


@dataclass(frozen=True)
class Refusal:
    """200 with `message.refusal` set and `content: null`."""

    message: str = "I'm sorry, I can't help with that."


@dataclass(frozen=True)
class EmptyChoices:
    """200 with `choices: []`."""


@dataclass(frozen=True)
class NoUsage:
    """200 with the default answer but no `usage` block."""


@dataclass(frozen=True)
class Latency:
    """Wait `seconds`, then perform `then` (default: the normal answer)."""

    seconds: float
    then: Action | None = None


@dataclass(frozen=True)
class ResetConnection:
    """Drop the TCP connection without answering."""


@dataclass(frozen=True)
class GarbageBody:
    """200 whose HTTP body is not JSON at all (a broken proxy)."""

    body: str = "<html>502 Bad Gateway</html>"


@dataclass(frozen=True)
class Answer:
    """200 with exactly this content (a dict/list is JSON-encoded) and optional cached tokens."""

    content: Any
    cached_tokens: int = 0
    finish_reason: str = "stop"


Action = (
    Status
    | QuotaExceeded
    | Hang
    | Held
    | Malformed
    | SchemaInvalid
    | Truncated
    | Refusal
    | EmptyChoices
    | NoUsage
    | Latency
    | ResetConnection
    | GarbageBody
    | Answer
)


# --- records ------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """What one request carried and how it was answered."""

    index: int
    body: dict[str, Any]
    model: str | None
    text: str
    image_count: int
    image_mimes: list[str]
    """MIME types as declared in the data URLs."""
    image_formats: list[str | None]
    """Formats Pillow actually found in the decoded bytes (`JPEG`, `PNG`...), None if undecodable."""
    image_sizes: list[tuple[int, int] | None]
    image_hashes: list[str]
    """sha256 hex of each decoded image's bytes."""
    image_details: list[str]
    image_ids: list[str]
    response_format_name: str | None
    response_schema: dict[str, Any] | None
    temperature: float | None
    max_tokens: int | None
    prompt_tokens: int
    authorization: str | None = None
    status: int | None = None
    """HTTP status answered; None while in flight or when the connection was dropped."""
    outcome: str = "pending"
    """`ok` for a usable answer, else the action name (`hang`, `malformed`, `rate_limited`...)."""


# --- token counting (exposed for tests of estimates) --------------------------------------------------

_TILE_MODELS: dict[str, tuple[int, int]] = {
    # base tokens, tokens per 512px tile
    "gpt-4o-mini": (2833, 5667),
    "gpt-4o": (85, 170),
    "gpt-4.1": (85, 170),
    "gpt-4.5": (85, 170),
    "gpt-5": (70, 140),
    "o1": (75, 150),
    "o3": (75, 150),
}
_PATCH_MODELS: dict[str, float] = {
    # 32px patches capped at 1536, times a per-model multiplier
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
    "o4-mini": 1.72,
}
_PATCH_CAP = 1536


def _family(model: str, table: Mapping[str, Any]) -> str | None:
    """The longest table key that `model` starts with (`gpt-4o-2024-08-06` -> `gpt-4o`)."""
    name = model.lower()
    matches = [key for key in table if name == key or name.startswith(key + "-")]
    return max(matches, key=len) if matches else None


def image_tokens(width: int, height: int, *, detail: str = "auto", model: str = "gpt-4o") -> int:
    """Input tokens for one image, by OpenAI's published formulas."""
    patch_family = _family(model, _PATCH_MODELS)
    tile_family = _family(model, _TILE_MODELS)
    if patch_family is not None and (tile_family is None or len(patch_family) > len(tile_family)):
        return math.ceil(_patches(width, height) * _PATCH_MODELS[patch_family])
    base, per_tile = _TILE_MODELS[tile_family or "gpt-4o"]
    if detail == "low":
        return base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return base + per_tile * tiles


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= _PATCH_CAP:
        return patches
    shrink = math.sqrt(32 * 32 * _PATCH_CAP / (width * height))
    w, h = width * shrink, height * shrink
    shrink *= min(math.floor(w / 32) / (w / 32), math.floor(h / 32) / (h / 32))
    return min(math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32), _PATCH_CAP)


def prompt_tokens_for(body: Mapping[str, Any]) -> int:
    """Prompt tokens as the fake bills them: ceil(text chars / 4) plus each image's tile tokens."""
    model = str(body.get("model") or "gpt-4o")
    texts, images = _split_content(body.get("messages") or [])
    text_tokens = math.ceil(sum(len(t) for t in texts) / 4)
    image_part = 0
    for image in images:
        if image.size is not None:
            image_part += image_tokens(*image.size, detail=image.detail, model=model)
    return text_tokens + image_part


@dataclass
class _Image:
    url: str
    detail: str
    mime: str | None = None
    data: bytes | None = None
    size: tuple[int, int] | None = None
    format: str | None = None


_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<b64>;base64)?,(?P<data>.*)$", re.DOTALL)


def _split_content(messages: Iterable[Any]) -> tuple[list[str], list[_Image]]:
    texts: list[str] = []
    images: list[_Image] = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                spec = part.get("image_url") or {}
                images.append(_decode_image(str(spec.get("url", "")), str(spec.get("detail", "auto"))))
    return texts, images


def _decode_image(url: str, detail: str) -> _Image:
    image = _Image(url=url, detail=detail)
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        return image
    image.mime = match.group("mime")
    try:
        image.data = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        return image
    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            image.size = opened.size
            image.format = opened.format
    except Exception:  # any undecodable image is just "not an image" here
        image.size = None
    return image


# --- answers generated from the request's schema -------------------------------------------------------

DEFAULT = object()
"""Returned by an enum chooser to mean "use the default pick"."""

EnumChooser = Callable[[tuple[Any, ...], list[Any]], Any]


def generate_answer(
    schema: Mapping[str, Any],
    *,
    prefer_null: bool = True,
    choose: EnumChooser | Mapping[str, Any] | None = None,
) -> Any:
    """A value valid against a strict-mode response schema, built by simple rules.

    Objects get every property; enums their first non-null member (or `choose(path, members)`; a
    mapping chooses by property name); nullable values are null when `prefer_null`; arrays whose
    items are enums get all non-null members (every image id assigned); other arrays one item
    (or `minItems`); strings "x"; numbers `minimum` or 1; booleans false.
    """
    chooser = _as_chooser(choose)
    return _Generator(schema, prefer_null, chooser).value(schema, ())


def _as_chooser(choose: EnumChooser | Mapping[str, Any] | None) -> EnumChooser | None:
    if choose is None or callable(choose):
        return choose
    mapping = dict(choose)

    def by_name(path: tuple[Any, ...], members: list[Any]) -> Any:
        names = [p for p in path if isinstance(p, str)]
        return mapping.get(names[-1], DEFAULT) if names else DEFAULT

    return by_name


class _Generator:
    def __init__(self, root: Mapping[str, Any], prefer_null: bool, choose: EnumChooser | None) -> None:
        self.root = root
        self.prefer_null = prefer_null
        self.choose = choose

    def resolve(self, node: Any) -> Mapping[str, Any]:
        seen = 0
        while isinstance(node, Mapping) and "$ref" in node and seen < 32:
            node = self._lookup(str(node["$ref"]))
            seen += 1
        return node if isinstance(node, Mapping) else {}

    def _lookup(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return node

    def value(self, node: Any, path: tuple[Any, ...]) -> Any:
        schema = self.resolve(node)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self._enum(list(schema["enum"]), path)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._union([self.resolve(b) for b in schema[key]], path)
        types = schema.get("type")
        if isinstance(types, list):
            if "null" in types and (self.prefer_null or len(types) == 1):
                return None
            types = next((t for t in types if t != "null"), None)
        return self._typed(types, schema, path)

    def _enum(self, members: list[Any], path: tuple[Any, ...]) -> Any:
        if self.choose is not None:
            picked = self.choose(path, members)
            if picked is not DEFAULT:
                return picked
        if None in members and self.prefer_null:
            return None
        return next((m for m in members if m is not None), None)

    def _union(self, branches: list[Mapping[str, Any]], path: tuple[Any, ...]) -> Any:
        is_null = [b.get("type") == "null" for b in branches]
        if any(is_null) and self.prefer_null:
            return None
        for branch, null in zip(branches, is_null, strict=True):
            if not null:
                return self.value(branch, path)
        return None

    def _typed(self, kind: Any, schema: Mapping[str, Any], path: tuple[Any, ...]) -> Any:
        if kind == "object" or (kind is None and "properties" in schema):
            props = schema.get("properties") or {}
            return {name: self.value(sub, (*path, name)) for name, sub in props.items()}
        if kind == "array":
            return self._array(schema, path)
        if kind == "string":
            return _string(schema)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        return "x"

    def _array(self, schema: Mapping[str, Any], path: tuple[Any, ...]) -> list[Any]:
        items = self.resolve(schema.get("items") or {})
        if "enum" in items:
            members = [m for m in items["enum"] if m is not None]
            return members[: schema["maxItems"]] if "maxItems" in schema else members
        count = max(1, int(schema.get("minItems", 1)))
        return [self.value(items, (*path, i)) for i in range(count)]


def _string(schema: Mapping[str, Any]) -> str:
    samples = {
        "date": "2024-01-01",
        "date-time": "2024-01-01T00:00:00Z",
        "uri": "https://example.com/x",
        "email": "x@example.com",
    }
    text = samples.get(str(schema.get("format")), "x")
    min_length = int(schema.get("minLength", 0))
    return text + "x" * max(0, min_length - len(text))


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    value = float(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
    if "maximum" in schema:
        value = min(value, float(schema["maximum"]))
    return math.ceil(value) if integer or value.is_integer() else value


def _array_enum_members(schema: Any, root: Mapping[str, Any] | None = None, depth: int = 0) -> list[str]:
    """String members of every `enum` that sits in an array's `items` (the batch's image ids)."""
    if depth > 32:
        return []
    root = root if root is not None else schema
    resolved = _Generator(root, True, None).resolve(schema)
    found: list[str] = []
    items = resolved.get("items")
    if isinstance(items, Mapping):
        item = _Generator(root, True, None).resolve(items)
        found.extend(m for m in item.get("enum", []) if isinstance(m, str))
    children: list[Any] = []
    for key in ("properties", "$defs", "definitions"):
        value = resolved.get(key)
        if isinstance(value, Mapping):
            children.extend(value.values())
    for key in ("anyOf", "oneOf"):
        children.extend(resolved.get(key) or [])
    if isinstance(items, Mapping):
        children.append(items)
    for child in children:
        found.extend(m for m in _array_enum_members(child, root, depth + 1) if m not in found)
    return list(dict.fromkeys(found))


# --- rate limits --------------------------------------------------------------------------------------


def format_reset(seconds: float) -> str:
    """Durations the way OpenAI's `x-ratelimit-reset-*` headers write them: `120ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 0)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    sec_text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{sec_text}"
    if minutes:
        return f"{int(minutes)}m{sec_text}"
    return sec_text


class _FixedWindow:
    """A fixed-window counter aligned to the server's start time."""

    def __init__(self, limit: int, window: float, started: float) -> None:
        self.limit = limit
        self.window = window
        self.started = started
        self._index = -1
        self.used = 0

    def _roll(self, now: float) -> None:
        index = int((now - self.started) // self.window)
        if index != self._index:
            self._index = index
            self.used = 0

    def reset_in(self, now: float) -> float:
        self._roll(now)
        return self.started + (self._index + 1) * self.window - now

    def remaining(self, now: float) -> int:
        self._roll(now)
        return max(self.limit - self.used, 0)

    def fits(self, now: float, amount: int) -> bool:
        self._roll(now)
        return self.used + amount <= self.limit


# --- the server ---------------------------------------------------------------------------------------

AnswerFunction = Callable[[dict[str, Any]], Any]
Predicate = Callable[[RequestRecord], bool]


class FakeOpenAIServer:
    """See the module docstring. All public methods are safe to call from any thread."""

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        tpm_counts_max_tokens: bool = True,
        prefer_null: bool = True,
        choose_enum: EnumChooser | Mapping[str, Any] | None = None,
        image_id_pattern: str | None = None,
        api_key: str | None = None,
        models: Sequence[str] = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5-mini"),
        client_max_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self.tpm_counts_max_tokens = tpm_counts_max_tokens
        self.prefer_null = prefer_null
        self.choose_enum = choose_enum
        self.image_id_pattern = re.compile(image_id_pattern) if image_id_pattern else None
        self.api_key = api_key
        self.models = tuple(models)
        self.client_max_size = client_max_size

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[Action] = deque()
        self._rules: list[tuple[Predicate, deque[Action]]] = []
        self._answer_fn: AnswerFunction | None = None
        self._records: list[RequestRecord] = []
        self._counter = itertools.count()
        self._in_flight = 0
        self._max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._windows: dict[str, _FixedWindow] = {}
        self.port = 0

    # -- lifecycle --

    async def start(self) -> FakeOpenAIServer:
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        self.add_routes(app)
        self._stopping = asyncio.Event()
        self._release = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        now = time.monotonic()
        if self.rpm is not None:
            self._windows["requests"] = _FixedWindow(self.rpm, self.window, now)
        if self.tpm is not None:
            self._windows["tokens"] = _FixedWindow(self.tpm, self.window, now)
        # handler_cancellation: a client that gives up (wait_for timeout) ends its handler too.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    def add_routes(self, app: web.Application) -> None:
        """Hook for subclasses that serve more endpoints (`tests/fakebatch.py`: Files and Batches)."""

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @classmethod
    @contextlib.contextmanager
    def running_in_thread(cls, **kwargs: Any) -> Iterator[FakeOpenAIServer]:
        """Run the server on its own event loop in a daemon thread (for sync tests and subprocesses)."""
        server = cls(**kwargs)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
            yield server
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls, **kwargs: Any) -> AsyncIterator[FakeOpenAIServer]:
        async with cls(**kwargs) as server:
            yield server

    # -- addresses --

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- scripting --

    def script(self, actions: Iterable[Action]) -> None:
        """Queue actions for the next requests (any request), one each, in order."""
        with self._lock:
            self._queue.extend(actions)

    def script_for(self, predicate: Predicate, actions: Iterable[Action]) -> None:
        """Queue actions for requests matching `predicate(record)`; checked before `script`."""
        with self._lock:
            self._rules.append((predicate, deque(actions)))

    def answer_with(self, fn: AnswerFunction | None) -> None:
        """Build default answers with `fn(request_json)` (a dict/list is JSON-encoded, a str sent as-is)."""
        with self._lock:
            self._answer_fn = fn

    def release(self) -> None:
        """Let every request currently held by `Held()` go on; later `Held()` requests wait again."""
        if self._loop is None or self._release is None:
            return
        release = self._release

        def swap() -> None:
            self._release = asyncio.Event()
            release.set()

        if _running_loop() is self._loop:
            swap()
        else:
            self._loop.call_soon_threadsafe(swap)

    def pending_actions(self) -> int:
        with self._lock:
            return len(self._queue) + sum(len(q) for _, q in self._rules)

    def reset(self) -> None:
        """Forget scripts, the answer function and every record (counters included)."""
        with self._lock:
            self._queue.clear()
            self._rules.clear()
            self._answer_fn = None
            self._records.clear()
            self._max_in_flight = self._in_flight

    # -- inspection --

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    @property
    def status_counts(self) -> Counter[int | None]:
        with self._lock:
            return Counter(r.status for r in self._records)

    def outcomes(self) -> Counter[str]:
        with self._lock:
            return Counter(r.outcome for r in self._records)

    def successful_image_hashes(self) -> list[str]:
        """sha256 of every image in a request answered with a usable answer, in request order."""
        with self._lock:
            return [h for r in self._records if r.outcome == "ok" for h in r.image_hashes]

    def wait_until(self, predicate: Callable[[FakeOpenAIServer], bool], timeout: float = 10.0) -> None:
        """Block until `predicate(self)` holds (re-checked whenever a request starts or ends)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("fake OpenAI server: condition not reached in time")
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    async def until(self, predicate: Callable[[FakeOpenAIServer], bool], timeout: float = 10.0) -> None:
        """`wait_until` for async tests (waits in a thread so the server's loop keeps running)."""
        await asyncio.to_thread(self.wait_until, predicate, timeout)

    # -- HTTP handlers --

    async def _list_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.", "invalid_request_error")
        record = self._new_record(body, request.headers.get("authorization"))
        self._enter(record)
        try:
            response = await self._respond(record, request)
        except asyncio.CancelledError:
            record.outcome = "disconnected" if record.outcome == "pending" else record.outcome
            raise
        finally:
            self._leave()
        if response is not None:
            record.status = response.status
            self._add_rate_headers(response)
        return response if response is not None else web.Response(status=500)

    def _new_record(self, body: dict[str, Any], authorization: str | None) -> RequestRecord:
        texts, images = _split_content(body.get("messages") or [])
        response_format = body.get("response_format") or {}
        json_schema = response_format.get("json_schema") or {}
        schema = json_schema.get("schema") if isinstance(json_schema.get("schema"), dict) else None
        text = "\n".join(texts)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        return RequestRecord(
            index=next(self._counter),
            body=body,
            model=body.get("model"),
            text=text,
            image_count=len(images),
            image_mimes=[i.mime or "" for i in images],
            image_formats=[i.format for i in images],
            image_sizes=[i.size for i in images],
            image_hashes=[hashlib.sha256(i.data).hexdigest() for i in images if i.data is not None],
            image_details=[i.detail for i in images],
            image_ids=self._mentioned_ids(text, schema),
            response_format_name=json_schema.get("name"),
            response_schema=schema,
            temperature=body.get("temperature"),
            max_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
            prompt_tokens=prompt_tokens_for(body),
            authorization=authorization,
        )

    def _mentioned_ids(self, text: str, schema: dict[str, Any] | None) -> list[str]:
        if self.image_id_pattern is not None:
            return list(dict.fromkeys(self.image_id_pattern.findall(text)))
        if schema is None:
            return []
        return [m for m in _array_enum_members(schema) if m in text]

    def _enter(self, record: RequestRecord) -> None:
        with self._changed:
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._changed.notify_all()

    def _leave(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def _next_action(self, record: RequestRecord) -> Action | None:
        with self._lock:
            for predicate, queue in self._rules:
                if queue and predicate(record):
                    return queue.popleft()
            return self._queue.popleft() if self._queue else None

    async def _respond(self, record: RequestRecord, request: web.Request) -> web.StreamResponse | None:
        problem = self._check_request(record)
        if problem is not None:
            return problem
        limited = self._rate_limit(record)
        if limited is not None:
            record.outcome = "rate_limited"
            return limited
        return await self._perform(self._next_action(record), record, request)

    def _check_request(self, record: RequestRecord) -> web.Response | None:
        if self.api_key is not None and record.authorization != f"Bearer {self.api_key}":
            record.outcome = "unauthorized"
            presented = (record.authorization or "").removeprefix("Bearer ")
            return _error(
                401,
                f"Incorrect API key provided: {presented}.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        if not record.model:
            record.outcome = "bad_request"
            return _error(400, "you must provide a model parameter", "invalid_request_error")
        _, images = _split_content(record.body.get("messages") or [])
        for image in images:
            if image.format is None or (image.mime or "") not in _ACCEPTED_MIMES:
                record.outcome = "invalid_image"
                return _error(
                    400,
                    "You uploaded an unsupported image. Please make sure your image is valid.",
                    "invalid_request_error",
                    code="invalid_image_format",
                )
        return None

    async def _perform(
        self, action: Action | None, record: RequestRecord, request: web.Request
    ) -> web.StreamResponse | None:
        if action is None:
            record.outcome = "ok"
            return self._completion(record, self._default_content(record))
        if isinstance(action, Latency):
            await self._pause(action.seconds)
            return await self._perform(action.then, record, request)
        if isinstance(action, Held):
            await self._held()
            return await self._perform(action.then, record, request)
        record.outcome = _snake(type(action).__name__)
        return await self._fault(action, record, request)

    async def _fault(
        self, action: Action, record: RequestRecord, request: web.Request
    ) -> web.StreamResponse | None:
        match action:
            case Status(status=401, headers=headers, body=None, code=code):
                # Like OpenAI, quote the key back: the client must never repeat this text.
                presented = (record.authorization or "").removeprefix("Bearer ")
                message = f"Incorrect API key provided: {presented}."
                return _error(401, message, "invalid_request_error", code=code, headers=headers)
            case Status(status=status, headers=headers, body=body, code=code):
                return _status_response(status, headers, body, code)
            case QuotaExceeded():
                return _error(
                    429,
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    code="insufficient_quota",
                )
            case Hang():
                await self._pause(None)
                return _error(503, "The server is shutting down.", "server_error")
            case Malformed(content=content):
                return self._completion(record, content)
            case SchemaInvalid(content=content):
                return self._completion(record, _encode(content))
            case Truncated():
                full = self._default_content(record)
                return self._completion(record, full[: max(len(full) // 2, 1)], finish_reason="length")
            case Refusal(message=message):
                return self._completion(record, None, refusal=message)
            case EmptyChoices():
                return self._completion(record, None, choices=False)
            case NoUsage():
                record.outcome = "ok"
                return self._completion(record, self._default_content(record), usage=False)
            case ResetConnection():
                if request.transport is not None:
                    request.transport.abort()
                record.status = None
                return None
            case GarbageBody(body=text):
                return web.Response(status=200, text=text, content_type="application/json")
            case Answer(content=content, cached_tokens=cached, finish_reason=finish_reason):
                record.outcome = "ok" if finish_reason == "stop" else record.outcome
                return self._completion(
                    record, _encode(content), cached_tokens=cached, finish_reason=finish_reason
                )
        raise AssertionError(f"unknown action {action!r}")

    async def _pause(self, seconds: float | None) -> None:
        """Sleep (or wait forever when None), but wake up as soon as the server stops."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _held(self) -> None:
        assert self._release is not None
        assert self._stopping is not None
        release = asyncio.ensure_future(self._release.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({release, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            release.cancel()
            stopping.cancel()

    def _default_content(self, record: RequestRecord) -> str:
        with self._lock:
            answer_fn = self._answer_fn
        if answer_fn is not None:
            return _encode(answer_fn(record.body))
        response_format = record.body.get("response_format") or {}
        if record.response_schema is not None:
            value = generate_answer(
                record.response_schema, prefer_null=self.prefer_null, choose=self.choose_enum
            )
            return _encode(value)
        if response_format.get("type") == "json_object":
            return "{}"
        return "ok"

    def _completion(
        self,
        record: RequestRecord,
        content: str | None,
        *,
        finish_reason: str = "stop",
        refusal: str | None = None,
        usage: bool = True,
        cached_tokens: int = 0,
        choices: bool = True,
    ) -> web.Response:
        body: dict[str, Any] = {
            "id": f"chatcmpl-fake{record.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": record.model,
            "choices": [],
            "system_fingerprint": "fp_fake",
        }
        if choices:
            message = {"role": "assistant", "content": content, "refusal": refusal}
            body["choices"] = [
                {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
            ]
        if usage:
            completion_tokens = math.ceil(len(content or refusal or "") / 4)
            body["usage"] = {
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": record.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": min(cached_tokens, record.prompt_tokens)},
                "completion_tokens_details": {"reasoning_tokens": 0},
            }
        headers = {"x-request-id": f"req_fake{record.index}", "openai-processing-ms": "1"}
        return web.json_response(body, headers=headers)

    # -- rate limits --

    def _cost(self, record: RequestRecord) -> dict[str, int]:
        tokens = record.prompt_tokens + ((record.max_tokens or 0) if self.tpm_counts_max_tokens else 0)
        return {"requests": 1, "tokens": tokens}

    def _rate_limit(self, record: RequestRecord) -> web.Response | None:
        if not self._windows:
            return None
        now = time.monotonic()
        cost = self._cost(record)
        with self._lock:
            for kind, window in self._windows.items():
                if not window.fits(now, cost[kind]):
                    wait = window.reset_in(now)
                    headers = {
                        "retry-after": str(max(math.ceil(wait), 1)),
                        "retry-after-ms": str(round(wait * 1000)),
                    }
                    return _error(
                        429,
                        f"Rate limit reached for {record.model} on {kind} per window: "
                        f"Limit {window.limit}, Used {window.used}, Requested {cost[kind]}.",
                        kind,
                        code="rate_limit_exceeded",
                        headers=headers,
                    )
            for kind, window in self._windows.items():
                window.used += cost[kind]
        return None

    def _add_rate_headers(self, response: web.StreamResponse) -> None:
        if not self._windows:
            return
        now = time.monotonic()
        with self._lock:
            for kind, window in self._windows.items():
                # Like OpenAI, the limit is stated per minute, whatever window the server enforces.
                per_minute = window.limit if self.window >= 60 else round(window.limit * 60 / self.window)
                response.headers[f"x-ratelimit-limit-{kind}"] = str(per_minute)
                response.headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining(now))
                response.headers[f"x-ratelimit-reset-{kind}"] = format_reset(window.reset_in(now))


_ACCEPTED_MIMES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _error(
    status: int,
    message: str,
    error_type: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    payload = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.json_response(payload, status=status, headers=dict(headers or {}))


def _status_response(status: int, headers: Mapping[str, str], body: Any, code: str | None) -> web.Response:
    if body is None:
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        return _error(status, f"Fake status {status}.", error_type, code=code, headers=headers)
    if isinstance(body, str):
        return web.Response(status=status, text=body, headers=dict(headers))
    return web.json_response(body, status=status, headers=dict(headers))
