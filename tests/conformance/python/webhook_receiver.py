"""A real webhook receiver (http.server in a thread) for the conformance tests.

Every request is validated with the official SDK: `pusher.Pusher.validate_webhook(key, signature,
body)` returns the parsed body for a genuine request and None otherwise. `respond(n)` picks the
status of the n-th request (0-based), so a receiver can fail on purpose to exercise retries.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pusher

from pusher_ws import APP_ID, APP_KEY, APP_SECRET


def validator(secret: str = APP_SECRET) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=secret, host="127.0.0.1", ssl=False)


@dataclass
class HookRequest:
    at: float  # time.monotonic() at arrival
    status: int
    method: str
    path: str
    headers: dict[str, str]
    body: str
    valid: bool
    events: list[dict] = field(default_factory=list)


class WebhookReceiver:
    def __init__(self, respond: Callable[[int], int] = lambda n: 200, path: str = "/hook"):
        self.respond = respond
        self.path = path
        self.sdk = validator()
        self.lock = threading.Lock()
        self.requests: list[HookRequest] = []
        self.delivered: list[tuple[dict, HookRequest]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8")
                receiver._handle(self, "POST", body)

            def do_GET(self):  # noqa: N802
                receiver._handle(self, "GET", "")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def _handle(self, handler: BaseHTTPRequestHandler, method: str, body: str) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        parsed = None
        if method == "POST":
            parsed = self.sdk.validate_webhook(
                key=headers.get("x-pusher-key", ""),
                signature=headers.get("x-pusher-signature", ""),
                body=body,
            )
        with self.lock:
            n = len(self.requests)
        status = self.respond(n) if (method == "POST" and handler.path == self.path) else 404
        req = HookRequest(
            at=time.monotonic(),
            status=status,
            method=method,
            path=handler.path,
            headers=headers,
            body=body,
            valid=parsed is not None,
            events=list(parsed["events"]) if parsed else [],
        )
        with self.lock:
            self.requests.append(req)
            if req.valid and 200 <= status < 300:
                self.delivered.extend((e, req) for e in req.events)
        payload = b"ok" if status < 300 else b"fail"
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- queries -----------------------------------------------------------------------------

    def matching(self, pred: Callable[[dict], bool]) -> list[tuple[dict, HookRequest]]:
        with self.lock:
            return [(e, r) for e, r in self.delivered if pred(e)]

    def count(self, pred: Callable[[dict], bool]) -> int:
        return len(self.matching(pred))

    @property
    def invalid(self) -> list[HookRequest]:
        with self.lock:
            return [r for r in self.requests if not r.valid]

    async def wait_count(
        self, pred: Callable[[dict], bool], n: int = 1, timeout: float = 5.0, what: str = "webhook"
    ) -> tuple[dict, HookRequest]:
        """The n-th (1-based) delivered event matching `pred`, polled with a deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.matching(pred)
            if len(found) >= n:
                return found[n - 1]
            if loop.time() >= deadline:
                with self.lock:
                    seen = [e for e, _ in self.delivered]
                raise AssertionError(f"no {what} #{n} within {timeout}s; delivered: {json.dumps(seen)}")
            await asyncio.sleep(0.02)

    async def wait_event(self, pred, timeout: float = 5.0, what: str = "webhook"):
        return await self.wait_count(pred, 1, timeout, what)


def is_event(name: str, channel: str, **extra) -> Callable[[dict], bool]:
    return lambda e: (
        e.get("name") == name
        and e.get("channel") == channel
        and all(e.get(k) == v for k, v in extra.items())
    )
