"""Webhooks: herald posts to a real HTTP receiver (webhook_receiver.py) that validates every request
with the official SDK's `validate_webhook`; raw Pusher protocol clients cause the events.

`leave_delay` is 1 s here. Proving that a delayed webhook was cancelled (a page reload within the
delay, a second tab) uses a bounded silence window slightly longer than the delay; everything else
waits for the expected webhook with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from conftest import free_port, make_client, start_herald
from pusher_ws import APP_ID, APP_KEY, APP_SECRET, PusherSocket
from webhook_receiver import WebhookReceiver, is_event, validator

LEAVE_DELAY = 1.0
SILENCE = LEAVE_DELAY + 0.8
MIN_DELAY = LEAVE_DELAY - 0.15

TIMING = """
[webhooks]
leave_delay = "1s"
retry_window = "30s"
retry_initial = "200ms"
timeout = "2s"
max_batch = 1

[drain]
delay = "0s"
window = "0s"
deadline = "1s"
"""

APP = f"""
[[apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{APP_SECRET}"
client_events = true
subscription_count = true
"""


class Hooked:
    """A herald and the receiver its webhooks go to."""

    def __init__(self, server, receiver):
        self.server = server
        self.receiver = receiver
        self.servers = [server]
        self.sdk = make_client(server)


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    receiver = WebhookReceiver()
    config = f'webhook_url = "{receiver.url}"\n' + TIMING + APP
    server = start_herald(tmp_path_factory, config, name="herald-webhooks")
    yield Hooked(server, receiver)
    server.stop()
    receiver.close()


async def connect(h: Hooked) -> PusherSocket:
    return await PusherSocket.connect(h.server.ws_url)


async def private_socket(h: Hooked, channel: str) -> PusherSocket:
    sock = await connect(h)
    auth = h.sdk.authenticate(channel=channel, socket_id=sock.socket_id)
    await sock.subscribe(channel, auth["auth"])
    return sock


async def presence_socket(h: Hooked, channel: str, user_id: str) -> PusherSocket:
    sock = await connect(h)
    auth = h.sdk.authenticate(
        channel=channel,
        socket_id=sock.socket_id,
        custom_data={"user_id": user_id, "user_info": {"name": user_id}},
    )
    await sock.subscribe(channel, auth["auth"], auth["channel_data"])
    return sock


# --- webhook_url: every event type ---------------------------------------------------------------


def test_signed_and_validated_with_negative_controls(hooked, uid, run):
    channel = f"wh-sig-{uid}"
    recv = hooked.receiver

    async def main():
        async with await connect(hooked) as sock:
            await sock.subscribe(channel)
            event, req = await recv.wait_event(is_event("channel_occupied", channel), what="channel_occupied")
            assert event == {"name": "channel_occupied", "channel": channel}
            return req

    req = run(main())
    assert req.method == "POST" and req.valid
    assert req.headers["x-pusher-key"] == APP_KEY
    assert req.headers["content-type"] == "application/json"
    body = json.loads(req.body)
    assert abs(body["time_ms"] - time.time() * 1000) < 60_000
    assert len(body["events"]) == 1, "max_batch = 1"
    # The SDK accepts the genuine request...
    assert validator().validate_webhook(APP_KEY, req.headers["x-pusher-signature"], req.body) == body
    # ...and rejects it with a wrong secret, a tampered body or another key.
    sig = req.headers["x-pusher-signature"]
    assert validator("wrong-secret").validate_webhook(APP_KEY, sig, req.body) is None
    assert validator().validate_webhook(APP_KEY, sig, req.body.replace(channel, channel + "x")) is None
    assert validator().validate_webhook("other-key", sig, req.body) is None
    assert recv.invalid == [], "every request herald sent must validate"


def test_occupied_then_vacated_after_leave_delay(hooked, uid, run):
    channel = f"wh-occ-{uid}"
    recv = hooked.receiver

    async def main():
        a = await connect(hooked)
        b = await connect(hooked)
        await a.subscribe(channel)
        await recv.wait_event(is_event("channel_occupied", channel), what="channel_occupied")
        await b.subscribe(channel)
        await a.close()
        await b.ping()  # round trip on another socket; a's close is independent
        left = time.monotonic()
        await b.close()
        event, req = await recv.wait_event(is_event("channel_vacated", channel), what="channel_vacated")
        assert event == {"name": "channel_vacated", "channel": channel}
        assert req.at - left >= MIN_DELAY, f"channel_vacated came {req.at - left:.3f}s after the leave"
        assert recv.count(is_event("channel_occupied", channel)) == 1
        assert recv.count(is_event("channel_vacated", channel)) == 1

    run(main())


def test_subscription_count_public_not_presence(hooked, uid, run):
    channel = f"wh-count-{uid}"
    presence = f"presence-wh-count-{uid}"
    recv = hooked.receiver

    def sc(n):
        return is_event("subscription_count", channel, subscription_count=n)

    async def main():
        a = await connect(hooked)
        b = await connect(hooked)
        await a.subscribe(channel)
        event, _ = await recv.wait_event(sc(1), what="subscription_count 1")
        assert event == {"name": "subscription_count", "channel": channel, "subscription_count": 1}
        await b.subscribe(channel)
        await recv.wait_event(sc(2), what="subscription_count 2")
        await a.close()
        await recv.wait_count(sc(1), 2, what="subscription_count back to 1")
        await b.close()
        await recv.wait_event(sc(0), what="subscription_count 0")

        p = await presence_socket(hooked, presence, "pat")
        await recv.wait_event(is_event("member_added", presence), what="member_added")
        await p.close()
        # channel_vacated is delayed; any subscription_count would have been queued before it.
        await recv.wait_event(is_event("channel_vacated", presence), what="channel_vacated")
        assert recv.matching(lambda e: e["name"] == "subscription_count" and e["channel"] == presence) == []

    run(main())


def test_member_added_then_removed_after_leave_delay(hooked, uid, run):
    channel = f"presence-wh-mem-{uid}"
    recv = hooked.receiver

    async def main():
        alice = await presence_socket(hooked, channel, "alice")
        event, _ = await recv.wait_event(is_event("member_added", channel), what="member_added")
        assert event == {"name": "member_added", "channel": channel, "user_id": "alice"}
        await recv.wait_event(is_event("channel_occupied", channel), what="channel_occupied")
        left = time.monotonic()
        await alice.close()
        event, req = await recv.wait_event(is_event("member_removed", channel), what="member_removed")
        assert event == {"name": "member_removed", "channel": channel, "user_id": "alice"}
        assert req.at - left >= MIN_DELAY, f"member_removed came {req.at - left:.3f}s after the leave"
        await recv.wait_event(is_event("channel_vacated", channel), what="channel_vacated")

    run(main())


def test_reload_within_leave_delay_sends_nothing(hooked, uid, run):
    channel = f"presence-wh-reload-{uid}"
    recv = hooked.receiver

    async def main():
        first = await presence_socket(hooked, channel, "rita")
        await recv.wait_event(is_event("member_added", channel), what="member_added")
        await recv.wait_event(is_event("channel_occupied", channel), what="channel_occupied")
        # The reload: the old page's socket goes, the new one joins within the delay.
        await first.close()
        second = await presence_socket(hooked, channel, "rita")
        await asyncio.sleep(SILENCE)
        assert recv.count(is_event("member_removed", channel)) == 0, "member_removed not cancelled"
        assert recv.count(is_event("channel_vacated", channel)) == 0, "channel_vacated not cancelled"
        assert recv.count(is_event("member_added", channel)) == 1, "second member_added on rejoin"
        assert recv.count(is_event("channel_occupied", channel)) == 1, "second channel_occupied"
        await second.close()
        await recv.wait_event(is_event("member_removed", channel), what="member_removed")
        await recv.wait_event(is_event("channel_vacated", channel), what="channel_vacated")
        await asyncio.sleep(0.3)
        assert recv.count(is_event("member_removed", channel)) == 1
        assert recv.count(is_event("channel_vacated", channel)) == 1

    run(main())


def test_multi_tab_user(hooked, uid, run):
    channel = f"presence-wh-tabs-{uid}"
    recv = hooked.receiver

    async def main():
        tab1 = await presence_socket(hooked, channel, "tess")
        tab2 = await presence_socket(hooked, channel, "tess")
        await recv.wait_event(is_event("member_added", channel), what="member_added")
        await tab1.close()
        await asyncio.sleep(SILENCE)
        assert recv.count(is_event("member_added", channel)) == 1
        assert recv.count(is_event("member_removed", channel)) == 0, "tess still has a tab open"
        left = time.monotonic()
        await tab2.close()
        event, req = await recv.wait_event(is_event("member_removed", channel), what="member_removed")
        assert event["user_id"] == "tess"
        assert req.at - left >= MIN_DELAY
        await asyncio.sleep(0.3)
        assert recv.count(is_event("member_removed", channel)) == 1

    run(main())


def test_client_event(hooked, uid, run):
    private = f"private-wh-ce-{uid}"
    presence = f"presence-wh-ce-{uid}"
    recv = hooked.receiver

    async def main():
        a = await private_socket(hooked, private)
        b = await private_socket(hooked, private)
        await a.send({"event": "client-typing", "channel": private, "data": {"text": "héllo ✓"}})
        frame = await b.expect("client-typing", private)
        assert frame["data"] == {"text": "héllo ✓"}
        event, _ = await recv.wait_event(is_event("client_event", private), what="client_event")
        data = event.pop("data")
        assert event == {
            "name": "client_event",
            "channel": private,
            "event": "client-typing",
            "socket_id": a.socket_id,
        }
        assert isinstance(data, str), "client_event data is a string"
        assert json.loads(data) == {"text": "héllo ✓"}

        alice = await presence_socket(hooked, presence, "alice")
        bob = await presence_socket(hooked, presence, "bob")
        await alice.send({"event": "client-wave", "channel": presence, "data": {"hi": True}})
        await bob.expect("client-wave", presence)
        event, _ = await recv.wait_event(is_event("client_event", presence), what="client_event (presence)")
        assert event["user_id"] == "alice"
        assert event["socket_id"] == alice.socket_id
        assert json.loads(event["data"]) == {"hi": True}
        for s in (a, b, alice, bob):
            await s.close()

    run(main())


def test_cache_miss_once_per_channel(hooked, uid, run):
    channel = f"cache-wh-{uid}"
    recv = hooked.receiver

    async def main():
        a = await connect(hooked)
        await a.subscribe(channel)
        await a.expect("pusher:cache_miss", channel)
        event, _ = await recv.wait_event(is_event("cache_miss", channel), what="cache_miss")
        assert event == {"name": "cache_miss", "channel": channel}
        b = await connect(hooked)
        await b.subscribe(channel)
        await b.expect("pusher:cache_miss", channel)  # the client still gets its event
        await asyncio.sleep(0.8)
        assert recv.count(is_event("cache_miss", channel)) == 1, "cache_miss is deduplicated"
        await a.close()
        await b.close()

    run(main())


# --- retries --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    receiver = WebhookReceiver(respond=lambda n: 500 if n < 2 else 200)
    config = (
        TIMING
        + APP
        + f"""
[[apps.webhooks]]
url = "{receiver.url}"
event_types = ["channel_occupied"]
"""
    )
    server = start_herald(tmp_path_factory, config, name="herald-flaky")
    yield Hooked(server, receiver)
    server.stop()
    receiver.close()


def test_failing_receiver_is_retried_with_backoff(flaky, uid, run):
    channel = f"wh-retry-{uid}"
    recv = flaky.receiver

    async def main():
        async with await PusherSocket.connect(flaky.server.ws_url) as sock:
            await sock.subscribe(channel)
            event, _ = await recv.wait_event(
                is_event("channel_occupied", channel), timeout=8, what="channel_occupied after retries"
            )
            assert event == {"name": "channel_occupied", "channel": channel}
            await asyncio.sleep(0.6)

    run(main())
    attempts = [r for r in recv.requests if channel in r.body]
    assert [r.status for r in attempts] == [500, 500, 200]
    for r in attempts:
        assert r.valid, "every attempt is signed"
        assert r.events == [{"name": "channel_occupied", "channel": channel}]
    gap1 = attempts[1].at - attempts[0].at
    gap2 = attempts[2].at - attempts[1].at
    assert gap1 >= 0.18, f"first retry after retry_initial (200 ms), got {gap1:.3f}s"
    assert gap2 >= 0.38, f"second retry after twice that, got {gap2:.3f}s"
    assert recv.count(is_event("channel_occupied", channel)) == 1, "delivered exactly once"


# --- a target that is down; filters and headers ------------------------------------------------


@pytest.fixture(scope="module")
def down(tmp_path_factory):
    receiver = WebhookReceiver()
    dead = free_port()  # nothing listens there
    config = (
        TIMING
        + APP
        + f"""
[[apps.webhooks]]
url = "http://127.0.0.1:{dead}/hook"

[[apps.webhooks]]
url = "{receiver.url}"
event_types = ["member_added", "member_removed"]
channel_prefix = "presence-"
headers = {{ "X-Token" = "abc" }}
"""
    )
    server = start_herald(tmp_path_factory, config, name="herald-down")
    yield Hooked(server, receiver)
    server.stop()
    receiver.close()


def test_unreachable_target_does_not_affect_sockets(down, uid, run):
    channel = f"private-wh-down-{uid}"
    presence = f"presence-wh-down-{uid}"
    recv = down.receiver

    async def main():
        started = time.monotonic()
        a = await private_socket(down, channel)
        b = await private_socket(down, channel)
        assert time.monotonic() - started < 2
        await asyncio.to_thread(down.sdk.trigger, channel, "server-ev", {"n": 1})
        assert (await b.expect("server-ev", channel))["data"] == '{"n": 1}'
        await a.send({"event": "client-ev", "channel": channel, "data": {"n": 2}})
        assert (await b.expect("client-ev", channel))["data"] == {"n": 2}

        obs = await presence_socket(down, presence, "obs")
        joiner = await presence_socket(down, presence, "jo")
        assert json.loads((await obs.expect("pusher_internal:member_added", presence))["data"])["user_id"] == "jo"
        await joiner.close()
        removed = await obs.expect("pusher_internal:member_removed", presence, timeout=0.9)
        assert json.loads(removed["data"])["user_id"] == "jo"
        for i in range(20):
            s = await PusherSocket.connect(down.server.ws_url)
            await s.subscribe(f"wh-down-many-{uid}-{i}")
            await s.close()
        await asyncio.to_thread(down.sdk.trigger, channel, "server-ev", {"n": 3})
        assert (await b.expect("server-ev", channel))["data"] == '{"n": 3}'
        # The sender got both server events too (its client event is not echoed back).
        assert [(await a.expect("server-ev", channel))["data"] for _ in range(2)] == ['{"n": 1}', '{"n": 3}']
        await a.ping()

        # The working, filtered target got its member events with its extra header.
        event, req = await recv.wait_event(is_event("member_added", presence, user_id="jo"), what="member_added")
        assert req.headers.get("x-token") == "abc"
        await recv.wait_event(is_event("member_removed", presence, user_id="jo"), what="member_removed")
        await asyncio.sleep(0.3)
        names = {e["name"] for e, _ in recv.matching(lambda e: True)}
        assert names <= {"member_added", "member_removed"}, names
        assert recv.matching(lambda e: not e["channel"].startswith("presence-")) == []
        assert recv.invalid == []
        for s in (a, b, obs):
            await s.close()

    run(main())
