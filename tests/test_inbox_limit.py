"""A process's inbox limit rises as soon as it receives on new channels, not a tick later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
from channels.exceptions import ChannelFull

from channels_ha import RedisChannelLayer
from channels_ha._delivery import inbox_of
from channels_ha._keys import KeyLayout
from channels_ha.sandbox import Topology

from .conftest import LayerFactory

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


def _set_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_set", {"calls": 0})
    return int(stats["calls"])
