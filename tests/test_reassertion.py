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
from channels_ha._constants import FLUSH_GROUP_BATCH
from channels_ha._keys import KeyLayout
from channels_ha._recovery import forget_ended, reassert_from
from channels_ha._scripts import GROUP_ADD, GROUP_DISCARD
from channels_ha.sandbox import RedisNode, SentinelTopology, Topology, TopologyFactory

from .conftest import LayerFactory, receivers_waiting

pytestmark = pytest.mark.redis_topologies("standalone", "sentinel", "cluster")

NOTHING_ARRIVES_S = 0.1
ARRIVES_S = 5.0


async def refresh(layer: RedisChannelLayer) -> None:
    """Runs the layer's periodic membership refresh now, and waits for it to end."""
    session = layer._session()
    session.core._last_refresh = float("-inf")
    session.upkeep.tick()
    await reassertions_done(layer)


async def reassertions_done(layer: RedisChannelLayer) -> None:
    session = layer._session()
    if session.resync.reassertions:
        await asyncio.wait(set(session.resync.reassertions), timeout=10)


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


async def test_another_process_s_channel_added_to_a_group_is_not_remembered(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A view adding a consumer's channel to a group keeps no record of it: only the
    consumer's layer receives on that channel, so it is never live in the view's process,
    which would never re-assert it (seen: one record per call, kept for group_expiry). A
    normal channel, which any process may receive on, is still remembered."""
    consumer = make_layer(redis_topology)
    view = make_layer(redis_topology, prefix=consumer.prefix)
    channel = await consumer.new_channel()
    await view.group_add("room", channel)
    await view.group_add("room", "normal.channel")
    assert view._core.memberships.remembered() == 1
    assert view._core.memberships.live_groups() == {}  # (neither received on here yet)
    receiving = asyncio.create_task(consumer.receive(channel))
    await view.group_send("room", {"type": "joined"})
    assert await arrives(receiving) == "joined"


async def test_a_membership_joined_after_a_flush_and_lost_comes_back(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Memberships joined right after another process's flush() (a channel the flush removed
    and that joined again, and a new one) that Redis then loses (a failover to a replica that
    missed the joins; here, the group deleted by hand) come back at the next re-assertion,
    as any loss does: the flush ended only what it found."""
    consumer = make_layer(redis_topology)
    admin = make_layer(redis_topology, prefix=consumer.prefix)
    again, new = await consumer.new_channel(), await consumer.new_channel()
    await consumer.group_add("room", again)
    await admin.flush()
    await consumer.group_add("room", again)
    await consumer.group_add("room", new)
    waiting = [asyncio.create_task(consumer.receive(channel)) for channel in (again, new)]
    key = KeyLayout(consumer.prefix).group("room")
    await consumer._session()._shards[0].link.submit("DEL", key, key=key)
    await refresh(consumer)
    await admin.group_send("room", {"type": "after.loss"})
    assert [await arrives(receiving) for receiving in waiting] == ["after.loss"] * 2
    assert len(consumer._core.memberships) == 2


async def test_a_record_back_after_the_join_that_cleared_it_was_lost_is_ignored(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Another process kicks a channel, its process joins it again (clearing the record),
    and Redis loses that join but not the kick (a failover to a replica that had the kick
    only; here, the record put back and the member removed by hand). The re-assertion
    puts the membership back: the process remembers which record its join cleared."""
    consumer = make_layer(redis_topology)
    kicker = make_layer(redis_topology, prefix=consumer.prefix)
    channel = await consumer.new_channel()
    await consumer.group_add("room", channel)
    await kicker.group_discard("room", channel)
    group, _, discards = KeyLayout(consumer.prefix).membership_keys("room")
    link = consumer._session()._shards[0].link
    record = await link.submit("ZSCORE", discards, channel, key=discards)
    await consumer.group_add("room", channel)
    await link.submit("ZADD", discards, record, channel, key=discards)  # as it was
    await link.submit("ZREM", group, channel, key=group)
    receiving = asyncio.create_task(consumer.receive(channel))
    await receivers_waiting(consumer, channel)  # live: the tick re-asserts it (and waits for none)
    await refresh(consumer)
    await kicker.group_send("room", {"type": "after.loss"})
    assert await arrives(receiving) == "after.loss"
    assert len(consumer._core.memberships) == 1


async def test_a_discard_before_a_flush_still_holds(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """flush() keeps the discard records: a channel another process discarded before it (no
    longer in the group, so the flush found nothing to record) stays out."""
    consumer = make_layer(redis_topology)
    kicker = make_layer(redis_topology, prefix=consumer.prefix)
    channel = await consumer.new_channel()
    await consumer.group_add("room", channel)
    receiving = asyncio.create_task(consumer.receive(channel))
    await kicker.group_discard("room", channel)
    await kicker.flush()
    await refresh(consumer)
    await kicker.group_send("room", {"type": "after.flush"})
    await nothing_arrives(receiving)
    assert len(consumer._core.memberships) == 0
    receiving.cancel()


async def test_an_own_discard_is_not_undone_by_a_reassertion_read_before_it(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A process discards its own channel while a re-assertion on another of its event loops
    has read the memberships before and writes after (async_to_sync): the channel stays
    out. Built with the real re-assertion, handed memberships read before the discard; the
    GROUP_ADD it submits reaches Redis after the discard, as the other loop's would."""
    consumer = make_layer(redis_topology)
    sender = make_layer(redis_topology, prefix=consumer.prefix)
    channel = await consumer.new_channel()
    await consumer.group_add("room", channel)
    await sender.group_send("room", {"type": "before.discard"})
    assert (await consumer.receive(channel))["type"] == "before.discard"  # (live now)
    receiving = asyncio.create_task(consumer.receive(channel))
    core, session = consumer._core, consumer._session()
    began, read = time.monotonic(), core.memberships.live()
    assert read == {"room": {channel: ""}}
    await consumer.group_discard("room", channel)
    shard = session._shards[core.shard_index("room")]
    await forget_ended(core, shard, reassert_from(core, shard, began, read))
    await sender.group_send("room", {"type": "after.discard"})
    await nothing_arrives(receiving)
    assert len(core.memberships) == 0
    receiving.cancel()


@pytest.mark.parametrize("redis_topology", ["standalone"], indirect=True)
async def test_discards_are_recorded_for_as_long_as_they_matter(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """Another process's channel, or a normal one, is recorded for group_expiry: its process
    re-asserts the membership until it hears of the discard. The process's own channel
    (every disconnect) for failover_timeout only: the process forgot the membership itself,
    and only a re-assertion already on its way on another event loop can undo it."""
    consumer = make_layer(redis_topology, group_expiry=600, failover_timeout=7)
    other = make_layer(redis_topology, prefix=consumer.prefix, group_expiry=600)
    discards = KeyLayout(consumer.prefix).group_discards("room")
    own, foreign = await consumer.new_channel(), await other.new_channel()
    for channel in (own, foreign, "worker"):
        await consumer.group_add("room", channel)
    now = time.time()
    await consumer.group_discard("room", own)
    assert 5 < master_client.pttl(discards) / 1000 <= 7
    await consumer.group_discard("room", foreign)
    await consumer.group_discard("room", "worker")
    held = {
        channel.decode(): until - now
        for channel, until in master_client.zrange(discards, 0, -1, withscores=True)
    }
    assert held.keys() == {own, foreign, "worker"}
    assert held[own] == pytest.approx(7, abs=1)
    assert held[foreign] == pytest.approx(600, abs=1)
    assert held["worker"] == pytest.approx(600, abs=1)
    assert 590 < master_client.ttl(discards) <= 600
    await consumer.group_add("room", foreign)  # a join clears the record
    assert master_client.zscore(discards, foreign) is None


@pytest.mark.parametrize("redis_topology", ["standalone"], indirect=True)
async def test_a_short_record_does_not_shorten_a_longer_one(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """Records of different lengths share a group's set: one kept 5 s, written after one
    kept 600 s (of the same channel, or another), shortens neither that record nor the
    key's expiry."""
    keys = KeyLayout(layer.prefix).membership_keys("room")
    link = layer._session()._shards[0].link
    now = time.time()
    for channel, kept in (("kicked", 600), ("own", 5), ("kicked", 5)):
        await link.submit_script(GROUP_DISCARD, keys, (channel, "token", now, kept))
    assert master_client.zscore(keys[2], "kicked") == pytest.approx(now + 600)
    assert master_client.zscore(keys[2], "own") == pytest.approx(now + 5)
    assert 590 < master_client.ttl(keys[2]) <= 600


@pytest.mark.parametrize("redis_topology", ["standalone"], indirect=True)
async def test_discards_older_than_the_group_expiry_are_dropped(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A group kicked from all day keeps only the records that still hold: the key's own
    expiry, renewed at each discard, would never come."""
    keys = KeyLayout(layer.prefix).membership_keys("room")
    link = layer._session()._shards[0].link
    now = time.time()
    for channel, at in (("kicked-long-ago", now - 100), ("kicked-now", now)):
        await link.submit_script(GROUP_DISCARD, keys, (channel, "token", at, 10))
    assert master_client.zrange(keys[2], 0, -1) == [b"kicked-now"]


@pytest.mark.parametrize("redis_topology", ["standalone"], indirect=True)
async def test_a_flush_records_every_member_of_a_large_group(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """flush() deletes a group larger than one GROUP_FLUSH call discards, and its token, and
    records every member (each call's work bounded, however large the group)."""
    keys = KeyLayout(layer.prefix).membership_keys("room")
    members = [f"worker-{number}" for number in range(FLUSH_GROUP_BATCH * 2 + 500)]
    args = (time.time(), 600, "token", "join", *members)
    await layer._session()._shards[0].link.submit_script(GROUP_ADD, keys, args)
    await layer.flush()
    assert master_client.exists(keys[0], keys[1]) == 0
    assert master_client.zcard(keys[2]) == len(members)


@pytest.mark.parametrize("redis_topology", ["standalone"], indirect=True)
async def test_the_record_a_join_cleared_is_recognised_by_its_value(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A re-assertion names the record its join cleared by the score Redis returned; another
    Redis version may print the same score with other digits (a rolling upgrade, a failover
    to a replica of another version), so the scores are compared as numbers."""
    keys = KeyLayout(layer.prefix).membership_keys("room")
    ends = time.time() + 600
    master_client.zadd(keys[2], {"worker": ends})
    printed = master_client.zscore(keys[2], "worker")
    assert printed is not None
    cleared = f"{printed:.17g}0"  # the same number, printed with one more digit
    args = (time.time(), 600, "token", "reassert", "worker", cleared)
    link = layer._session()._shards[0].link
    skipped = await link.submit_script(GROUP_ADD, keys, args)
    assert skipped == []
    assert master_client.zscore(keys[0], "worker") is not None


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
    changes = consumer._core.shard_stats[0].server_changes
    await sentinel.afailover()
    await sentinel.await_new_master(old)
    await met_new_master(consumer, changes)
    await kicker.group_send("room", {"type": "after.failover"})
    await nothing_arrives(receiving)
    assert len(consumer._core.memberships) == 0


async def test_a_membership_joined_after_a_flush_survives_a_failover_that_lost_it(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Another process flushes; the consumer joins right after (a channel the flush removed,
    and a new one); the master dies before its replicas got the joins, and one of them,
    which has the flush, is promoted. The consumer's re-assertion on it puts both back."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    consumer = make_layer(sentinel)
    admin = make_layer(sentinel, prefix=consumer.prefix)
    again, new = await consumer.new_channel(), await consumer.new_channel()
    await consumer.group_add("room", again)
    await admin.flush()
    old = await sentinel.acurrent_master()
    await asyncio.to_thread(_replicated, old, consumer.prefix)
    replicas = [node for node in sentinel.data_nodes if node is not old]
    for replica in replicas:
        replica.pause()
    try:
        client = old.client()
        try:  # what follows never reaches them
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        finally:
            client.close()
        await consumer.group_add("room", again)
        await consumer.group_add("room", new)
        changes = consumer._core.shard_stats[0].server_changes
        old.kill()
    finally:
        for replica in replicas:
            replica.resume()
    waiting = [asyncio.create_task(consumer.receive(channel)) for channel in (again, new)]
    await sentinel.await_new_master(old)
    await met_new_master(consumer, changes)
    await admin.group_send("room", {"type": "after.failover"})
    assert [await arrives(receiving) for receiving in waiting] == ["after.failover"] * 2
    assert len(consumer._core.memberships) == 2


async def met_new_master(layer: RedisChannelLayer, changes: int) -> None:
    """Waits until the layer met a server run other than the one it had met ``changes``
    times, and for the re-assertion that follows."""
    stats = layer._core.shard_stats[0]
    deadline = time.monotonic() + 20
    while stats.server_changes == changes:
        assert time.monotonic() < deadline, "the layer never met the new master"
        await asyncio.sleep(0.05)  # the layer has no event for it; its re-assertion follows
    await reassertions_done(layer)


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
