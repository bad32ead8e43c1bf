"""The process's inbox handed over from one event loop to the next that receives it: a pop
the last loop left blocked on it, and what that loop holds of it, reach the new loop, first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha._constants import INBOX_HANDOVER_TIMEOUT_S
from channels_ha.sandbox import Topology

from .conftest import LoopThread, receivers_waiting

pytestmark = pytest.mark.redis_topologies("standalone")

RECEIVE_TIMEOUT_S = 5.0  # a stale pop ends in 2 s; what it took never came before the fix


@pytest.fixture
def loop_a() -> Iterator[LoopThread]:
    """The event loop that receives first, as an ASGI server's."""
    thread = LoopThread()
    yield thread
    thread.stop()


def pops_blocked(master: redis.Redis, layer: RedisChannelLayer, pops: int) -> None:
    """Returns once ``pops`` of ``layer``'s blocking pops, no more, wait in Redis."""
    name = layer.client_prefix[:8]
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while True:
        clients = master.client_list()
        blocked = [c for c in clients if name in c["name"] and c["cmd"] == "blmpop"]
        if len([c for c in blocked if "b" in c["flags"]]) == pops:
            return
        assert time.monotonic() < deadline, f"{pops} pop(s) never blocked: {blocked}"
        time.sleep(0.01)  # Redis has no event for a client blocking


def received_in_a(
    topology: Topology, layer: RedisChannelLayer, loop_a: LoopThread, master: redis.Redis
) -> str:
    """Loop A receives one message on a channel of ``layer``'s inbox, and its reader's pop,
    left behind with no receiver in A, blocks on the inbox again. Returns another channel of
    that inbox."""
    first, second = loop_a.run(layer.new_channel()), loop_a.run(layer.new_channel())
    sender = RedisChannelLayer(hosts=[topology.url], prefix=layer.prefix)
    loop_a.run(sender.send(first, {"type": "first"}))
    loop_a.run(sender.close())
    assert loop_a.run(layer.receive(first)) == {"type": "first"}
    pops_blocked(master, layer, 1)
    return second


async def receive_all(layer: RedisChannelLayer, channel: str, count: int) -> list[Any]:
    """Up to ``count`` messages of ``channel``, stopping at the first that does not come."""
    got = []
    for _ in range(count):
        try:
            got.append((await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S))["n"])
        except TimeoutError:
            break
    return got


def received_in_b(layer: RedisChannelLayer, sender: RedisChannelLayer, loop_b: LoopThread) -> None:
    """Loop B receives one message, from another process, on a channel of ``layer``'s
    inbox: its inbox reader is connected, and it popped there."""
    earlier = loop_b.run(layer.new_channel())
    loop_b.run(sender.send(earlier, {"n": -1}))
    assert loop_b.run(receive_all(layer, earlier, 1)) == [-1]


def test_a_loop_starting_to_receive_gets_what_the_last_loop_s_pop_takes(
    redis_topology: Topology, loop_a: LoopThread, master_client: redis.Redis
) -> None:
    """A message sent while loop B starts receiving reaches B, though loop A's pop, left
    blocked on the inbox, was first in line for it (before: it stayed in A's buffer)."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="handover-pop")
    try:
        channel = received_in_a(redis_topology, layer, loop_a, master_client)

        async def in_b() -> list[Any]:
            other_process = RedisChannelLayer(hosts=[redis_topology.url], prefix=layer.prefix)
            receiving = asyncio.create_task(receive_all(layer, channel, 1))
            await receivers_waiting(layer, channel)
            await other_process.send(channel, {"n": 1})
            try:
                return await receiving
            finally:
                await other_process.close()
                await layer.close()

        assert asyncio.run(in_b()) == [1]
        assert not loop_a.run(_buffered(layer))
    finally:
        loop_a.run(layer.close())


async def _buffered(layer: RedisChannelLayer) -> int:
    return layer._session().buffered()


def test_what_the_last_loop_popped_comes_first_in_the_next(
    redis_topology: Topology, loop_a: LoopThread, master_client: redis.Redis
) -> None:
    """A message loop A's left-behind pop took while nobody received comes to loop B before
    the messages sent after it, still in Redis, though B's reader, connected already, could
    pop those at once while A is busy (before: B got those, never the first)."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="handover-order")
    other_process = RedisChannelLayer(hosts=[redis_topology.url], prefix=layer.prefix)
    loop_b = LoopThread()
    try:
        received_in_b(layer, other_process, loop_b)  # B's reader connected
        channel = received_in_a(redis_topology, layer, loop_a, master_client)
        loop_a.run(other_process.send(channel, {"n": 0}))
        assert loop_a.run(_held_by_a(layer, channel)) == 1  # taken by A's pop
        for number in range(1, 50):
            loop_a.run(other_process.send(channel, {"n": number}))
        loop_a.loop.call_soon_threadsafe(time.sleep, 0.3)  # A runs sync code a moment
        assert loop_b.run(receive_all(layer, channel, 50), 50 * RECEIVE_TIMEOUT_S) == list(
            range(50)
        )
    finally:
        loop_a.run(other_process.close())
        loop_b.run(layer.close())
        loop_b.stop()
        loop_a.run(layer.close())


async def _held_by_a(layer: RedisChannelLayer, channel: str) -> int:
    """How many messages of ``channel`` loop A holds, once its pop brought one."""
    buffers = layer._session().deliveries.buffers
    deadline = asyncio.get_running_loop().time() + RECEIVE_TIMEOUT_S
    while not ((buffer := buffers.get(channel)) and buffer.items):
        assert asyncio.get_running_loop().time() < deadline, "A's pop took nothing"
        await asyncio.sleep(0.01)  # a delivery has no hook to await
    return len(buffer.items)


def test_loops_taking_turns_lose_and_duplicate_nothing(
    redis_topology: Topology, loop_a: LoopThread
) -> None:
    """Loops A and B take turns receiving one channel while another process sends to it
    without a pause: every message arrives once, in order (before: some went to the pop
    the other loop left behind, and stayed there)."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="handover-turns")
    sender_loop = LoopThread()
    other_process = RedisChannelLayer(hosts=[redis_topology.url], prefix=layer.prefix)
    total, turn = 600, 50
    try:
        channel = loop_a.run(layer.new_channel())
        sending = sender_loop.submit(_send_all(other_process, channel, total))
        got: list[Any] = []
        for _ in range(total // turn // 2):  # bounded: each turn takes its messages or stops
            got += loop_a.run(receive_all(layer, channel, turn), 2 * turn * RECEIVE_TIMEOUT_S)
            got += asyncio.run(_receive_and_close(layer, channel, turn))
        sending.result(RECEIVE_TIMEOUT_S)
        assert got == list(range(total))
    finally:
        sender_loop.run(other_process.close())
        sender_loop.stop()
        loop_a.run(layer.close())


async def _send_all(layer: RedisChannelLayer, channel: str, count: int) -> None:
    for number in range(count):
        await layer.send(channel, {"n": number})
        await asyncio.sleep(0.002)  # a steady stream across the turns


async def _receive_and_close(layer: RedisChannelLayer, channel: str, count: int) -> list[Any]:
    """Loop B's turn: an ``asyncio.run`` (or async_to_sync) call that receives ``count``."""
    try:
        return await receive_all(layer, channel, count)
    finally:
        await layer.close()


def test_a_loop_receiving_again_and_again_asks_the_other_loop_once(
    redis_topology: Topology, loop_a: LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loop A receiving message after message, with no receiver between two, asks loop B
    (alive, which received before) to hand the inbox over once, not per message: B holds
    nothing of it from then on, until it receives there again."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="handover-once")
    other_process = RedisChannelLayer(hosts=[redis_topology.url], prefix=layer.prefix)
    loop_b = LoopThread()
    try:
        received_in_b(layer, other_process, loop_b)
        give_back_b = layer._sessions[loop_b.loop].give_back
        asked: list[str] = []
        hand_over = give_back_b.hand_over

        def counted(key: str, shard: int, done: Callable[[], None]) -> None:
            asked.append(key)
            hand_over(key, shard, done)

        monkeypatch.setattr(give_back_b, "hand_over", counted)  # a spy: the real one runs
        channel = loop_a.run(layer.new_channel())
        assert loop_a.run(_ping_pong(layer, other_process, channel, 200), 60) == 200
        assert len(asked) == 1
    finally:
        loop_a.run(other_process.close())
        loop_b.run(layer.close())
        loop_b.stop()
        loop_a.run(layer.close())


async def _ping_pong(
    layer: RedisChannelLayer, sender: RedisChannelLayer, channel: str, count: int
) -> int:
    """Sends and receives ``count`` messages one at a time: no receiver waits between two."""
    received = 0
    for number in range(count):
        await sender.send(channel, {"n": number})
        message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S)
        received += message["n"] == number
    return received


BUSY_S = 4.0  # > INBOX_HANDOVER_TIMEOUT_S, < RECEIVE_TIMEOUT_S


@pytest.mark.serial  # times itself within a second
@pytest.mark.parametrize("pop_left", [True, False])
def test_a_loop_busy_in_sync_code_holds_up_receiving_once(
    redis_topology: Topology, loop_a: LoopThread, master_client: redis.Redis, pop_left: bool
) -> None:
    """Loop B, busy in sync code, holds up loop A's receiving once: until it runs again if
    its pop left blocked on the inbox took A's message (which then comes), else for
    INBOX_HANDOVER_TIMEOUT_S; A's receives after that are not held up again."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="handover-busy")
    other_process = RedisChannelLayer(hosts=[redis_topology.url], prefix=layer.prefix)
    loop_b = LoopThread()
    try:
        received_in_b(layer, other_process, loop_b)
        pops_blocked(master_client, layer, 1 if pop_left else 0)  # B's, or its end (2 s)
        loop_b.loop.call_soon_threadsafe(time.sleep, BUSY_S)
        channel = loop_a.run(layer.new_channel())
        started = time.monotonic()
        assert loop_a.run(_ping_pong(layer, other_process, channel, 20), 60) == 20
        took_s = time.monotonic() - started
        held_s = BUSY_S if pop_left else INBOX_HANDOVER_TIMEOUT_S
        assert held_s <= took_s < held_s + 1.0
    finally:
        loop_a.run(other_process.close())
        loop_b.run(layer.close(), 15)
        loop_b.stop()
        loop_a.run(layer.close())


BACKLOG = 60  # per batch; two batches are past the channel's capacity (100) together


def test_a_backlog_handed_over_past_capacity_is_received_whole(
    redis_topology: Topology, loop_a: LoopThread
) -> None:
    """Loop A pops a backlog of 60 and receives one; 60 more are sent; loop B, then A, receive
    the rest. What A handed back and the new ones reach B in one pop, 119 for a channel of
    capacity 100, all of them accepted by Redis: none is dropped (seen: 18 of 120 dropped
    by B's buffer, keeping the newest 100)."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="handover-backlog")
    sender = RedisChannelLayer(hosts=[redis_topology.url], prefix=layer.prefix)
    loop_b = LoopThread()
    try:
        channel = loop_a.run(layer.new_channel())
        for number in range(BACKLOG):
            loop_a.run(sender.send(channel, {"type": "n", "n": number}))
        got = loop_a.run(receive_all(layer, channel, 1))
        for number in range(BACKLOG, 2 * BACKLOG):
            loop_a.run(sender.send(channel, {"type": "n", "n": number}))
        got += loop_b.run(receive_all(layer, channel, 2 * BACKLOG - 1))
        assert got == list(range(2 * BACKLOG))
    finally:
        loop_b.run(layer.close())
        loop_a.run(layer.close())
        loop_a.run(sender.close())
        loop_b.stop()
