"""The upkeep on Cluster: a master that does not answer holds up no other step of the tick,
and a process that only receives reads the epoch of no master but those of its inboxes.

The epoch check reads a master's epoch key every second; the inbox limits, which senders go
by, live for 10 s and are written again every 3 s by the same tick. A tick that waited for a
frozen master's reply let them lapse, and senders to channels far below capacity were
refused with ChannelFull.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from channels.exceptions import ChannelFull

from channels_ha import RedisChannelLayer
from channels_ha._delivery import inbox_of
from channels_ha._inbox_totals import LIMIT_REFRESH_S, LIMIT_TTL_MS
from channels_ha._keys import KeyLayout
from channels_ha._slots import slot_of
from channels_ha.sandbox import ClusterTopology, TopologyFactory

from .conftest import LayerFactory
from .test_cluster import layer_connections

CAPACITY = 10
CHANNELS = 20  # per receiving process
PER_CHANNEL = 2  # sent to each channel in the burst: well below CAPACITY
# Longer than a limit lives (10 s), shorter than the cluster-node-timeout set below: the
# master stays frozen, nobody fails it over.
FROZEN_S = 10.5
NODE_TIMEOUT_MS = 60_000
POLL_S = 0.1  # how often the limits' remaining lives are read while the master is frozen
# A limit is written again every LIMIT_REFRESH_S, at a tick (1 s); 2 s of slack for a busy
# machine. A tick held up by the frozen master wrote none for its whole freeze.
LOWEST_TTL_MS = LIMIT_TTL_MS - int((LIMIT_REFRESH_S + 1 + 2) * 1000)
PUBLISHED_S = 5.0  # the limits are in Redis within this
TICKS = 3  # upkeep ticks awaited before counting links: every epoch read made by then


@pytest.fixture
def cluster(redis_sandbox_factory: TopologyFactory) -> ClusterTopology:
    topology = redis_sandbox_factory("cluster")
    assert isinstance(topology, ClusterTopology)
    return topology


def limit_key(layer: RedisChannelLayer, channel: str) -> str:
    return KeyLayout(layer.prefix).inbox_limit(inbox_of(channel))


async def ticks(layer: RedisChannelLayer, count: int) -> None:
    """Returns once ``layer``'s upkeep published the inbox limits ``count`` times more."""
    upkeep = layer._session().upkeep
    publish = upkeep.publish_inbox_limits
    done = asyncio.Event()
    left = [count]

    def publishing() -> None:
        publish()
        left[0] -= 1
        if left[0] <= 0:
            done.set()

    upkeep.publish_inbox_limits = publishing  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(done.wait(), count * 2.0 + 5.0)
    finally:
        del upkeep.publish_inbox_limits


async def published(client: redis.Redis, key: str) -> None:
    """Waits for the limit of CHANNELS channels at CAPACITY to be in Redis."""
    deadline = time.monotonic() + PUBLISHED_S
    while client.get(key) != str(CAPACITY * CHANNELS).encode():
        assert time.monotonic() < deadline, f"{key} was never published"
        await asyncio.sleep(0.01)  # polling Redis, which has no event for this


async def test_a_frozen_master_lets_no_inbox_limit_lapse(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """A master that holds neither process's inbox is frozen (SIGSTOP) for longer than a
    limit lives. One process has a group membership (it reads every master's epoch), the
    other only receives: the limits of both are written again every 3 s throughout, and a
    burst below capacity at the end of the freeze is taken whole. Each tick waited for the
    frozen master's epoch (seen: the limits gone 7 to 10 s into the freeze, 40 of 80 sends
    refused; the process that only receives stopped reading that master first)."""
    member = make_layer(cluster, capacity=CAPACITY)
    quiet = make_layer(cluster, prefix=member.prefix, capacity=CAPACITY)
    sender = make_layer(cluster, prefix=member.prefix, capacity=CAPACITY)
    receivers = {
        layer: [await layer.new_channel() for _ in range(CHANNELS)] for layer in (member, quiet)
    }
    await member.group_add("room", receivers[member][0])
    for layer, channels in receivers.items():  # the sender's links are up before the freeze
        await sender.send(channels[0], {"type": "warm"})
        assert (await asyncio.wait_for(layer.receive(channels[0]), PUBLISHED_S))["type"] == "warm"
    keys = [limit_key(layer, channels[0]) for layer, channels in receivers.items()]
    homes = [await cluster.anode_for_slot(slot_of(key)) for key in keys]
    frozen = next(m for m in await cluster.amasters() if m not in homes)
    clients = [home.client() for home in homes]
    for node in cluster.nodes:  # nobody fails the frozen master over
        admin = node.client()
        admin.config_set("cluster-node-timeout", NODE_TIMEOUT_MS)
        admin.close()
    waiting = [
        asyncio.create_task(layer.receive(channel))
        for layer, channels in receivers.items()
        for channel in channels
    ]
    try:
        for client, key in zip(clients, keys, strict=True):
            await published(client, key)
        await ticks(member, 2)  # its epoch reads reached every master
        lowest = {key: LIMIT_TTL_MS for key in keys}
        frozen.pause()
        try:
            frozen_at = time.monotonic()
            while time.monotonic() - frozen_at < FROZEN_S:
                for client, key in zip(clients, keys, strict=True):
                    lowest[key] = min(lowest[key], client.pttl(key))
                await asyncio.sleep(POLL_S)  # sampling the limits' lives, not waiting
            sends = [
                sender.send(channel, {"type": "m"})
                for channels in receivers.values()
                for channel in channels
                for _ in range(PER_CHANNEL)
            ]
            results = await asyncio.gather(*sends, return_exceptions=True)
        finally:
            frozen.resume()
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for client in clients:
            client.close()
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, ChannelFull)]
    assert not unexpected, unexpected
    refused = sum(isinstance(r, ChannelFull) for r in results)
    assert refused == 0, f"{refused} of {len(sends)} refused; lowest PTTLs {lowest}"
    assert min(lowest.values()) >= LOWEST_TTL_MS, f"lowest PTTLs (ms) {lowest}"


async def test_a_process_that_only_receives_links_to_its_inbox_masters_only(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """A process with channels and nothing else reads the epoch of the masters that hold its
    inbox limits, which it publishes and would publish again after a loss: a link to every
    other master was one connection more per master and per event loop, for nothing."""
    layer = make_layer(cluster, capacity=CAPACITY)
    channels = [await layer.new_channel() for _ in range(CHANNELS)]
    home = await cluster.anode_for_slot(slot_of(limit_key(layer, channels[0])))
    client = home.client()
    waiting = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    try:
        await published(client, limit_key(layer, channels[0]))
        await ticks(layer, TICKS)
        links = {m.port: await layer_connections(m, layer) for m in await cluster.amasters()}
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        client.close()
    assert links.pop(home.port) >= 1, "no link to the inbox's master"
    assert set(links.values()) == {0}, f"links per master {links} (inbox on {home.port})"
