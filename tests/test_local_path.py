"""Sends to this process's own channels that skip Redis (``_local_path``): taken only from
the event loop receiving the inbox, never stranding a message, with channels_redis's
semantics (capacity, expiry, FIFO, stats, flush, close)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from channels_ha import RedisChannelLayer
from channels_ha._buffers import now_ms
from channels_ha._codec import encode_element
from channels_ha._delivery import inbox_of
from channels_ha._local_path import Unpopped
from channels_ha.sandbox import SentinelTopology, Topology, TopologyFactory, Traffic

from .conftest import (
    BEFORE_FAULT,
    TRAFFIC_CAPACITY,
    LayerFactory,
    LoopThread,
    finish_traffic,
    receivers_waiting,
    run_switching_often,
)
from .test_normal_reader import Connection, CuttingProxy

pytestmark = pytest.mark.redis_topologies("standalone")

NOTHING_ARRIVES_S = 0.1
ARRIVES_S = 5.0


@pytest.fixture
def asgi_loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


def pushes(client: redis.Redis) -> int:
    """How many scripts (PUSH and every other) the server ran so far."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@asynccontextmanager
async def inbox_received(layer: RedisChannelLayer) -> AsyncIterator[str]:
    """A receive() waiting on a channel of this process's inbox in this event loop (what
    makes it the loop receiving the inbox); yields another channel of that inbox, which
    has a buffer here (it received once)."""
    waiting, other = await layer.new_channel(), await layer.new_channel()
    await layer.send(other, {"type": "first"})
    assert await layer.receive(other) == {"type": "first"}
    receiver = asyncio.create_task(layer.receive(waiting))
    await receivers_waiting(layer, waiting)
    try:
        yield other
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)


async def test_a_send_to_a_waiting_receiver_of_this_loop_skips_redis(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """200 sends to a channel whose receiver waits in the same event loop run no script on
    the server, and arrive in order, counted as sent and received."""
    channel = await layer.new_channel()
    received: list[int] = []

    async def consume() -> None:
        while len(received) < 200:
            received.append((await layer.receive(channel))["n"])

    consumer = asyncio.create_task(consume())
    await receivers_waiting(layer, channel)
    before, stats = pushes(master_client), layer.statistics()
    for number in range(200):
        await layer.send(channel, {"type": "n", "n": number})
    await asyncio.wait_for(consumer, ARRIVES_S)
    assert pushes(master_client) == before
    assert received == list(range(200))
    after = layer.statistics()
    assert (after.sent - stats.sent, after.received - stats.received) == (200, 200)


def test_a_send_from_another_event_loop_goes_through_redis(
    redis_topology: Topology, asgi_loop: LoopThread
) -> None:
    """A send from an async_to_sync call to a channel the ASGI loop receives on reaches it:
    the call's own event loop, which receives nothing, does not keep it."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="local-other-loop")
    try:
        channel = asgi_loop.run(layer.new_channel())
        waiting = asgi_loop.submit(layer.receive(channel))
        _await_inbox_receiver(layer, asgi_loop)
        async_to_sync(layer.send)(channel, {"type": "from.a.view"})
        assert waiting.result(ARRIVES_S) == {"type": "from.a.view"}
    finally:
        asgi_loop.run(layer.flush())
        asgi_loop.run(layer.close())


def test_a_send_before_any_receive_reaches_the_loop_that_receives(
    redis_topology: Topology, asgi_loop: LoopThread
) -> None:
    """A send made before any receive() (its loop receives nothing yet) reaches a receive()
    in another event loop."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="local-before-receive")
    try:
        channel = asgi_loop.run(layer.new_channel())
        asgi_loop.run(layer.send(channel, {"type": "early"}))
        assert async_to_sync(_receive_within)(layer, channel) == {"type": "early"}
    finally:
        asgi_loop.run(layer.flush())
        asgi_loop.run(layer.close())


def test_a_loop_that_stopped_receiving_sends_through_redis(
    redis_topology: Topology, asgi_loop: LoopThread, master_client: redis.Redis
) -> None:
    """An event loop that received on a channel before (it still has its buffer) but waits
    on none now sends through Redis: the next receive() may be another loop's."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="local-stopped")
    try:
        channel = asgi_loop.run(layer.new_channel())
        asgi_loop.run(layer.send(channel, {"type": "one"}))
        assert asgi_loop.run(layer.receive(channel)) == {"type": "one"}
        _await_no_inbox_receiver(layer, asgi_loop)
        assert channel in layer._sessions[asgi_loop.loop].deliveries.buffers
        before = pushes(master_client)
        asgi_loop.run(layer.send(channel, {"type": "two"}))
        assert pushes(master_client) == before + 1
    finally:
        asgi_loop.run(layer.flush())
        asgi_loop.run(layer.close())


async def _receive_within(layer: RedisChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), ARRIVES_S)


def _await_inbox_receiver(layer: RedisChannelLayer, loop: LoopThread) -> None:
    deadline = time.monotonic() + ARRIVES_S
    while not ((s := layer._sessions.get(loop.loop)) and s.deliveries.receiving_inbox()):
        assert time.monotonic() < deadline, "the consumer never waited"
        time.sleep(0.01)  # receive() has no hook to await its start


def _await_no_inbox_receiver(layer: RedisChannelLayer, loop: LoopThread) -> None:
    """Once the receiver that got its message has left (it leaves on resuming)."""
    deadline = time.monotonic() + ARRIVES_S
    while layer._sessions[loop.loop].deliveries.receiving_inbox():
        assert time.monotonic() < deadline, "the receiver never left"
        time.sleep(0.01)  # leave() has no hook either


async def test_a_channel_at_capacity_refuses_a_local_send(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A channel holding its capacity (channel_capacity's) in the buffer raises ChannelFull
    for a local send; what it holds is received in order."""
    layer = make_layer(redis_topology, capacity=50, channel_capacity={"specific.*": 3})
    async with inbox_received(layer) as channel:
        for number in range(3):
            await layer.send(channel, {"type": "n", "n": number})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "n", "n": 3})
        assert [(await layer.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]


async def test_an_expired_local_message_is_never_delivered(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A message sent locally and not received within expiry is dropped, counted expired."""
    layer = make_layer(redis_topology, expiry=0.2)
    async with inbox_received(layer) as channel:
        await layer.send(channel, {"type": "stale"})
        expired = layer.statistics().expired
        await asyncio.sleep(0.3)  # the expiry, not a synchronisation
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), NOTHING_ARRIVES_S)
        assert layer.statistics().expired == expired + 1


async def test_flush_empties_local_messages(layer: RedisChannelLayer) -> None:
    """flush() deletes what was sent locally and not received yet."""
    async with inbox_received(layer) as channel:
        await layer.send(channel, {"type": "flushed"})
        await layer.flush()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), NOTHING_ARRIVES_S)


def test_close_gives_local_messages_back(redis_topology: Topology, asgi_loop: LoopThread) -> None:
    """close() returns what was sent locally and not received to the inbox, where the next
    event loop receiving finds it, in order."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="local-close")
    try:

        async def send_locally() -> str:
            async with inbox_received(layer) as channel:
                for number in range(3):
                    await layer.send(channel, {"type": "n", "n": number})
                assert len(layer._session().deliveries.buffers[channel].items) == 3
            return channel

        channel = asgi_loop.run(send_locally())
        asgi_loop.run(layer.close())
        received = [async_to_sync(_receive_within)(layer, channel)["n"] for _ in range(3)]
        assert received == [0, 1, 2]
    finally:
        async_to_sync(layer.flush)()


async def test_group_send_and_send_alternating_keep_their_order(
    layer: RedisChannelLayer,
) -> None:
    """One task alternating group_send and send to its own channel 1,000 times: the copy of
    each group_send, which goes through Redis, is not overtaken by the next send."""
    channel = await layer.new_channel()
    await layer.group_add("mixed", channel)
    received: list[int] = []

    async def consume() -> None:
        while len(received) < 2_000:
            received.append((await layer.receive(channel))["n"])

    consumer = asyncio.create_task(consume())
    await receivers_waiting(layer, channel)
    for number in range(0, 2_000, 2):
        await layer.group_send("mixed", {"type": "n", "n": number})
        await layer.send(channel, {"type": "n", "n": number + 1})
    await asyncio.wait_for(consumer, 30)
    assert received == list(range(2_000))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), NOTHING_ARRIVES_S)


async def test_a_local_send_does_not_overtake_an_earlier_one_still_in_redis(
    layer: RedisChannelLayer,
) -> None:
    """A message sent through Redis and not delivered yet (its pop's reply held back, as a
    slow network would) is not overtaken by the next send, made once this loop receives the
    inbox: the two are received in order."""
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "n", "n": -1})
    assert (await layer.receive(channel))["n"] == -1  # its buffer, here from now on
    deliveries = layer._session().deliveries
    deliver = deliveries.deliver
    held: list[tuple[str, list[bytes]]] = []

    def hold(key: str, elements: list[bytes]) -> set[str]:
        held.append((key, elements))  # the reply of the pop, still on its way
        return set()

    deliveries.deliver = hold  # type: ignore[method-assign]
    await layer.send(channel, {"type": "n", "n": 0})  # nobody waits here: through Redis
    other = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(other))
    await receivers_waiting(layer, other)  # this loop receives the inbox from now on
    await layer.send(channel, {"type": "n", "n": 1})
    deliveries.deliver = deliver  # type: ignore[method-assign]
    for key, elements in held:
        deliver(key, elements)
    received = [(await layer.receive(channel))["n"] for _ in range(2)]
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert received == [0, 1]


async def test_mixed_sends_to_own_channels_through_a_master_kill(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """One task alternating group_send and send to channels of its own layer (the sends
    skip Redis, the group's copies do not) while the Sentinel master is killed: nothing
    raised, lost or twice, and every channel receives in the order sent."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    layer = make_layer(sentinel, capacity=TRAFFIC_CAPACITY)
    traffic = Traffic(layer, [layer], mode="mixed", rate_per_s=400, concurrency=1)
    await traffic.start()
    await traffic.wait_sent(BEFORE_FAULT, timeout_s=10)
    old = await sentinel.acurrent_master()
    old.kill()
    await sentinel.await_new_master(old)
    await finish_traffic(traffic)


async def test_sends_to_an_inbox_nobody_pops_are_not_remembered_past_their_expiry(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """What the process notes of its messages in its own inbox (so that no local send
    overtakes them) forgets the expired ones when nobody pops that inbox."""
    layer = make_layer(redis_topology, expiry=0.2, capacity=1_000)
    channel = await layer.new_channel()
    for number in range(300):
        await layer.send(channel, {"type": "n", "n": number})
    await asyncio.sleep(0.3)  # the expiry, not a synchronisation
    for number in range(300):
        await layer.send(channel, {"type": "n", "n": number})
    (noted,) = [len(ids) for ids in layer._core.unpopped.by_key.values()]
    assert noted <= 300


async def test_expired_local_messages_take_no_room(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A channel whose buffered messages all expired takes a local send, as channels_redis
    drops the expired before it counts (it raised ChannelFull until the sweep)."""
    layer = make_layer(redis_topology, expiry=0.2, channel_capacity={"specific.*": 3})
    async with inbox_received(layer) as channel:
        for number in range(3):
            await layer.send(channel, {"type": "n", "n": number})
        expired = layer.statistics().expired
        await asyncio.sleep(0.3)  # the expiry, not a synchronisation
        await layer.send(channel, {"type": "n", "n": 3})
        assert (await layer.receive(channel))["n"] == 3
        assert layer.statistics().expired == expired + 3


async def test_a_send_that_cannot_be_encoded_leaves_the_local_path_open(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A send through Redis that fails before anything is written (a value msgpack cannot
    encode) leaves no note of a message in Redis: the next local send stays local."""
    channel = await layer.new_channel()
    with pytest.raises(TypeError):  # nobody receives yet: it would go through Redis
        await layer.send(channel, {"type": "n", "when": datetime.datetime.now()})
    async with inbox_received(layer) as other:
        before = pushes(master_client)
        await layer.send(other, {"type": "local"})
        assert await layer.receive(other) == {"type": "local"}
        assert pushes(master_client) == before


async def test_group_copies_refused_full_leave_the_local_path_open(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """The copies a full inbox refused to group_send were not stored: once the inbox is
    drained, sends from the loop receiving it are local again (they went through Redis
    until the refused copies would have expired)."""
    layer = make_layer(redis_topology, capacity=5)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    for number in range(5):  # fills the inbox: nobody pops it
        await layer.send(channel, {"type": "n", "n": number})
    for number in range(5, 25):  # every copy refused
        await layer.group_send("room", {"type": "n", "n": number})
    assert [(await layer.receive(channel))["n"] for _ in range(5)] == list(range(5))
    async with inbox_received(layer) as other:
        before = pushes(master_client)
        await layer.send(other, {"type": "local"})
        assert await layer.receive(other) == {"type": "local"}
        assert pushes(master_client) == before


FLUSHING_FOR_S = 3.0


async def test_a_flush_meanwhile_does_not_let_a_local_send_overtake(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """One task sends 0, 1, 2... to its own channel while its receiver comes and goes (so
    sends alternate between Redis and the local path) and another task flushes every few
    ms: what arrives only grows. A send through Redis that lands after a flush survives it,
    and a local send must still wait for its pop (seen, when flush() forgot what was in
    Redis: 1,376 of 143,868 out of order in 15 s)."""
    layer = make_layer(redis_topology, capacity=100_000)
    channel = await layer.new_channel()
    chance = random.Random(7)
    got: list[int] = []
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            try:
                waiting_s = chance.choice([0.0005, 0.003, 0.02])
                got.append((await asyncio.wait_for(layer.receive(channel), waiting_s))["n"])
            except asyncio.TimeoutError:
                await asyncio.sleep(chance.choice([0, 0.001, 0.005]))  # away a while

    async def flush() -> None:
        while not stop.is_set():
            await layer.flush()
            await asyncio.sleep(chance.random() * 0.005)

    tasks = [asyncio.create_task(consume()), asyncio.create_task(flush())]
    try:
        number, ends = 0, time.monotonic() + FLUSHING_FOR_S
        while time.monotonic() < ends:
            await layer.send(channel, {"type": "n", "n": number})
            number += 1
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert len(got) > 100, f"{len(got)} of {number} received"
    overtaken = [(a, b) for a, b in itertools.pairwise(got) if b < a]
    assert overtaken == [], f"{len(overtaken)} of {len(got)} out of order"


def test_notes_taken_by_several_threads_at_once_stay_consistent() -> None:
    """The notes of messages in an inbox are added and popped by some threads (each event
    loop's sends and reader) while others ask whether any is left (local sends): with a
    thread switch every microsecond, asking never raises (StopIteration escaped when another
    thread took the last one between the check and the look), and what was added and popped
    leaves none."""
    unpopped = Unpopped()
    errors: list[BaseException] = []
    adding = threading.Event()
    adding.set()
    expires = now_ms() + 60_000

    def add_and_pop(sender: str) -> None:
        try:
            for seq in range(50_000):
                unpopped.add("inbox", sender, seq, expires)
                unpopped.discard("inbox", sender, seq)
        finally:
            adding.clear()

    def ask() -> None:
        try:
            for _ in range(10_000_000):  # bounded; ends with the adding
                if not adding.is_set():
                    return
                unpopped.any_left("inbox")
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    asking = [threading.Thread(target=ask) for _ in range(2)]
    run_switching_often([threading.Thread(target=add_and_pop, args=("sender",)), *asking])
    assert errors == []
    assert not unpopped.any_left("inbox")


class PushReplyCutter(CuttingProxy):
    """Cuts the reply to the first request carrying ``marker`` (Redis executed it), once
    ``before_cut`` has run, closing that connection on both sides: the layer reconnects
    and writes the request again, whose reply passes."""

    def __init__(self, topology: Topology, marker: bytes, before_cut: Callable[[], None]) -> None:
        super().__init__(topology, cuts=0)
        self._marker, self._before_cut = marker, before_cut
        self._armed: set[Connection] = set()

    def _request_seen(self, data: bytes, both: Connection) -> None:
        if not self.cut and self._marker in data:
            self._armed.add(both)  # the next reply on this connection is its

    def _cuts_on(self, data: bytes, both: Connection) -> bool:
        if both not in self._armed or self.cut:
            return False
        self._before_cut()
        return True


async def _no_pop_pending(layer: RedisChannelLayer, client: redis.Redis, inbox: str) -> None:
    """Once the inbox reader has no pop in flight (one may stay blocked on the empty inbox
    after the last receive() returned): an expired element ends it."""
    pending = layer._session()._readers[(0, True)]._pending
    if pending is not None and not pending.done():
        client.rpush(inbox, encode_element(now_ms() - 1, "test", 1, inbox_of(inbox), b""))
        await asyncio.wait({pending}, timeout=ARRIVES_S)
    assert client.llen(inbox) == 0


@pytest.mark.parametrize("first", ["send", "group_send"])
async def test_a_send_refused_full_on_its_write_again_still_holds_back_local_sends(
    redis_topology: Topology, master_client: redis.Redis, first: str
) -> None:
    """A send (or group_send) whose PUSH reply is lost (cut with its connection) after Redis
    stored it, and whose write again after the reconnect finds the inbox filled meanwhile by
    300-odd newer entries (past the 256 the script searches for a copy), is refused there
    (send: ChannelFull); the next send, from the loop receiving the inbox, still does not
    overtake it (seen: [2, 1], when the refusal of the write again let the local path open)."""

    def fill_inbox() -> None:  # other processes, while the reply is on its way
        limit = int(master_client.get(layer._core.keys.inbox_limit(target)) or 0)
        body, expires = layer._core.codec.dumps({"type": "filler"}), now_ms() + 60_000
        pipe = master_client.pipeline()
        for seq in range(300 + max(limit, 10)):
            pipe.rpush(inbox, encode_element(expires, "other", seq, target + "filler", body))
        pipe.execute()

    proxy = PushReplyCutter(redis_topology, b"cut-its-reply", fill_inbox)
    async with proxy.running() as url:
        layer = RedisChannelLayer(hosts=[url], prefix="full-retry", capacity=10)
        channel = await layer.new_channel()
        target = inbox_of(channel)
        inbox = layer._core.keys.inbox(target)
        try:
            for _ in range(2):  # one stays buffered: the channel's buffer is kept here
                await layer.send(channel, {"type": "warm"})
            assert (await layer.receive(channel))["type"] == "warm"
            await _no_pop_pending(layer, master_client, inbox)
            marked = {"type": "n", "n": 1, "mark": "cut-its-reply"}
            if first == "send":
                with pytest.raises(ChannelFull):
                    await layer.send(channel, marked)
            else:  # (a group_send skips a full target, as the spec says)
                await layer.group_add("room", channel)
                await layer.group_send("room", marked)
            assert proxy.cut == 1
            master_client.ltrim(inbox, 0, 0)  # the fillers go: message 1 stays first
            received = await _send_2_while_receiving_the_inbox(layer, channel)
        finally:
            await layer.flush()
            await layer.close()
    assert received == ["warm", 1, 2]


async def _send_2_while_receiving_the_inbox(layer: RedisChannelLayer, channel: str) -> list[Any]:
    """Message 2 sent to ``channel`` once a receive() on another channel of its inbox waits
    in this loop; what ``channel`` then receives, three messages."""
    other = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(other))
    await asyncio.sleep(0)  # it starts waiting (a receive() has no hook to await)
    assert layer._session().deliveries.receiving_inbox()
    await layer.send(channel, {"type": "n", "n": 2})
    received = [await asyncio.wait_for(layer.receive(channel), ARRIVES_S) for _ in range(3)]
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    return [message.get("n", message["type"]) for message in received]
