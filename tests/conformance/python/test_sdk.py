"""The official Python server SDK (`pusher` on PyPI) against a real herald.

Each test drives one HTTP API endpoint through the SDK and checks the effect with raw Pusher
protocol clients (pusher_ws.PusherSocket). Negative delivery checks never sleep: after the event
that must not arrive, a sentinel event is published on the same channel, and the socket's next
event must be the sentinel (events on one channel are delivered in publish order).
"""

from __future__ import annotations

import asyncio
import json

import pusher
import pytest
from pusher.errors import PusherBadAuth, PusherBadRequest
from pusher.http import GET, POST, Request

from conftest import make_client
from pusher_ws import APP_ID, PusherSocket, Rejected


async def sdk_call(fn, *args, **kwargs):
    """Runs a blocking SDK call off the event loop so sockets keep being read."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def presence_socket(herald, sdk, channel: str, user_id: str, user_info: dict):
    sock = await PusherSocket.connect(herald.ws_url)
    auth = sdk.authenticate(
        channel=channel,
        socket_id=sock.socket_id,
        custom_data={"user_id": user_id, "user_info": user_info},
    )
    members = await sock.subscribe(channel, auth["auth"], auth["channel_data"])
    return sock, members


async def signed_in_socket(herald, sdk, user_id: str) -> PusherSocket:
    sock = await PusherSocket.connect(herald.ws_url)
    user_data = {"id": user_id, "user_info": {"name": f"User {user_id}"}}
    signed = sdk.authenticate_user(sock.socket_id, user_data)
    result = await sock.signin(signed["auth"], signed["user_data"])
    assert json.loads(result["user_data"])["id"] == user_id, result
    assert result["user_data"] == signed["user_data"], "signin_success must echo user_data as sent"
    return sock


# --- trigger ---------------------------------------------------------------------------------


def test_trigger_one_channel(herald, sdk, uid, run):
    channel = f"conf-one-{uid}"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            await sock.subscribe(channel)
            result = await sdk_call(sdk.trigger, channel, "my-event", {"message": "hello"})
            assert result == {}, f"trigger without info must return {{}}, got {result}"
            frame = await sock.expect("my-event", channel)
            assert frame["data"] == '{"message": "hello"}'

    run(main())


def test_trigger_many_channels(herald, sdk, uid, run):
    channels = [f"conf-many-{uid}-{i}" for i in range(3)]

    async def main():
        # One socket per channel, plus one socket on all of them.
        singles = [await PusherSocket.connect(herald.ws_url) for _ in channels]
        everywhere = await PusherSocket.connect(herald.ws_url)
        try:
            for sock, channel in zip(singles, channels):
                await sock.subscribe(channel)
                await everywhere.subscribe(channel)
            await sdk_call(sdk.trigger, channels, "fanout", "payload-1")
            for sock, channel in zip(singles, channels):
                frame = await sock.expect("fanout", channel)
                assert frame["data"] == "payload-1"
            seen = set()
            for _ in channels:
                frame = await everywhere.expect("fanout")
                assert frame["data"] == "payload-1"
                seen.add(frame["channel"])
            assert seen == set(channels), "each channel delivers the event once to its subscriber"
            # Nothing more for the multi-channel socket: the next event is the sentinel.
            await sdk_call(sdk.trigger, channels[0], "sentinel", "s")
            await everywhere.expect("sentinel", channels[0])
        finally:
            for sock in singles + [everywhere]:
                await sock.close()

    run(main())


def test_trigger_excludes_socket_id(herald, sdk, uid, run):
    channel = f"conf-exclude-{uid}"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sender, await PusherSocket.connect(
            herald.ws_url
        ) as other:
            await sender.subscribe(channel)
            await other.subscribe(channel)
            await sdk_call(sdk.trigger, channel, "excluded", "x", socket_id=sender.socket_id)
            await sdk_call(sdk.trigger, channel, "sentinel", "s")
            # The other subscriber gets both, in order.
            assert (await other.expect("excluded", channel))["data"] == "x"
            await other.expect("sentinel", channel)
            # The excluded socket's next event is the sentinel: it never saw "excluded".
            await sender.expect("sentinel", channel)

    run(main())


def test_trigger_batch(herald, sdk, uid, run):
    a, b = f"conf-batch-{uid}-a", f"conf-batch-{uid}-b"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock_a, await PusherSocket.connect(
            herald.ws_url
        ) as sock_b:
            await sock_a.subscribe(a)
            await sock_b.subscribe(b)
            batch = [
                {"channel": a, "name": "first", "data": {"n": 1}},
                {"channel": b, "name": "second", "data": "two"},
                {"channel": a, "name": "third", "data": "three"},
                # Excluded on a per-item basis.
                {"channel": b, "name": "skipped", "data": "no", "socket_id": sock_b.socket_id},
                {"channel": b, "name": "fourth", "data": "four"},
            ]
            result = await sdk_call(sdk.trigger_batch, batch)
            assert result == {} or result == {"batch": [{}] * len(batch)}, result
            frame = await sock_a.expect("first", a)
            assert frame["data"] == '{"n": 1}'
            assert (await sock_a.expect("third", a))["data"] == "three"
            assert (await sock_b.expect("second", b))["data"] == "two"
            # "skipped" excluded sock_b: its next event is "fourth".
            assert (await sock_b.expect("fourth", b))["data"] == "four"

    run(main())


# --- channel queries -------------------------------------------------------------------------


def test_channels_info_prefix_and_user_count(herald, sdk, uid, run):
    prefix = f"presence-conf-list-{uid}-"
    p1, p2 = prefix + "a", prefix + "b"
    public = f"conf-list-{uid}-public"

    async def main():
        socks = []
        try:
            socks.append((await presence_socket(herald, sdk, p1, "alice", {"n": 1}))[0])
            # A second connection of the same user is counted once.
            socks.append((await presence_socket(herald, sdk, p1, "alice", {"n": 1}))[0])
            socks.append((await presence_socket(herald, sdk, p1, "bob", {"n": 2}))[0])
            socks.append((await presence_socket(herald, sdk, p2, "carol", {}))[0])
            pub = await PusherSocket.connect(herald.ws_url)
            socks.append(pub)
            await pub.subscribe(public)

            listed = await sdk_call(sdk.channels_info, prefix_filter=prefix, attributes=["user_count"])
            assert listed == {
                "channels": {p1: {"user_count": 2}, p2: {"user_count": 1}}
            }, listed

            listed = await sdk_call(sdk.channels_info, prefix_filter=prefix)
            assert listed == {"channels": {p1: {}, p2: {}}}, listed

            listed = await sdk_call(sdk.channels_info, prefix_filter=f"conf-list-{uid}-")
            assert listed == {"channels": {public: {}}}, listed

            # Without a prefix every occupied channel is listed, ours included.
            listed = await sdk_call(sdk.channels_info)
            assert {p1, p2, public} <= set(listed["channels"]), listed

            # user_count only exists for presence channels: a non-presence prefix is a 400.
            with pytest.raises(PusherBadRequest):
                await sdk_call(
                    sdk.channels_info, prefix_filter=f"conf-list-{uid}-", attributes=["user_count"]
                )
        finally:
            for sock in socks:
                await sock.close()

    run(main())


def test_channel_info_subscription_count(herald, sdk, uid, run):
    channel = f"conf-info-{uid}"

    async def main():
        empty = await sdk_call(sdk.channel_info, f"conf-info-{uid}-empty")
        assert empty == {"occupied": False}, empty
        async with await PusherSocket.connect(herald.ws_url) as one, await PusherSocket.connect(
            herald.ws_url
        ) as two:
            await one.subscribe(channel)
            await two.subscribe(channel)
            info = await sdk_call(sdk.channel_info, channel, ["subscription_count"])
            assert info == {"occupied": True, "subscription_count": 2}, info
            info = await sdk_call(sdk.channel_info, channel)
            assert info == {"occupied": True}, info
            with pytest.raises(PusherBadRequest):
                await sdk_call(sdk.channel_info, channel, ["user_count"])

    run(main())


def test_channel_info_user_count(herald, sdk, uid, run):
    channel = f"presence-conf-info-{uid}"

    async def main():
        socks = []
        try:
            for user in ("u1", "u1", "u2"):
                socks.append((await presence_socket(herald, sdk, channel, user, {}))[0])
            info = await sdk_call(sdk.channel_info, channel, ["user_count"])
            assert info == {"occupied": True, "user_count": 2}, info
        finally:
            for sock in socks:
                await sock.close()

    run(main())


def test_users_info_presence(herald, sdk, uid, run):
    channel = f"presence-conf-users-{uid}"

    async def main():
        observer, members = await presence_socket(herald, sdk, channel, "observer", {"role": "o"})
        assert members["presence"]["count"] == 1, members
        socks = [observer]
        try:
            first, members = await presence_socket(herald, sdk, channel, "alice", {"name": "A"})
            socks.append(first)
            assert sorted(members["presence"]["ids"]) == ["alice", "observer"], members
            assert members["presence"]["hash"]["alice"] == {"name": "A"}, members
            assert members["presence"]["hash"]["observer"] == {"role": "o"}, members
            assert members["presence"]["count"] == 2, members
            added = await observer.expect("pusher_internal:member_added", channel)
            assert json.loads(added["data"]) == {"user_id": "alice", "user_info": {"name": "A"}}

            # Same user, second connection: the snapshot lists alice once, no member_added.
            second, members = await presence_socket(herald, sdk, channel, "alice", {"name": "A"})
            socks.append(second)
            assert sorted(members["presence"]["ids"]) == ["alice", "observer"], members
            assert members["presence"]["count"] == 2, members

            third, _ = await presence_socket(herald, sdk, channel, "bob", {"name": "B"})
            socks.append(third)
            added = await observer.expect("pusher_internal:member_added", channel)
            assert json.loads(added["data"])["user_id"] == "bob", (
                "a user's second connection must not emit member_added again"
            )

            users = await sdk_call(sdk.users_info, channel)
            ids = [u["id"] for u in users["users"]]
            assert sorted(ids) == ["alice", "bob", "observer"], users

            # Non-presence channels have no users list.
            with pytest.raises(PusherBadRequest):
                await sdk_call(sdk.users_info, f"conf-users-{uid}")
        finally:
            for sock in socks:
                await sock.close()

    run(main())


# --- users -----------------------------------------------------------------------------------


def test_send_to_user(herald, sdk, uid, run):
    user = f"user-{uid}"
    channel = f"#server-to-user-{user}"

    async def main():
        async with await signed_in_socket(herald, sdk, user) as sock, await signed_in_socket(
            herald, sdk, f"other-{uid}"
        ) as other:
            await sock.subscribe(channel)
            # Another user may not listen on this user's channel.
            with pytest.raises(Rejected):
                await other.subscribe(channel)
            result = await sdk_call(sdk.send_to_user, user, "private-note", {"text": "hi ✓"})
            assert result == {}, result
            frame = await sock.expect("private-note", channel)
            assert frame["data"] == '{"text": "hi ✓"}'

    run(main())


def test_send_to_user_reaches_every_connection(herald, sdk, uid, run):
    user = f"multi-{uid}"
    channel = f"#server-to-user-{user}"

    async def main():
        async with await signed_in_socket(herald, sdk, user) as a, await signed_in_socket(
            herald, sdk, user
        ) as b:
            await a.subscribe(channel)
            await b.subscribe(channel)
            await sdk_call(sdk.send_to_user, user, "note", "both")
            assert (await a.expect("note", channel))["data"] == "both"
            assert (await b.expect("note", channel))["data"] == "both"

    run(main())


async def _check_terminated(herald, sdk, uid, terminate) -> None:
    user = f"term-{uid}"
    a = await signed_in_socket(herald, sdk, user)
    b = await signed_in_socket(herald, sdk, user)
    bystander = await signed_in_socket(herald, sdk, f"bystander-{uid}")
    try:
        result = await terminate(user)
        assert result == {}, result
        for sock in (a, b):
            code, frames = await sock.wait_closed()
            assert code == 4009, f"terminated socket closed with {code}, frames {frames}"
        # Users are terminated, not everyone: the bystander still answers pings.
        await bystander.ping()
    finally:
        for sock in (a, b, bystander):
            await sock.close()


def test_terminate_user_connections(herald, sdk, uid, run):
    """POST /apps/{id}/users/{user}/terminate_connections (the documented path), signed by the SDK."""
    client = sdk._pusher_client

    async def terminate(user):
        request = Request(client, POST, f"/apps/{APP_ID}/users/{user}/terminate_connections", {})
        return await sdk_call(client.http.send_request, request)

    run(_check_terminated(herald, sdk, uid, terminate))


def test_terminate_user_connections_sdk_method(herald, sdk, uid, run):
    """`Pusher.terminate_user_connections` exactly as shipped in the SDK.

    pusher 3.3.x posts to `/users/{user}/terminate_connections` (no `/apps/{id}` prefix), unlike
    the documented path and the Node/PHP SDKs (which prefix `/apps/{id}`). The app is identified
    by `auth_key`; a server that wants this SDK method to work must accept that path too.
    """
    request = sdk._pusher_client.terminate_user_connections.make_request("someone")
    assert request.path == "/users/someone/terminate_connections", request.path

    async def terminate(user):
        return await sdk_call(sdk.terminate_user_connections, user)

    run(_check_terminated(herald, sdk, uid, terminate))


# --- auth and signing ------------------------------------------------------------------------


def test_wrong_secret_is_rejected(herald, uid, run, sdk):
    bad = make_client(herald, secret="not-the-secret")
    channel = f"conf-badauth-{uid}"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            await sock.subscribe(channel)
            with pytest.raises(PusherBadAuth):
                await sdk_call(bad.trigger, channel, "forged", "nope")
            with pytest.raises(PusherBadAuth):
                await sdk_call(bad.trigger_batch, [{"channel": channel, "name": "forged", "data": "x"}])
            with pytest.raises(PusherBadAuth):
                await sdk_call(bad.channels_info)
            with pytest.raises(PusherBadAuth):
                await sdk_call(bad.channel_info, channel)
            with pytest.raises(PusherBadAuth):
                await sdk_call(bad.users_info, f"presence-{channel}")
            # The forged events were not delivered: the next event is the genuine sentinel.
            await sdk_call(sdk.trigger, channel, "sentinel", "s")
            await sock.expect("sentinel", channel)

    run(main())


def test_wrong_key_is_rejected(herald, uid):
    bad = pusher.Pusher(
        app_id=APP_ID, key="not-the-key", secret="app-secret", host="127.0.0.1",
        port=herald.port, ssl=False, timeout=10,
    )
    with pytest.raises(PusherBadAuth):
        bad.trigger(f"conf-badkey-{uid}", "forged", "x")


@pytest.mark.parametrize("skew,accepted", [(-300, True), (300, True), (-700, False), (700, False)])
def test_auth_timestamp_window(herald, sdk, uid, monkeypatch, skew, accepted):
    """auth_timestamp is accepted within +-600 s of server time and refused (401) outside it."""
    import pusher.http

    real_time = pusher.http.time.time

    class SkewedClock:
        """Stands in for the `time` module inside pusher.http only (it calls time.time())."""

        @staticmethod
        def time() -> float:
            return real_time() + skew

    monkeypatch.setattr(pusher.http, "time", SkewedClock)
    channel = f"conf-skew-{uid}"
    if accepted:
        assert sdk.trigger(channel, "skewed", "x") == {}
        assert sdk.channels_info(prefix_filter=channel) == {"channels": {}}
    else:
        with pytest.raises(PusherBadAuth):
            sdk.trigger(channel, "skewed", "x")
        with pytest.raises(PusherBadAuth):
            sdk.channels_info(prefix_filter=channel)


def test_get_requests_with_body_md5_are_accepted(herald, sdk, uid, run):
    """The Python SDK signs GET requests with body_md5 of the empty body; the server must accept it."""
    channel = f"presence-conf-md5-{uid}"
    client = sdk._pusher_client
    for request in (
        client.channels_info.make_request(),
        client.channel_info.make_request(channel, ["user_count"]),
        client.users_info.make_request(channel),
    ):
        assert request.method == GET
        assert request.query_params["body_md5"] == "d41d8cd98f00b204e9800998ecf8427e"

    async def main():
        sock, _ = await presence_socket(herald, sdk, channel, "md5-user", {})
        try:
            assert channel in (await sdk_call(sdk.channels_info, prefix_filter=channel))["channels"]
            assert (await sdk_call(sdk.channel_info, channel, ["user_count"]))["user_count"] == 1
            assert (await sdk_call(sdk.users_info, channel)) == {"users": [{"id": "md5-user"}]}
        finally:
            await sock.close()

    run(main())


def test_private_and_presence_auth_from_sdk(herald, sdk, uid, run):
    """Signatures made by the SDK's authenticate() are accepted; a tampered one is refused."""
    private = f"private-conf-auth-{uid}"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            auth = sdk.authenticate(channel=private, socket_id=sock.socket_id)
            await sock.subscribe(private, auth["auth"])
            bad = make_client(herald, secret="wrong").authenticate(
                channel=private + "-2", socket_id=sock.socket_id
            )
            with pytest.raises(Rejected):
                await sock.subscribe(private + "-2", bad["auth"])
            # The socket stays usable after a refused subscription.
            await sdk_call(sdk.trigger, private, "after", "ok")
            assert (await sock.expect("after", private))["data"] == "ok"

    run(main())


# --- payload fidelity ------------------------------------------------------------------------

ROUND_TRIP = [
    "plain ascii",
    "unicode: héllo wörld — ✓ 漢字 日本語 한국어 עברית العربية",
    "emoji (astral plane): 😀🎉👩‍👩‍👧‍👦 🏳️‍🌈",
    'quotes "double" and \'single\' and backslash \\ and slash /',
    "escapes: newline\n tab\t cr\r formfeed\f backspace\b",
    "control: \x00\x01\x1f\x7f end",
    "line separators: \u2028 \u2029",
    '{"looks":"like json","n":1}',
    '{ "spaced" :  [1, 2,3] ,"keep":"formatting" }',
    "[]",
    "null",
    "  leading and trailing spaces  ",
    "\\u00e9 literal backslash-u, not an escape",
    "</script><script>alert(1)</script>",
]


@pytest.mark.parametrize("via", ["trigger", "trigger_batch"])
def test_data_round_trip_is_exact(herald, sdk, uid, run, via):
    channel = f"conf-roundtrip-{via}-{uid}"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            await sock.subscribe(channel)
            if via == "trigger":
                for data in ROUND_TRIP:
                    await sdk_call(sdk.trigger, channel, "rt", data)
            else:
                # Batches of at most 10 events (Pusher's batch limit).
                for i in range(0, len(ROUND_TRIP), 5):
                    batch = [
                        {"channel": channel, "name": "rt", "data": data}
                        for data in ROUND_TRIP[i : i + 5]
                    ]
                    await sdk_call(sdk.trigger_batch, batch)
            for data in ROUND_TRIP:
                frame = await sock.expect("rt", channel)
                assert frame["data"] == data, f"sent {data!r}, received {frame['data']!r}"

    run(main())


def test_dict_data_is_serialised_once_and_kept(herald, sdk, uid, run):
    """The SDK JSON-encodes dict data (ensure_ascii=False); subscribers get that string verbatim."""
    channel = f"conf-dict-{uid}"
    data = {"name": "Zoë", "emoji": "🚀", "nested": {"list": [1, 2.5, None, True]}, "q": '"'}
    expected = json.dumps(data, ensure_ascii=False)

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            await sock.subscribe(channel)
            await sdk_call(sdk.trigger, channel, "dict", data)
            frame = await sock.expect("dict", channel)
            assert frame["data"] == expected
            assert json.loads(frame["data"]) == data

    run(main())


def test_trigger_to_encrypted_channel_relays_ciphertext(herald, uid, run):
    """private-encrypted-: the SDK encrypts; the server relays {nonce, ciphertext} untouched."""
    import base64

    import nacl.secret

    master = base64.b64encode(b"k" * 32).decode()
    client = pusher.Pusher(
        app_id=APP_ID, key="app-key", secret="app-secret", host="127.0.0.1", port=herald.port,
        ssl=False, timeout=10, encryption_master_key_base64=master,
    )
    channel = f"private-encrypted-conf-{uid}"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            auth = client.authenticate(channel=channel, socket_id=sock.socket_id)
            await sock.subscribe(channel, auth["auth"])
            await sdk_call(client.trigger, channel, "secret", {"msg": "top secret ✓"})
            frame = await sock.expect("secret", channel)
            payload = json.loads(frame["data"])
            box = nacl.secret.SecretBox(base64.b64decode(auth["shared_secret"]))
            plain = box.decrypt(
                base64.b64decode(payload["ciphertext"]), base64.b64decode(payload["nonce"])
            )
            assert json.loads(plain) == {"msg": "top secret ✓"}

    run(main())


# --- what the SDK accepts, the server accepts -----------------------------------------------


def test_sdk_accepted_names(herald, sdk, uid, run):
    """Channel names of every character the SDK allows, up to the SDK's 200-character limit,
    and 200-character event names."""
    specials = f"conf-chars-{uid}-_=@,.;"
    long_channel = f"conf-long-{uid}-".ljust(200, "x")
    long_event = "e" * 200
    user = f"u_=@,.;-{uid}"
    assert len(long_channel) == 200

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            await sock.subscribe(specials)
            await sock.subscribe(long_channel)
            await sdk_call(sdk.trigger, [specials, long_channel], long_event, "names")
            got = {(await sock.expect(long_event))["channel"] for _ in range(2)}
            assert got == {specials, long_channel}
            info = await sdk_call(sdk.channel_info, long_channel, ["subscription_count"])
            assert info == {"occupied": True, "subscription_count": 1}, info
        # A user id with the SDK-allowed special characters works for send_to_user.
        async with await signed_in_socket(herald, sdk, user) as signed:
            await signed.subscribe(f"#server-to-user-{user}")
            await sdk_call(sdk.send_to_user, user, "hello", "you")
            assert (await signed.expect("hello", f"#server-to-user-{user}"))["data"] == "you"

    run(main())


def test_trigger_to_100_channels(herald, sdk, uid, run):
    """The SDK allows up to 100 channels per trigger (Pusher's limit)."""
    channels = [f"conf-wide-{uid}-{i}" for i in range(100)]

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as first, await PusherSocket.connect(
            herald.ws_url
        ) as last:
            await first.subscribe(channels[0])
            await last.subscribe(channels[-1])
            assert await sdk_call(sdk.trigger, channels, "wide", "w") == {}
            assert (await first.expect("wide", channels[0]))["data"] == "w"
            assert (await last.expect("wide", channels[-1]))["data"] == "w"

    run(main())


def test_batch_of_10(herald, sdk, uid, run):
    """Pusher's batch limit is 10 events; a full batch is accepted and delivered in order."""
    channel = f"conf-batch10-{uid}"

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            await sock.subscribe(channel)
            batch = [{"channel": channel, "name": f"ev-{i}", "data": str(i)} for i in range(10)]
            await sdk_call(sdk.trigger_batch, batch)
            for i in range(10):
                assert (await sock.expect(f"ev-{i}", channel))["data"] == str(i)

    run(main())


def _utf8_of_size(size: int) -> str:
    """A string of mixed 1-, 2- and 3-byte characters whose UTF-8 encoding is exactly `size` bytes."""
    text = ""
    unit = "0123456789abcdé✓"
    while len(text.encode()) + len(unit.encode()) <= size:
        text += unit
    return text + "x" * (size - len(text.encode()))


def test_data_up_to_10kb(herald, sdk, uid, run):
    """Pusher's documented data limit is 10 KB: exactly 10240 bytes of UTF-8 is delivered
    intact; one byte more is refused with 413 (the SDK raises PusherBadStatus)."""
    channel = f"conf-big-{uid}"
    data = _utf8_of_size(10 * 1024)
    assert len(data.encode()) == 10240

    async def main():
        async with await PusherSocket.connect(herald.ws_url) as sock:
            await sock.subscribe(channel)
            await sdk_call(sdk.trigger, channel, "big", data)
            assert (await sock.expect("big", channel))["data"] == data
            with pytest.raises(pusher.errors.PusherBadStatus, match="^413"):
                await sdk_call(sdk.trigger, channel, "too-big", data + "x")
            await sdk_call(sdk.trigger, channel, "sentinel", "s")
            await sock.expect("sentinel", channel)

    run(main())
