"""Re-assertion puts back what Redis lost, never what another process ended.

Two layers with one prefix stand for two processes: each remembers its own memberships. The
consumer's periodic refresh is run on demand (as its upkeep runs it every
min(1 h, group_expiry / 3)), and awaited.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha._keys import KeyLayout
from channels_ha._scripts import GROUP_DISCARD
from channels_ha.sandbox import RedisNode, SentinelTopology, Topology, TopologyFactory

from .conftest import LayerFactory

pytestmark = pytest.mark.redis_topologies("standalone", "sentinel", "cluster")

NOTHING_ARRIVES_S = 0.1
ARRIVES_S = 5.0


async def refresh(layer: RedisChannelLayer) -> None:
    """Runs the layer's periodic membership refresh now, and waits for it to end."""
    session = layer._session()
    session.core._last_refresh = float("-inf")
    await session._upkeep()
    await reassertions_done(layer)


async def reassertions_done(layer: RedisChannelLayer) -> None:
    session = layer._session()
    if session._reassertions:
        await asyncio.wait(set(session._reassertions), timeout=10)


async def nothing_arrives(receiving: asyncio.Task[dict[str, object]]) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(receiving), NOTHING_ARRIVES_S)


async def arrives(receiving: asyncio.Task[dict[str, object]]) -> object:
    return (await asyncio.wait_for(receiving, ARRIVES_S))["type"]


async def test_a_discard_by_another_process_is_not_undone(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A channel another process discarded from a group stays out of it when its own
    process refreshes its memberships, which forgets it; its own group_add afterwards is a
    real join again."""
    consumer = make_layer(redis_topology)
    kicker = make_layer(redis_topology, prefix=consumer.prefix)
    channel = await consumer.new_channel()
    await consumer.group_add("room", channel)
    receiving = asyncio.create_task(consumer.receive(channel))
    await kicker.group_send("room", {"type": "before.kick"})  # (plans with the group's token)
    assert await arrives(receiving) == "before.kick"
    receiving = asyncio.create_task(consumer.receive(channel))
    await kicker.group_discard("room", channel)
    await refresh(consumer)
    await kicker.group_send("room", {"type": "after.kick"})
    await nothing_arrives(receiving)
    assert len(consumer._core.memberships) == 0  # not re-added once the discard expires
    await consumer.group_add("room", channel)
    await refresh(consumer)
    await kicker.group_send("room", {"type": "joined.again"})
    assert await arrives(receiving) == "joined.again"


async def test_a_flush_by_another_process_is_not_undone(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """After another process's flush(), a refresh does not put back the memberships the flush
    deleted (they are forgotten), and keeps those joined since."""
    consumer = make_layer(redis_topology)
    admin = make_layer(redis_topology, prefix=consumer.prefix)
    flushed, joined_since = await consumer.new_channel(), await consumer.new_channel()
    await consumer.group_add("room", flushed)
    waiting_flushed = asyncio.create_task(consumer.receive(flushed))
    await admin.flush()
    await consumer.group_add("room", joined_since)
    waiting_since = asyncio.create_task(consumer.receive(joined_since))
    await refresh(consumer)
    await admin.group_send("room", {"type": "after.flush"})
    assert await arrives(waiting_since) == "after.flush"
    await nothing_arrives(waiting_flushed)
    assert consumer._core.memberships.live_groups() == {"room": [joined_since]}
    waiting_flushed.cancel()


async def test_a_membership_lost_without_a_discard_comes_back(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A group gone from Redis with no discard and no flush (evicted under maxmemory, or
    deleted by hand) is put back by the next refresh: nobody asked the channel to leave."""
    consumer = make_layer(redis_topology)
    sender = make_layer(redis_topology, prefix=consumer.prefix)
    channel = await consumer.new_channel()
    await consumer.group_add("room", channel)
    receiving = asyncio.create_task(consumer.receive(channel))
    key = KeyLayout(consumer.prefix).group("room")
    await consumer._session()._shards[0].link.submit("DEL", key, key=key)
    await refresh(consumer)
    await sender.group_send("room", {"type": "still.here"})
    assert await arrives(receiving) == "still.here"


@pytest.mark.parametrize("redis_topology", ["standalone"], indirect=True)
async def test_only_a_discard_of_another_process_channel_is_recorded(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A process discarding its own channel (every disconnect) records nothing: it forgot the
    membership itself. Another process's channel, or a normal one, is recorded for
    group_expiry."""
    consumer = make_layer(redis_topology, group_expiry=600)
    other = make_layer(redis_topology, prefix=consumer.prefix, group_expiry=600)
    discards = KeyLayout(consumer.prefix).group_discards("room")
    own, foreign = await consumer.new_channel(), await other.new_channel()
    for channel in (own, foreign, "worker"):
        await consumer.group_add("room", channel)
    await consumer.group_discard("room", own)
    assert master_client.exists(discards) == 0
    await consumer.group_discard("room", foreign)
    await consumer.group_discard("room", "worker")
    assert sorted(master_client.zrange(discards, 0, -1)) == sorted([foreign.encode(), b"worker"])
    assert 590 < master_client.ttl(discards) <= 600


@pytest.mark.parametrize("redis_topology", ["standalone"], indirect=True)
async def test_discards_older_than_the_group_expiry_are_dropped(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A group kicked from all day keeps only the discards of the last group_expiry: the key's
    own expiry, renewed at each discard, would never come."""
    keys = KeyLayout(layer.prefix).membership_keys("room")
    link = layer._session()._shards[0].link
    now = time.time()
    for channel, at in (("kicked-long-ago", now - 100), ("kicked-now", now)):
        await link.submit_script(GROUP_DISCARD, keys, (channel, "token", at, 10))
    assert master_client.zrange(keys[2], 0, -1) == [b"kicked-now"]


async def test_a_discard_survives_a_failover(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """After a failover every process re-asserts its memberships on the new master; a channel
    another process discarded before it stays out (the discard was replicated)."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    consumer = make_layer(sentinel)
    kicker = make_layer(sentinel, prefix=consumer.prefix)
    channel = await consumer.new_channel()
    await consumer.group_add("room", channel)
    receiving = asyncio.create_task(consumer.receive(channel))
    await kicker.group_discard("room", channel)
    old = await sentinel.acurrent_master()
    await asyncio.to_thread(_replicated, old, consumer.prefix)
    stats = consumer._core.shard_stats[0]
    changes = stats.server_changes
    await sentinel.afailover()
    await sentinel.await_new_master(old)
    deadline = time.monotonic() + 20
    while stats.server_changes == changes:
        assert time.monotonic() < deadline, "the consumer never met the new master"
        await asyncio.sleep(0.05)  # the layer has no event for it; its re-assertion follows
    await reassertions_done(consumer)
    await kicker.group_send("room", {"type": "after.failover"})
    await nothing_arrives(receiving)
    assert len(consumer._core.memberships) == 0


def _replicated(master: RedisNode, prefix: str) -> None:
    """Waits until both replicas hold everything written so far (one replication stream:
    a write acknowledged by WAIT comes after all the earlier ones). Seen otherwise: a replica
    of a fresh deployment still missing the first writes was promoted, a data loss."""
    client = master.client()
    try:
        client.set(f"{prefix}:replicated", 1)
        assert client.wait(2, 10_000) == 2, "the replicas did not catch up in 10 s"
    finally:
        client.close()
