"""A minimal raw Pusher protocol v7 client over `websockets` (asyncio), for the conformance tests.

It does only what the tests need and checks the wire format strictly: every server frame must
be a JSON text frame with an `event` string, and `pusher:connection_established` must carry a
JSON-string `data` with a `socket_id` of the form `<int>.<int>` and a positive
`activity_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Iterable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

APP_ID = "1"
APP_KEY = "app-key"
APP_SECRET = "app-secret"

SOCKET_ID_RE = re.compile(r"^\d+\.\d+$")

# Default bound for a single wait on the socket.
WAIT = 5.0

# Frames that may interleave with anything and are never what a test waits for.
NOISE = frozenset({"pusher_internal:subscription_count"})


class Rejected(AssertionError):
    """The server answered a request with an error frame instead of success."""

    def __init__(self, frame: dict):
        super().__init__(f"server rejected the request: {frame}")
        self.frame = frame


class PusherSocket:
    def __init__(self, ws: ClientConnection, socket_id: str, established: dict):
        self.ws = ws
        self.socket_id = socket_id
        self.established = established
        self.received: list[dict] = []

    @classmethod
    async def connect(cls, url: str, timeout: float = WAIT) -> "PusherSocket":
        ws = await asyncio.wait_for(
            connect(url, open_timeout=timeout, max_size=None, compression=None), timeout
        )
        raw = await asyncio.wait_for(ws.recv(), timeout)
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        frame = json.loads(raw)
        assert frame.get("event") == "pusher:connection_established", frame
        assert isinstance(frame.get("data"), str), f"data must be a JSON string: {frame}"
        data = json.loads(frame["data"])
        socket_id = data.get("socket_id")
        assert isinstance(socket_id, str) and SOCKET_ID_RE.match(socket_id), data
        assert isinstance(data.get("activity_timeout"), int) and data["activity_timeout"] > 0, data
        return cls(ws, socket_id, data)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), WAIT)
        except (asyncio.TimeoutError, ConnectionClosed):
            pass

    async def __aenter__(self) -> "PusherSocket":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = WAIT) -> dict:
        """The next frame (noise included), answering `pusher:ping` on the way."""
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(raw, str), f"server sent a binary frame: {raw!r}"
            frame = json.loads(raw)
            assert isinstance(frame, dict) and isinstance(frame.get("event"), str), raw
            frame["_raw"] = raw
            self.received.append(frame)
            if frame["event"] == "pusher:ping":
                await self.send({"event": "pusher:pong", "data": {}})
                continue
            return frame

    async def next_event(self, timeout: float = WAIT, ignore: Iterable[str] = NOISE) -> dict:
        """The next frame whose event is not in `ignore`."""
        ignore = frozenset(ignore)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError()
            frame = await self.recv(remaining)
            if frame["event"] not in ignore:
                return frame

    async def expect(
        self,
        event: str,
        channel: str | None = None,
        timeout: float = WAIT,
        ignore: Iterable[str] = NOISE,
    ) -> dict:
        """Asserts that the next non-noise frame is `event` (on `channel`, if given)."""
        try:
            frame = await self.next_event(timeout, ignore)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"socket {self.socket_id}: no {event!r} on {channel!r} within {timeout}s"
            ) from None
        assert frame["event"] == event and (channel is None or frame.get("channel") == channel), (
            f"socket {self.socket_id}: expected {event!r} on {channel!r}, got {frame['_raw']}"
        )
        return frame

    async def subscribe(
        self, channel: str, auth: str | None = None, channel_data: str | None = None
    ) -> Any:
        """Subscribes and waits for `pusher_internal:subscription_succeeded`; returns its data."""
        data: dict[str, Any] = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        if channel_data is not None:
            data["channel_data"] = channel_data
        await self.send({"event": "pusher:subscribe", "data": data})
        frame = await self.next_event()
        if frame["event"] in ("pusher:error", "pusher:subscription_error"):
            raise Rejected(frame)
        assert frame["event"] == "pusher_internal:subscription_succeeded", frame["_raw"]
        assert frame.get("channel") == channel, frame["_raw"]
        payload = frame.get("data")
        if isinstance(payload, str):
            payload = json.loads(payload)
        return payload

    async def signin(self, auth: str, user_data: str) -> dict:
        await self.send({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
        frame = await self.next_event()
        if frame["event"] == "pusher:error":
            raise Rejected(frame)
        assert frame["event"] == "pusher:signin_success", frame["_raw"]
        payload = frame["data"]
        if isinstance(payload, str):
            payload = json.loads(payload)
        return payload

    async def wait_closed(self, timeout: float = WAIT) -> tuple[int | None, list[dict]]:
        """Reads until the server closes the socket; returns (close code, frames read)."""
        frames: list[dict] = []
        try:
            while True:
                frames.append(await self.recv(timeout))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            return code, frames
        except asyncio.TimeoutError:
            raise AssertionError(
                f"socket {self.socket_id} was not closed within {timeout}s; got {frames}"
            ) from None

    async def ping(self, timeout: float = WAIT) -> None:
        """Protocol-level ping; asserts the socket is still alive and answering."""
        await self.send({"event": "pusher:ping", "data": {}})
        await self.expect("pusher:pong", timeout=timeout)
