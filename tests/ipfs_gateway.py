"""A local stand-in for an IPFS gateway: `GET /ipfs/<cid>` on 127.0.0.1 serves the bytes stored for it.

Runs in its own thread (so both async tests and in-process CLI runs can use it) and can misbehave on
purpose: `missing` answers 404, `wrong` serves other bytes, `hang` never answers until closed, `huge`
streams more than a schema could ever be.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from image_analyzer.ipfs import MAX_DOCUMENT_BYTES


class LocalGateway:
    def __init__(self, blobs: Mapping[str, bytes], mode: str = "ok") -> None:
        self.blobs = dict(blobs)
        self.mode = mode
        self.requested: list[str] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                cid = self.path.rsplit("/", 1)[-1]
                with gateway._lock:
                    gateway.requested.append(cid)
                gateway._answer(self, cid)

            def log_message(self, format: str, *args: object) -> None:
                return None

        return Handler

    def _answer(self, handler: BaseHTTPRequestHandler, cid: str) -> None:
        if self.mode == "hang":
            self._closing.wait(60)
            return
        body = self.blobs.get(cid)
        if self.mode == "missing" or body is None:
            handler.send_error(404, "not found")
            return
        if self.mode == "wrong":
            body = body + b" "
        if self.mode == "huge":
            body = b" " * (MAX_DOCUMENT_BYTES + 1)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> LocalGateway:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@contextmanager
def serving(blobs: Mapping[str, bytes], mode: str = "ok") -> Iterator[LocalGateway]:
    gateway = LocalGateway(blobs, mode).start()
    try:
        yield gateway
    finally:
        gateway.close()
