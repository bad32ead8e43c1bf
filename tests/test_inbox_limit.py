"""A process's inbox limit: raised as soon as it receives on new channels, not a tick later;
the capacity of every event loop's channels; published again at once on an empty master."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from channels.exceptions import ChannelFull

from channels_ha import RedisChannelLayer
from channels_ha._delivery import inbox_of
from channels_ha._keys import KeyLayout
from channels_ha.sandbox import Topology, TopologyFactory

from .conftest import LayerFactory, LoopThread, receivers_waiting

pytestmark = pytest.mark.redis_topologies("standalone", "cluster")

CAPACITY = 10
NEW_CHANNELS = 50
PER_CHANNEL = 2  # well below CAPACITY: channels_redis, counting per channel, takes them all
OVER = 10  # sends past the inbox limit, in the guard
BURST, WAVES = 1000, 4  # channels opened by a burst of connects, over that many loop turns
RECEIVE_TIMEOUT_S = 10.0
TICK_TIMEOUT_S = 5.0  # a few upkeep ticks (1 s each)


async def warm_up(receiver: RedisChannelLayer, sender: RedisChannelLayer) -> str:
    """Both layers connected to the inbox's master, as in a process already serving; the
    receiver's one channel so far, whose capacity is its inbox's limit as senders see it."""
    channel = await receiver.new_channel()
    for layer in (receiver, sender):
        await layer.send(channel, {"type": "warm"})
        message = await asyncio.wait_for(receiver.receive(channel), RECEIVE_TIMEOUT_S)
        assert message == {"type": "warm"}
    return channel


def limit_key(layer: RedisChannelLayer, channel: str) -> str:
    return KeyLayout(layer.prefix).inbox_limit(inbox_of(channel))


async def applied(layer: RedisChannelLayer, channel: str) -> None:
    """Returns once what ``layer`` submitted so far to the master of ``channel``'s inbox has
    been applied: a send there goes on the same link, in order, and waits for its reply."""
    await asyncio.sleep(0)  # what the last receive() calls scheduled runs in this loop turn
    await layer.send(channel, {"type": "marker"})


def refusals(results: list[object]) -> int:
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, ChannelFull)
    ]
    assert not unexpected, unexpected
    return sum(isinstance(r, ChannelFull) for r in results)


@asynccontextmanager
async def receiving(
    layer: RedisChannelLayer, channels: list[str], waves: int = 1
) -> AsyncIterator[list[asyncio.Task[dict[str, Any]]]]:
    """A receive() on each channel, started in ``waves`` loop turns (as a burst of connects
    starts its consumers); those still waiting at the end are cancelled."""
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    try:
        for wave in range(waves):
            part = channels[wave * len(channels) // waves : (wave + 1) * len(channels) // waves]
            tasks += [asyncio.create_task(layer.receive(channel)) for channel in part]
            await asyncio.sleep(0)  # one loop turn: the wave's receive() calls have started
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_senders_to_new_channels_are_not_refused_below_capacity(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A burst of new consumers, each sent to at once: every channel stays below capacity,
    so no send may raise ChannelFull (it did, the inbox limit being published only at the
    next upkeep tick); and the inbox still refuses what goes past capacity times channels."""
    receiver = make_layer(redis_topology, capacity=CAPACITY)
    sender = make_layer(redis_topology, prefix=receiver.prefix, capacity=CAPACITY)
    first = await warm_up(receiver, sender)
    channels = [await receiver.new_channel() for _ in range(NEW_CHANNELS)]
    async with receiving(receiver, channels) as waiting:
        # Senders learn a new channel's name from what its consumer wrote after starting to
        # receive (group_add, on the same link): only that ordering is guaranteed.
        await applied(receiver, first)
        sends = [
            sender.send(c, {"type": "m", "n": n}) for n in range(PER_CHANNEL) for c in channels
        ]
        refused = refusals(await asyncio.gather(*sends, return_exceptions=True))
        published = master_client.get(limit_key(receiver, first))
        assert refused == 0, f"{refused} of {len(sends)} refused with ChannelFull ({published})"
        firsts = await asyncio.wait_for(asyncio.gather(*waiting), RECEIVE_TIMEOUT_S)
    assert [message["n"] for message in firsts] == [0] * NEW_CHANNELS
    for channel in channels:
        for n in range(1, PER_CHANNEL):
            message = await asyncio.wait_for(receiver.receive(channel), RECEIVE_TIMEOUT_S)
            assert message == {"type": "m", "n": n}
    # The guard: nobody receives now, and the inbox holds capacity times channels, not more.
    # A pop still blocked from the last receives (sent before they resumed) may take the
    # first of these, hence one less.
    limit = CAPACITY * (1 + NEW_CHANNELS)
    overs = [sender.send(first, {"type": "over"}) for _ in range(limit + OVER)]
    refused = refusals(await asyncio.gather(*overs, return_exceptions=True))
    assert OVER - 1 <= refused <= OVER, f"{refused} of {len(overs)} refused, limit {limit}"


@pytest.mark.redis_topologies("standalone")
async def test_a_burst_of_new_channels_publishes_once_per_loop_turn(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A thousand consumers starting over a few loop turns: the raised limit is in Redis
    before anything the receiver sends after them, and costs one SET per turn, not one per
    channel."""
    receiver = make_layer(redis_topology, capacity=CAPACITY)
    sender = make_layer(redis_topology, prefix=receiver.prefix, capacity=CAPACITY)
    first = await warm_up(receiver, sender)
    channels = [await receiver.new_channel() for _ in range(BURST)]
    sets_before = _set_calls(master_client)
    async with receiving(receiver, channels, WAVES):
        await applied(receiver, first)
        published = master_client.get(limit_key(receiver, first))
        sets = _set_calls(master_client) - sets_before
    assert published == str(CAPACITY * (1 + BURST)).encode(), published
    assert 1 <= sets <= WAVES + 1, f"{sets} SETs for {BURST} new channels"  # (+1: a tick)


@pytest.mark.redis_topologies("standalone")
async def test_the_limit_is_lowered_at_the_tick_and_raised_again_at_once(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """Channels that went away lower the limit at the next tick, not before; new ones raise
    it again at once."""
    receiver = make_layer(redis_topology, capacity=CAPACITY)
    sender = make_layer(redis_topology, prefix=receiver.prefix, capacity=CAPACITY)
    first = await warm_up(receiver, sender)
    key = limit_key(receiver, first)
    gone = [await receiver.new_channel() for _ in range(NEW_CHANNELS)]
    async with receiving(receiver, [first]), receiving(receiver, gone):
        await applied(receiver, first)  # (the marker is for ``first``, which is received)
    assert master_client.get(key) == str(CAPACITY * (1 + NEW_CHANNELS)).encode()
    async with receiving(receiver, [first]):
        receiver._session().deliveries.sweep()  # forgets the channels nobody waits on
        await applied(receiver, first)
        assert master_client.get(key) == str(CAPACITY * (1 + NEW_CHANNELS)).encode()
        deadline = time.monotonic() + TICK_TIMEOUT_S
        while master_client.get(key) != str(CAPACITY).encode():
            assert time.monotonic() < deadline, "the tick never lowered the limit"
            await asyncio.sleep(0.05)  # polling Redis, which has no event for this
        new = [await receiver.new_channel() for _ in range(NEW_CHANNELS)]
        async with receiving(receiver, new):
            await applied(receiver, first)
            published = master_client.get(key)
    assert published == str(CAPACITY * (1 + NEW_CHANNELS)).encode(), published


# -- several event loops, one inbox ------------------------------------------------------------

MARKER_CHANNEL = "inbox-limit-marker"  # a normal channel nobody receives on


async def received_on(layer: RedisChannelLayer, count: int) -> list[str]:
    """``count`` new channels, received on in this event loop and then not any more (their
    consumers between two messages): their buffers stay, and nobody waits on the inbox."""
    channels = [await layer.new_channel() for _ in range(count)]
    async with receiving(layer, channels):
        for channel in channels:
            await receivers_waiting(layer, channel)
        await layer.send(MARKER_CHANNEL, {"type": "marker"})  # the raised limit is applied
    await pop_ended(layer, channels[0])
    return channels


async def pop_ended(layer: RedisChannelLayer, channel: str) -> None:
    """Returns once this event loop's inbox reader has no pop in flight: a pop blocked when
    the last receiver left would take the next messages into this loop's buffers, where the
    other loop's receivers never see them."""
    reader = layer._session()._readers[(0, True)]
    reader.wake()  # nobody waits any more: the pop is unblocked
    await reader.settled(layer._core.keys.inbox(inbox_of(channel)))


async def next_tick(layer: RedisChannelLayer) -> None:
    """Returns once this event loop's upkeep ran its inbox limit step again."""
    upkeep = layer._session().upkeep
    publish = upkeep.publish_inbox_limits
    ticked = asyncio.Event()

    def publishing() -> None:
        publish()
        ticked.set()

    upkeep.publish_inbox_limits = publishing  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(ticked.wait(), TICK_TIMEOUT_S)
    finally:
        del upkeep.publish_inbox_limits


async def marked(layer: RedisChannelLayer) -> None:
    """Returns once what this event loop submitted so far is applied (one node, one link)."""
    await layer.send(MARKER_CHANNEL, {"type": "marker"})


async def send_to_each(sender: RedisChannelLayer, channels: list[str]) -> int:
    """``PER_CHANNEL`` messages to each channel at once; how many were refused."""
    sends = [sender.send(c, {"type": "m", "n": n}) for n in range(PER_CHANNEL) for c in channels]
    return refusals(await asyncio.gather(*sends, return_exceptions=True))


async def receive_each(layer: RedisChannelLayer, channels: list[str]) -> None:
    for channel in channels:
        for n in range(PER_CHANNEL):
            message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S)
            assert message == {"type": "m", "n": n}


@dataclass
class TwoLoops:
    """One layer used from two long-lived event loops of a process, and another sending."""

    layer: RedisChannelLayer
    sender: RedisChannelLayer
    many: LoopThread  # the event loop with many channels
    one: LoopThread  # the event loop with few


@pytest.fixture
def two_loops(redis_topology: Topology) -> Iterator[TwoLoops]:
    url, prefix = redis_topology.url, f"test{uuid.uuid4().hex[:10]}"
    layer = RedisChannelLayer(hosts=[url], prefix=prefix, capacity=CAPACITY)
    sender = RedisChannelLayer(hosts=[url], prefix=prefix, capacity=CAPACITY)
    loops = TwoLoops(layer, sender, LoopThread(), LoopThread())
    try:
        yield loops
    finally:
        loops.one.run(layer.close())
        loops.many.run(layer.close())
        loops.many.run(sender.close())
        loops.many.stop()
        loops.one.stop()


@pytest.mark.redis_topologies("standalone")
def test_every_event_loop_of_the_process_counts_in_its_inbox_limit(
    two_loops: TwoLoops, master_client: redis.Redis
) -> None:
    """Two long-lived event loops of one process, one with many channels and one with a
    single channel, receive from one inbox: the limit published is the capacity of both
    loops' channels, whichever loop publishes, so no send below capacity is refused; once a
    loop is closed, its channels no longer count."""
    layer, many, one = two_loops.layer, two_loops.many, two_loops.one
    channels = many.run(received_on(layer, NEW_CHANNELS))
    (single,) = one.run(received_on(layer, 1))
    key = limit_key(layer, single)
    one.run(next_tick(layer))  # (on its own it published 10, the other loop 500: 90 refused)
    one.run(marked(layer))
    published = master_client.get(key)
    refused = many.run(send_to_each(two_loops.sender, channels))
    assert refused == 0, f"{refused} of {PER_CHANNEL * NEW_CHANNELS} refused ({published})"
    many.run(receive_each(layer, channels))
    many.run(layer.close())
    one.run(next_tick(layer))
    one.run(marked(layer))
    assert master_client.get(key) == str(CAPACITY).encode()


@pytest.mark.redis_topologies("standalone")
def test_a_limit_landing_after_a_higher_one_from_another_loop_is_corrected_at_once(
    two_loops: TwoLoops, master_client: redis.Redis
) -> None:
    """Two connections keep no order: a limit that one event loop submitted (held, as its
    writes are during a failover) lands after a higher one that another loop submitted
    later. The current limit goes out again at once, not at the next refresh."""
    layer, many, one = two_loops.layer, two_loops.many, two_loops.one
    few = one.run(held_while_received_on(layer, 2))
    channels = many.run(received_on(layer, NEW_CHANNELS))
    one.run(released(layer, few[0]))
    for _ in range(2):  # what the late limit's reply made it submit precedes the second
        one.run(marked(layer))
    published = master_client.get(limit_key(layer, few[0]))
    refused = many.run(send_to_each(two_loops.sender, channels))
    assert refused == 0, f"{refused} of {PER_CHANNEL * NEW_CHANNELS} refused ({published})"
    many.run(receive_each(layer, channels))


async def held_while_received_on(layer: RedisChannelLayer, count: int) -> list[str]:
    """``count`` new channels received on in this event loop, and then not any more, while
    its writes are held: the raised limit waits on the connection."""
    await marked(layer)  # (connected)
    layer._session()._shards[0].link.hold(RECEIVE_TIMEOUT_S)
    channels = [await layer.new_channel() for _ in range(count)]
    async with receiving(layer, channels):
        for channel in channels:
            await receivers_waiting(layer, channel)
    return channels


async def released(layer: RedisChannelLayer, channel: str) -> None:
    """What this event loop's connection held goes out (its pop's unblocking too)."""
    layer._session()._shards[0].link.release()
    await pop_ended(layer, channel)


# -- a master restarted empty ------------------------------------------------------------------


async def test_a_master_restarted_empty_is_given_the_limit_again_at_once(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A master restarted empty lost the published limit: the process publishes it again as
    it meets the new server run, not at its next refresh, so a burst below capacity to its
    channels is not refused meanwhile."""
    topology = redis_sandbox_factory("standalone")
    receiver = make_layer(topology, capacity=CAPACITY)
    sender = make_layer(topology, prefix=receiver.prefix, capacity=CAPACITY)
    first = await warm_up(receiver, sender)
    channels = [await receiver.new_channel() for _ in range(NEW_CHANNELS)]
    async with receiving(receiver, channels):
        await applied(receiver, first)  # the raised limit, just published: trusted for 7 s
    await topology.nodes[0].arestart_empty()
    for _ in range(2):  # the first reconnects; what meeting the new run sent precedes the second
        await applied(receiver, first)
    refused = await send_to_each(sender, channels)
    assert refused == 0, f"{refused} of {PER_CHANNEL * NEW_CHANNELS} refused after the restart"
    await receive_each(receiver, channels)


# -- flush() and FLUSHALL ----------------------------------------------------------------------


@pytest.mark.parametrize("flusher", ["sender", "receiver"])
async def test_a_flush_keeps_the_inbox_limits(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis, flusher: str
) -> None:
    """flush() deletes messages and groups, not the limits processes published for their
    inboxes, whichever process flushes: each trusts its last publication for seconds, and
    senders went by one channel's capacity until its next refresh, up to 3 s later (89 of
    100 sends below capacity refused with ChannelFull)."""
    receiver = make_layer(redis_topology, capacity=CAPACITY)
    sender = make_layer(redis_topology, prefix=receiver.prefix, capacity=CAPACITY)
    first = await warm_up(receiver, sender)
    channels = [await receiver.new_channel() for _ in range(NEW_CHANNELS)]
    async with receiving(receiver, channels):
        await applied(receiver, first)  # the raised limit, just published: trusted for 7 s
    await (sender if flusher == "sender" else receiver).flush()
    published = master_client.get(limit_key(receiver, first))
    refused = await send_to_each(sender, channels)
    assert refused == 0, f"{refused} of {PER_CHANNEL * NEW_CHANNELS} refused ({published})"
    await receive_each(receiver, channels)


async def test_a_flushall_is_noticed_by_a_process_that_only_receives(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A FLUSHALL deletes the published limits too. A process with channels and nothing
    else (no memberships, no recent sends) notices it at its next epoch check, a second at
    most, and publishes them again, as after a master restarted empty: it skipped the check,
    and senders were refused until its next refresh, up to 3 s later (90 of 100 sends below
    capacity refused two ticks after the FLUSHALL)."""
    topology = redis_sandbox_factory("standalone")
    receiver = make_layer(topology, capacity=CAPACITY)
    sender = make_layer(topology, prefix=receiver.prefix, capacity=CAPACITY)
    channels = [await receiver.new_channel() for _ in range(NEW_CHANNELS)]
    client = topology.nodes[0].client()
    key = limit_key(receiver, channels[0])
    async with receiving(receiver, channels):
        deadline = time.monotonic() + TICK_TIMEOUT_S
        while client.get(key) != str(CAPACITY * NEW_CHANNELS).encode():
            assert time.monotonic() < deadline, "the limit was never published"
            await asyncio.sleep(0.01)  # polling Redis, which has no event for this
    client.flushall()
    for _ in range(2):  # the second tick's epoch check read the master after the FLUSHALL
        await next_tick(receiver)
    await marked(receiver)  # what that check submitted (on the same link) is applied
    published = client.get(key)
    refused = await send_to_each(sender, channels)
    assert refused == 0, f"{refused} of {PER_CHANNEL * NEW_CHANNELS} refused ({published})"
    await receive_each(receiver, channels)


def _set_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_set", {"calls": 0})
    return int(stats["calls"])


@pytest.mark.redis_topologies("standalone")
def test_a_limit_written_late_behind_the_republication_of_a_new_run_is_corrected(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """Two event loops raise the limit while there is no master, and the master comes back
    empty. The first loop to reach it publishes the limits again for the new run, ahead of
    its own older, lower limit that waited for the connection; that one lands after. It is
    corrected at once, not left until the refresh (or until the other loop comes)."""
    topology = redis_sandbox_factory("standalone")
    node, url = topology.nodes[0], topology.url
    layer = RedisChannelLayer(hosts=[url], prefix=f"test{uuid.uuid4().hex[:10]}", capacity=CAPACITY)
    first, busy = LoopThread(), LoopThread()
    client = redis.Redis.from_url(url)
    blocked, unblock = threading.Event(), threading.Event()
    try:
        first.run(marked(layer))
        busy.run(marked(layer))
        node.kill()
        few = first.run(received_on_while_down(layer, 2))
        busy.run(received_on_while_down(layer, NEW_CHANNELS))

        def block() -> None:  # the other event loop busy elsewhere for now
            blocked.set()
            unblock.wait(RECEIVE_TIMEOUT_S)

        busy.loop.call_soon_threadsafe(block)
        assert blocked.wait(RECEIVE_TIMEOUT_S)
        node.restart_empty()
        for _ in range(2):  # the late limit's reply made it submit what precedes the second
            first.run(marked(layer), RECEIVE_TIMEOUT_S)
        published = client.get(limit_key(layer, few[0]))
        assert published == str(CAPACITY * (NEW_CHANNELS + 2)).encode()
    finally:
        unblock.set()
        client.close()
        first.run(layer.close(), RECEIVE_TIMEOUT_S)
        busy.run(layer.close(), RECEIVE_TIMEOUT_S)
        first.stop()
        busy.stop()


async def received_on_while_down(layer: RedisChannelLayer, count: int) -> list[str]:
    """``count`` new channels with buffers (as after their first receive()) while there is
    no master: the raised limit waits for the connection. No receiver waits, so the
    event loop's inbox reader does not connect: its link is the first to meet the new run."""
    deliveries = layer._session().deliveries
    channels = [await layer.new_channel() for _ in range(count)]
    for channel in channels:
        deliveries.buffer(channel)
    await asyncio.sleep(0)  # the raised limit is submitted (at the next loop turn)
    return channels


@pytest.mark.redis_topologies("standalone")
def test_the_channels_of_an_event_loop_closed_without_shutdown_stop_counting(
    two_loops: TwoLoops, master_client: redis.Redis
) -> None:
    """An event loop stopped and closed without its layer closed (``run_until_complete``,
    then ``close()``) leaves its session behind: its channels stop counting at the next
    tick of another loop, instead of being published by it ever after."""
    layer, one = two_loops.layer, two_loops.one
    dead = LoopThread()
    dead.run(received_on(layer, NEW_CHANNELS))
    (single,) = one.run(received_on(layer, 1))
    key = limit_key(layer, single)
    assert master_client.get(key) == str(CAPACITY * (NEW_CHANNELS + 1)).encode()
    dead.stop()
    one.run(next_tick(layer))
    one.run(marked(layer))
    assert master_client.get(key) == str(CAPACITY).encode()
    layer._sessions.pop(dead.loop, None)  # what it left (sockets, tasks) goes now, not later
    del dead
    gc.collect()
