"""group_send in one round trip: a sender remembers a group's targets with the group's
membership token, and the server pushes only while the token (and every member's expiry)
still holds; anything else sends the sender back to reading the members."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterable

import pytest
import redis
from asgiref.sync import async_to_sync

from channels_ha import RedisChannelLayer
from channels_ha._codec import decode_element
from channels_ha._keys import KeyLayout
from channels_ha._sequence import MAX_GAPS
from channels_ha.sandbox import Topology

from .conftest import LayerFactory, marker_is_next
from .test_normal_reader import CuttingProxy, behind

pytestmark = pytest.mark.redis_topologies("standalone", "sentinel")


async def receive_types(layer: RedisChannelLayer, channel: str, count: int) -> list[str]:
    return [(await asyncio.wait_for(layer.receive(channel), 5))["type"] for _ in range(count)]


async def assert_nothing_arrives(layer: RedisChannelLayer, channel: str) -> None:
    """Whatever ``layer`` sent to ``channel`` before now has been received."""
    await marker_is_next(layer, layer, channel)


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


async def test_a_stale_plan_written_once_is_numbered_afresh(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A GROUP_PUSH the server refused as stale, written once, stored nothing: the message
    goes out with a new number (the one it took is a gap, as a refused message's is)."""
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
    assert seqs == [seqs[0], seqs[0] + 2]
    assert await receive_types(receiver, channel, 2) == ["first", "second"]


BUSY_SENDS = MAX_GAPS + 100  # sent while a stale plan's members are read


@pytest.mark.redis_topologies("standalone")
@pytest.mark.parametrize("kind", ["process", "normal"])
async def test_a_stale_plan_behind_many_concurrent_sends_is_delivered(
    make_layer: LayerFactory, redis_topology: Topology, kind: str
) -> None:
    """Seen: a group_send whose plan turned out stale was pushed again with the numbers it
    took first, while the event loop's concurrent group_sends had stored more than MAX_GAPS
    messages on the same list: taken for a copy (dropped by the inbox's process, refused by
    the PUSH script on a normal channel), 1 of 5,000 lost."""
    sender = make_layer(redis_topology, capacity=2 * BUSY_SENDS)
    receiver = make_layer(redis_topology, prefix=sender.prefix, capacity=2 * BUSY_SENDS)
    channel = await receiver.new_channel() if kind == "process" else "worker"
    for group in ("stale", "busy"):
        await receiver.group_add(group, channel)
        await sender.group_send(group, {"type": "t", "n": -1})  # the plans, with tokens
    await receiver.group_add("stale", await receiver.new_channel())
    await asyncio.gather(
        sender.group_send("stale", {"type": "t", "n": 0}),  # numbered first
        *(sender.group_send("busy", {"type": "t", "n": n}) for n in range(1, BUSY_SENDS + 1)),
    )
    received = []
    with contextlib.suppress(asyncio.TimeoutError):  # what arrives, then 1 s of nothing
        for _ in range(BUSY_SENDS + 4):
            received.append((await asyncio.wait_for(receiver.receive(channel), 1))["n"])
    missing = sorted(set(range(BUSY_SENDS + 1)) - set(received))
    assert (len(received), missing) == (BUSY_SENDS + 3, [])
    assert receiver.statistics().duplicates_dropped == 0


class CutOnce(CuttingProxy):
    """Once armed, cuts the next reply that is ``reply`` exactly (Redis ran its request; the
    link writes it again on its next connection), calling ``meanwhile`` first."""

    def __init__(self, topology: Topology, reply: bytes) -> None:
        super().__init__(topology, cuts=0)
        self._reply = reply
        self.armed = False
        self.meanwhile: Callable[[], object] = lambda: None

    def _cuts(self, data: bytes) -> bool:
        if not self.armed or data != self._reply:
            return False
        self.armed = False
        self.meanwhile()
        return True


@pytest.mark.redis_topologies("standalone")
async def test_a_stale_plan_written_again_keeps_its_numbers(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A GROUP_PUSH whose reply was lost may have been stored: written again after the
    reconnect and found stale there (the members changed meanwhile), the message goes out
    with the numbers it had, so the copy already stored is recognised: delivered once."""
    proxy = CutOnce(redis_topology, b"*1\r\n:1\r\n")  # one target, pushed
    async with behind(proxy, redis_topology, "stale-retry") as (sender, receiver):
        token = KeyLayout(sender.prefix).group_token("retried")
        proxy.meanwhile = functools.partial(master_client.set, token, "changed-elsewhere")
        channel = await receiver.new_channel()
        await receiver.group_add("retried", channel)
        await sender.group_send("retried", {"type": "first"})
        proxy.armed = True
        await sender.group_send("retried", {"type": "second"})
        assert (proxy.cut, sender.statistics().group_member_reads) == (1, 2)
        assert await receive_types(receiver, channel, 2) == ["first", "second"]
        await assert_nothing_arrives(receiver, channel)
        assert receiver.statistics().duplicates_dropped == 1


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
