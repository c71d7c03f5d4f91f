"""The Python SDK on one cluster node acting on sockets connected to another node.

Two herald nodes share a private redis-server. Replication is asynchronous: the test polls node A's
HTTP API (through the SDK) until it reports node B's subscriptions, then asserts on delivery.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import RedisServer, make_client, start_herald
from pusher_ws import APP_ID, APP_KEY, APP_SECRET, PusherSocket

CONFIG = f"""
[cluster]
heartbeat_interval = "200ms"
node_timeout = "2s"

[drain]
delay = "0s"
window = "0s"
deadline = "1s"

[[apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{APP_SECRET}"
client_events = true
subscription_count = true
"""


class Cluster:
    def __init__(self, redis, servers):
        self.redis = redis
        self.servers = servers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    servers = []
    try:
        for name in ("node-a", "node-b"):
            servers.append(
                start_herald(tmp_path_factory, CONFIG, ["--redis-url", redis.url], name=name)
            )
        yield Cluster(redis, servers)
    finally:
        for s in servers:
            s.stop()
        redis.stop()


async def sdk_call(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def eventually(fn, timeout: float, what: str):
    """Polls the blocking `fn` until it returns a truthy value, within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        last = await asyncio.to_thread(fn)
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def test_sdk_on_node_a_acts_on_sockets_on_node_b(cluster, uid, run):
    node_a, node_b = cluster.servers
    sdk_a = make_client(node_a)
    sdk_b = make_client(node_b)
    channel = f"cl-py-{uid}"
    presence = f"presence-cl-py-{uid}"

    async def main():
        on_b = await PusherSocket.connect(node_b.ws_url)
        on_a = await PusherSocket.connect(node_a.ws_url)
        try:
            await on_b.subscribe(channel)
            await on_a.subscribe(channel)
            auth = sdk_b.authenticate(
                channel=presence,
                socket_id=on_b.socket_id,
                custom_data={"user_id": "py-user", "user_info": {"name": "Py"}},
            )
            await on_b.subscribe(presence, auth["auth"], auth["channel_data"])

            def a_sees_b():
                info = sdk_a.channel_info(channel, ["subscription_count"])
                users = sdk_a.users_info(presence)
                return info.get("subscription_count") == 2 and users == {"users": [{"id": "py-user"}]}

            await eventually(a_sees_b, 5, "node A to see node B's subscriptions")
            listed = await sdk_call(
                sdk_a.channels_info, prefix_filter="presence-cl-py-", attributes=["user_count"]
            )
            assert listed["channels"][presence] == {"user_count": 1}

            # Triggered through node A: delivered to the socket on B exactly once.
            result = await sdk_call(sdk_a.trigger, channel, "from-a", {"n": 1})
            assert result == {}
            assert (await on_b.expect("from-a", channel))["data"] == '{"n": 1}'
            assert (await on_a.expect("from-a", channel))["data"] == '{"n": 1}'

            # socket_id exclusion across nodes: node A excludes the socket on node B.
            await sdk_call(sdk_a.trigger, channel, "excluded", "x", socket_id=on_b.socket_id)
            await sdk_call(sdk_a.trigger, channel, "sentinel", "s")
            await on_a.expect("excluded", channel)
            await on_a.expect("sentinel", channel)
            # Node B's next event is the sentinel: no duplicate from-a, no excluded event.
            await on_b.expect("sentinel", channel)

            # A presence channel trigger through A reaches the member on B.
            await sdk_call(sdk_a.trigger, presence, "hello", {"to": "py-user"})
            assert (await on_b.expect("hello", presence))["data"] == '{"to": "py-user"}'
        finally:
            await on_a.close()
            await on_b.close()

    run(main())
    assert node_a.alive() and node_b.alive()
