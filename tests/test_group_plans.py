"""group_send in one round trip: a sender remembers a group's targets with the group's
membership token, and the server pushes only while the token (and every member's expiry)
still holds; anything else sends the sender back to reading the members."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import pytest
import redis
from asgiref.sync import async_to_sync

from channels_ha import RedisChannelLayer
from channels_ha._codec import decode_element
from channels_ha._keys import KeyLayout
from channels_ha.sandbox import Topology

from .conftest import LayerFactory

pytestmark = pytest.mark.redis_topologies("standalone", "sentinel")


async def receive_types(layer: RedisChannelLayer, channel: str, count: int) -> list[str]:
    return [(await asyncio.wait_for(layer.receive(channel), 5))["type"] for _ in range(count)]


async def assert_nothing_arrives(layer: RedisChannelLayer, channel: str) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.1)


async def test_an_unchanged_group_is_read_once(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Members are read by the first group_send only; refreshing a membership (what every
    process does periodically) keeps the plan, a new member replaces it."""
    sender = make_layer(redis_topology)
    receiver = make_layer(redis_topology, prefix=sender.prefix)
    one, two = await receiver.new_channel(), await receiver.new_channel()
    await receiver.group_add("steady", one)
    for number in range(5):
        await sender.group_send("steady", {"type": f"m{number}"})
    assert sender.statistics().group_member_reads == 1
    await receiver.group_add("steady", one)  # a refresh: same member, new score
    await sender.group_send("steady", {"type": "m5"})
    assert sender.statistics().group_member_reads == 1
    await receiver.group_add("steady", two)
    await sender.group_send("steady", {"type": "m6"})
    assert sender.statistics().group_member_reads == 2
    assert await receive_types(receiver, one, 7) == [f"m{n}" for n in range(7)]
    assert await receive_types(receiver, two, 1) == ["m6"]


async def test_a_member_whose_time_ran_out_gets_nothing(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """The server checks member expiry before using a remembered plan: a member past
    group_expiry is dropped even though the group's token did not change."""
    layer = make_layer(redis_topology, group_expiry=2)
    await layer.group_add("ageing", "old-member")
    await asyncio.sleep(1.0)  # the behaviour under test is the passage of time
    await layer.group_add("ageing", "young-member")  # keeps the group key alive past 2 s
    await layer.group_send("ageing", {"type": "both"})
    await asyncio.sleep(1.1)  # old-member's 2 s are over, young-member's are not
    await layer.group_send("ageing", {"type": "young-only"})
    assert await receive_types(layer, "old-member", 1) == ["both"]
    assert await receive_types(layer, "young-member", 2) == ["both", "young-only"]
    await assert_nothing_arrives(layer, "old-member")
    assert layer.statistics().group_member_reads == 2


async def test_a_stale_plan_is_sent_with_the_same_sequence_numbers(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """When the server refuses a stale plan, the message goes out with the numbers it was
    given: a refused attempt that had in fact landed (a retry after a lost reply) would
    otherwise come through twice."""
    sender = make_layer(redis_topology)
    receiver = make_layer(redis_topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    await receiver.group_add("numbered", channel)
    await sender.group_send("numbered", {"type": "first"})
    keys = KeyLayout(sender.prefix)
    master_client.set(keys.group_token("numbered"), "changed-elsewhere")
    await sender.group_send("numbered", {"type": "second"})
    assert sender.statistics().group_member_reads == 2
    inbox = keys.inbox(channel.split("!")[0] + "!")
    seqs = [decode_element(element).seq for element in master_client.lrange(inbox, 0, -1)]
    assert seqs == [seqs[0], seqs[0] + 1]
    assert await receive_types(receiver, channel, 2) == ["first", "second"]


@pytest.mark.redis_topologies("cluster")
async def test_cluster_reads_the_members_every_time(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """On Cluster a script's keys share one slot, and a group's key and its members' inboxes
    do not: every group_send reads the members, and still reaches every one."""
    layer = make_layer(redis_topology)
    channel = await layer.new_channel()
    await layer.group_add("spread", channel)
    for number in range(3):
        await layer.group_send("spread", {"type": f"m{number}"})
    assert layer.statistics().group_member_reads == 3
    assert await receive_types(layer, channel, 3) == ["m0", "m1", "m2"]


async def test_a_group_emptied_behind_a_remembered_plan_gets_nothing(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A token that outlives its group (flush() deletes the keys one by one) does not let a
    remembered plan through: an empty group is stale."""
    layer = make_layer(redis_topology)
    await layer.group_add("vanishing", "member")
    await layer.group_send("vanishing", {"type": "before"})
    master_client.delete(KeyLayout(layer.prefix).group("vanishing"))  # the token stays
    await layer.group_send("vanishing", {"type": "after"})
    assert await receive_types(layer, "member", 1) == ["before"]
    await assert_nothing_arrives(layer, "member")


async def test_members_are_read_in_a_group_about_to_expire(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """Reading a group with under a second to live, while dropping an expired member, is
    not an error (a whole-second TTL reads 0 there, which SET refuses as an expiry)."""
    layer = make_layer(redis_topology, group_expiry=60)
    key = KeyLayout(layer.prefix).group("closing")
    now = time.time()
    master_client.zadd(key, {"expired": now - 120, "live": now})
    master_client.pexpire(key, 400)
    await layer.group_send("closing", {"type": "last"})
    assert await receive_types(layer, "live", 1) == ["last"]
    await assert_nothing_arrives(layer, "expired")


SYNC_CALLS = 20
THREADS = 8


async def sync_group_sends(layer: RedisChannelLayer, group: str, numbers: Iterable[int]) -> None:
    """group_send through async_to_sync, one call after the other, from a thread without an
    event loop (a WSGI view, a Celery task): an event loop, and a session, per call."""

    def run() -> None:
        for number in numbers:
            async_to_sync(layer.group_send)(group, {"type": "n", "n": number})

    await asyncio.to_thread(run)


async def receive_numbers(layer: RedisChannelLayer, channel: str, count: int) -> list[int]:
    received = [(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in range(count)]
    await assert_nothing_arrives(layer, channel)
    return received


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT; a script's own commands count too."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


async def test_sync_group_sends_read_an_unchanged_group_once(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """Seen: every sync group_send read the members (20 reads for 20 calls, two round trips
    each): the plans were each session's, and each call is a session of its own. They are
    the process's now: only the first call reads, the others push in one GROUP_PUSH."""
    sender = make_layer(redis_topology)
    receiver = make_layer(redis_topology, prefix=sender.prefix)  # another process's consumer
    channel = await receiver.new_channel()
    await receiver.group_add("sync-room", channel)
    await asyncio.to_thread(master_client.config_resetstat)
    await sync_group_sends(sender, "sync-room", range(SYNC_CALLS))
    calls = await asyncio.to_thread(command_calls, master_client)
    # ZREMRANGEBYSCORE runs in GROUP_MEMBERS (the member read) and in no other script sent.
    assert (calls.get("zremrangebyscore"), calls.get("evalsha")) == (1, SYNC_CALLS + 1)
    assert sender.statistics().group_member_reads == 1
    assert await receive_numbers(receiver, channel, SYNC_CALLS) == list(range(SYNC_CALLS))


async def test_sync_group_sends_follow_members_changed_elsewhere(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A member another process adds or discards between two sync group_sends gets, or no
    longer gets, the very next one: the server refuses the plan the process shares."""
    sender = make_layer(redis_topology)
    receiver = make_layer(redis_topology, prefix=sender.prefix)
    one, two = await receiver.new_channel(), await receiver.new_channel()
    await receiver.group_add("changing", one)
    await sync_group_sends(sender, "changing", [0])
    await receiver.group_add("changing", two)
    await sync_group_sends(sender, "changing", [1])
    await receiver.group_discard("changing", one)
    await sync_group_sends(sender, "changing", [2, 3])
    assert await receive_numbers(receiver, one, 2) == [0, 1]
    assert await receive_numbers(receiver, two, 3) == [1, 2, 3]
    assert sender.statistics().group_member_reads == 3  # one per membership


async def test_concurrent_sync_group_sends_share_one_plan(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Sync group_sends from 8 threads at once (each an event loop of its own) use the plan
    the process made, and every message arrives exactly once."""
    sender = make_layer(redis_topology)
    receiver = make_layer(redis_topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    await receiver.group_add("crowded", channel)
    await sync_group_sends(sender, "crowded", [-1])
    each = SYNC_CALLS // 4
    await asyncio.gather(
        *(
            sync_group_sends(sender, "crowded", range(t * each, (t + 1) * each))
            for t in range(THREADS)
        )
    )
    received = await receive_numbers(receiver, channel, THREADS * each + 1)
    assert sorted(received) == list(range(-1, THREADS * each))
    assert sender.statistics().group_member_reads == 1
