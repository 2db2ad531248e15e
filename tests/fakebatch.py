"""The fake OpenAI server plus the Files and Batches endpoints, for `image-analyzer batch` tests.

    with FakeBatchServer.running_in_thread() as srv:
        ... `batch submit` uploads a JSONL file and creates a batch ...
        srv.complete(batch_id)            # answer every line (through the chat fake), status `completed`
        srv.expire(batch_id, answered=1)  # answer the first line, the rest `batch_expired`, status `expired`
        srv.fail(batch_id, "bad file")    # status `failed` with that error
        srv.set_status(batch_id, "in_progress")

Every line of a batch is answered by the same machinery as `/v1/chat/completions` (scripts, answer
functions, records), so `srv.script([Refusal()])` makes a batch line refuse and `srv.requests` lists
batch lines too. Output files list their lines in reverse order, because the Batch API does not promise
the input order. With `auto_advance=True`, each `GET /v1/batches/{id}` moves a batch one step:
validating -> in_progress -> finalizing -> completed (answered). `max_custom_id` rejects longer
`custom_id`s, as some OpenAI-compatible batch servers do (64 characters).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakeopenai import FakeOpenAIServer

STEPS = ("validating", "in_progress", "finalizing", "completed")
TERMINAL = frozenset({"completed", "expired", "failed", "cancelled"})


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.data.splitlines() if line.strip()]


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    lines: list[dict[str, Any]]
    authorization: str | None
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    stamps: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        total = len(self.lines) if self.status != "failed" else 0
        data = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86_400,
            "request_counts": {"total": total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }
        for stamp in (
            "in_progress",
            "finalizing",
            "completed",
            "failed",
            "expired",
            "cancelling",
            "cancelled",
        ):
            data[f"{stamp}_at"] = self.stamps.get(stamp)
        return data


class FakeBatchServer(FakeOpenAIServer):
    """See the module docstring. Test controls are safe to call from any thread."""

    def __init__(
        self,
        *,
        auto_advance: bool = False,
        max_custom_id: int | None = 64,
        max_batch_requests: int = 50_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.auto_advance = auto_advance
        self.max_custom_id = max_custom_id
        self.max_batch_requests = max_batch_requests
        self._files: dict[str, StoredFile] = {}
        self._batches: dict[str, FakeBatch] = {}
        self._ids = itertools.count(1)
        self._batch_lock = threading.Lock()
        self.batch_creates: list[dict[str, Any]] = []
        self.retrieves = 0

    # -- routes --

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}", self._file_info)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches", self._list_batches)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve_batch)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel_batch)

    # -- inspection --

    @property
    def uploads(self) -> list[StoredFile]:
        """Input files uploaded with purpose `batch`, oldest first."""
        with self._batch_lock:
            return [f for f in self._files.values() if f.purpose == "batch"]

    @property
    def batches(self) -> list[dict[str, Any]]:
        with self._batch_lock:
            return [b.as_json() for b in self._batches.values()]

    def batch(self, batch_id: str) -> dict[str, Any]:
        with self._batch_lock:
            return self._batches[batch_id].as_json()

    def batch_lines(self, batch_id: str) -> list[dict[str, Any]]:
        with self._batch_lock:
            return list(self._batches[batch_id].lines)

    def file_lines(self, file_id: str) -> list[dict[str, Any]]:
        with self._batch_lock:
            return self._files[file_id].lines()

    # -- test-driven transitions --

    def set_status(self, batch_id: str, status: str) -> None:
        with self._batch_lock:
            batch = self._batches[batch_id]
            batch.status = status
            batch.stamps[status] = int(time.time())

    def complete(self, batch_id: str) -> None:
        self._call(self._finish(batch_id, answered=None))

    def expire(self, batch_id: str, *, answered: int) -> None:
        self._call(self._finish(batch_id, answered=answered))

    def fail(self, batch_id: str, message: str = "The input file is invalid.") -> None:
        with self._batch_lock:
            batch = self._batches[batch_id]
            batch.status = "failed"
            batch.stamps["failed"] = int(time.time())
            batch.errors = [{"code": "invalid_file", "message": message, "param": None, "line": None}]

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "server not started"
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    # -- answering --

    async def _finish(self, batch_id: str, *, answered: int | None) -> None:
        """Answer lines (all, or the first `answered`) and write the output and error files."""
        with self._batch_lock:
            batch = self._batches[batch_id]
            lines = list(batch.lines)
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for number, line in enumerate(lines):
            if answered is not None and number >= answered:
                errors.append(_expired_line(number, line))
                continue
            status, body = await self._answer_line(line, batch.authorization)
            entry = {
                "id": f"batch_req_{batch_id}_{number}",
                "custom_id": line.get("custom_id"),
                "response": {"status_code": status, "request_id": f"req_{batch_id}_{number}", "body": body},
                "error": None,
            }
            (outputs if status == 200 else errors).append(entry)
        now = int(time.time())
        with self._batch_lock:
            batch.completed, batch.failed = len(outputs), len(errors)
            batch.output_file_id = self._store_output(batch_id, "output", outputs[::-1])
            batch.error_file_id = self._store_output(batch_id, "error", errors[::-1])
            batch.status = "expired" if answered is not None else "completed"
            batch.stamps[batch.status] = now

    async def _answer_line(self, line: dict[str, Any], authorization: str | None) -> tuple[int, Any]:
        record = self._new_record(dict(line.get("body") or {}), authorization)
        self._enter(record)
        try:
            response = await self._respond(record, None)  # type: ignore[arg-type]
        finally:
            self._leave()
        if response is None:
            record.status = None
            return 500, {"error": {"message": "connection dropped", "type": "server_error"}}
        record.status = response.status
        text = response.text or ""  # type: ignore[attr-defined]
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def _store_output(self, batch_id: str, kind: str, entries: list[dict[str, Any]]) -> str | None:
        if not entries:
            return None
        file_id = f"file-{kind}-{batch_id}"
        data = "".join(json.dumps(e) + "\n" for e in entries).encode()
        self._files[file_id] = StoredFile(
            file_id, f"{batch_id}_{kind}.jsonl", f"batch_{kind}", data, int(time.time())
        )
        return file_id

    # -- handlers --

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return _error(401, "Incorrect API key provided.", "invalid_api_key")

    async def _upload(self, request: web.Request) -> web.Response:
        if (problem := self._unauthorized(request)) is not None:
            return problem
        form = await request.post()
        upload = form.get("file")
        purpose = str(form.get("purpose") or "")
        if upload is None or isinstance(upload, str) or not hasattr(upload, "file"):
            return _error(400, "Missing required parameter: 'file'.", "missing_required_parameter")
        if purpose not in ("batch", "assistants", "fine-tune", "vision", "user_data", "evals"):
            return _error(400, f"Invalid purpose {purpose!r}.", "invalid_value")
        data = upload.file.read()
        with self._batch_lock:
            stored = StoredFile(f"file-{next(self._ids)}", upload.filename, purpose, data, int(time.time()))
            self._files[stored.id] = stored
        return web.json_response(stored.as_json())

    def _stored(self, request: web.Request) -> StoredFile | None:
        with self._batch_lock:
            return self._files.get(request.match_info["file_id"])

    async def _file_info(self, request: web.Request) -> web.Response:
        stored = self._stored(request)
        if stored is None:
            return _error(404, "No such File object.", "not_found")
        return web.json_response(stored.as_json())

    async def _file_content(self, request: web.Request) -> web.Response:
        if (problem := self._unauthorized(request)) is not None:
            return problem
        stored = self._stored(request)
        if stored is None:
            return _error(404, "No such File object.", "not_found")
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        if (problem := self._unauthorized(request)) is not None:
            return problem
        body = await request.json()
        with self._batch_lock:
            self.batch_creates.append(body)
            stored = self._files.get(str(body.get("input_file_id")))
        if stored is None or stored.purpose != "batch":
            return _error(400, "Invalid input_file_id: upload a file with purpose 'batch'.", "invalid_value")
        if body.get("endpoint") != "/v1/chat/completions":
            return _error(400, f"Unsupported endpoint {body.get('endpoint')!r}.", "invalid_value")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'.", "invalid_value")
        lines = stored.lines()
        batch = FakeBatch(
            id=f"batch_{next(self._ids)}",
            input_file_id=stored.id,
            endpoint=str(body["endpoint"]),
            completion_window="24h",
            metadata=body.get("metadata"),
            lines=lines,
            authorization=request.headers.get("authorization"),
            created_at=int(time.time()),
        )
        batch.errors = self._validate(lines, batch.endpoint)
        if batch.errors:
            batch.status = "failed"
            batch.stamps["failed"] = batch.created_at
        with self._batch_lock:
            self._batches[batch.id] = batch
        return web.json_response(batch.as_json())

    def _validate(self, lines: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
        problems: list[dict[str, Any]] = []
        if len(lines) > self.max_batch_requests:
            problems.append(_problem("too_many_requests", f"over {self.max_batch_requests} requests", None))
        seen: set[str] = set()
        for number, line in enumerate(lines, start=1):
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                problems.append(_problem("missing_required_parameter", "Missing 'custom_id'.", number))
            elif custom_id in seen:
                problems.append(_problem("duplicate_custom_id", "custom_id is a duplicate.", number))
            elif self.max_custom_id is not None and len(custom_id) > self.max_custom_id:
                problems.append(_problem("invalid_value", "custom_id is too long.", number))
            else:
                seen.add(custom_id)
            if line.get("method") != "POST" or line.get("url") != endpoint:
                problems.append(_problem("invalid_url", f"url must be {endpoint} with POST.", number))
            if not isinstance(line.get("body"), dict):
                problems.append(_problem("missing_required_parameter", "Missing 'body'.", number))
        return problems

    async def _list_batches(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        with self._batch_lock:
            newest_first = [b.as_json() for b in reversed(self._batches.values())]
        start = 0
        if after is not None:
            ids = [b["id"] for b in newest_first]
            start = ids.index(after) + 1 if after in ids else len(ids)
        page = newest_first[start : start + limit]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": start + limit < len(newest_first),
            }
        )

    async def _retrieve_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        with self._batch_lock:
            self.retrieves += 1
            batch = self._batches.get(batch_id)
        if batch is None:
            return _error(404, f"No batch found with id '{batch_id}'.", "not_found")
        if self.auto_advance and batch.status in STEPS[:-1]:
            following = STEPS[STEPS.index(batch.status) + 1]
            if following == "completed":
                await self._finish(batch_id, answered=None)
            else:
                self.set_status(batch_id, following)
        return web.json_response(self.batch(batch_id))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        with self._batch_lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return _error(404, f"No batch found with id '{batch_id}'.", "not_found")
            if batch.status not in TERMINAL:
                batch.status = "cancelled"
                batch.stamps["cancelled"] = int(time.time())
        return web.json_response(self.batch(batch_id))


def _expired_line(number: int, line: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_expired_{number}",
        "custom_id": line.get("custom_id"),
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }


def _problem(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _error(status: int, message: str, code: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(payload, status=status)
