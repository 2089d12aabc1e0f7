"""An authorising gateway in front of the session's real Schema Registry, as registries are run
behind an API gateway or with per-subject ACLs: it forwards every request to the registry and
answers with the registry's own reply, except that

- ``credentials``: requests without this ``user:password`` (basic auth) get ``401``;
- ``refuse``: ``GET /schemas/ids/<id>`` for these ids gets the given status (``403``, ``404`` ...);
- ``slow``: ``GET /schemas/ids/<id>`` for these ids waits until :meth:`RegistryGate.release` (or
  the given number of seconds) before it is forwarded;
- ``down``: while set, every request gets ``503``; ``refuse_all``: every request gets this status.

Each forwarded or refused request is recorded (path, status, time of the answer).
"""

from __future__ import annotations

import base64
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SCHEMA_ID = re.compile(r"/schemas/ids/(\d+)")


@dataclass
class Answer:
    path: str
    status: int
    at: float


@dataclass
class RegistryGate:
    upstream: str
    credentials: str | None = None
    refuse: dict[int, int] = field(default_factory=dict)
    slow: dict[int, float] = field(default_factory=dict)
    down: bool = False
    refuse_all: int | None = None
    answers: list[Answer] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._released = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate._handle(self)

            def do_POST(self) -> None:
                gate._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        prefix = self.upstream.split("://", 1)[1].split("/", 1)
        self._path_prefix = "/" + prefix[1] if len(prefix) > 1 else ""

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self._path_prefix}"

    def release(self) -> None:
        """Let the held (``slow``) look-ups through."""
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def requested(self, schema_id: int) -> bool:
        """True once a look-up of ``schema_id`` arrived (answered or not)."""
        return any(p.endswith(f"/schemas/ids/{schema_id}") for p in list(self.requests))

    def answered(self, schema_id: int) -> list[Answer]:
        return [a for a in list(self.answers) if a.path.endswith(f"/schemas/ids/{schema_id}")]

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        self.answers.append(Answer(handler.path.split("?", 1)[0], status, time.monotonic()))

    def _refuse(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        body = f'{{"error_code": {status}, "message": "refused by the gateway ({status})"}}'.encode()
        self._reply(handler, status, body, "application/json")

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append(handler.path.split("?", 1)[0])
        if self.down or self.refuse_all is not None:
            self._refuse(handler, 503 if self.down else self.refuse_all or 503)
            return
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if handler.headers.get("Authorization") != expected:
                self._refuse(handler, 401)
                return
        match = _SCHEMA_ID.search(handler.path)
        if match is not None:
            schema_id = int(match.group(1))
            if schema_id in self.refuse:
                self._refuse(handler, self.refuse[schema_id])
                return
            if schema_id in self.slow:
                self._released.wait(self.slow[schema_id])
        path = handler.path
        if path.startswith(self._path_prefix):
            path = path[len(self._path_prefix) :]
        length = int(handler.headers.get("Content-Length") or 0)
        data = handler.rfile.read(length) if length else None
        request = urllib.request.Request(  # noqa: S310 (the session's local registry)
            self.upstream.rstrip("/") + path,
            data=data,
            method=handler.command,
            headers={"Content-Type": handler.headers.get("Content-Type", "application/json")},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                content_type = response.headers.get("Content-Type", "")
                self._reply(handler, response.status, response.read(), content_type)
        except urllib.error.HTTPError as exc:
            self._reply(handler, exc.code, exc.read(), exc.headers.get("Content-Type", "application/json"))
