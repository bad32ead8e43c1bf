"""A normal channel's pop whose reply is lost loses nothing, and is not delivered twice.

The normal-channel reader's pops are acknowledged by its next pop; the first pop on a new
connection recovers the batch of the last one. Here a proxy on loopback lets Redis execute a
pop and drops its reply (closing both sides), as a network cut or a master killed after
replicating the pop would.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha.sandbox import (
    RedisNode,
    SentinelTopology,
    StandaloneTopology,
    Topology,
    TopologyFactory,
)

from .conftest import TRAFFIC_CAPACITY, receivers_waiting
from .test_receive_edges import deliver_then

pytestmark = pytest.mark.redis_topologies("standalone")

TIMEOUT_S = 5.0
MARKER = b"carried-by-a-pop"  # in every test message's body: only pop replies carry it
CLOSE_WITH_REDIS_GONE_S = 3.0  # a close() that waited for a master would take 10 s


Connection = tuple[asyncio.StreamWriter, asyncio.StreamWriter]  # a proxied connection's ends


class CuttingProxy:
    """Forwards connections to a node; every ``every``-th reply that carries MARKER (a pop's,
    which Redis executed; ``_cuts`` decides) is dropped instead, after ``hold_s``, and its
    connection closed on both sides. Under Sentinel, the node is the master, and a second
    proxy, of a sentinel, names the first as the master (the master must not change
    meanwhile)."""

    def __init__(
        self,
        topology: Topology,
        every: int = 1,
        cuts: int = 1,
        delay: tuple[bytes, float] = (b"", 0.0),
    ) -> None:
        assert isinstance(topology, (StandaloneTopology, SentinelTopology))
        self._topology = topology
        self._replies = itertools.count(1)
        self._every, self._cuts_left = every, cuts
        self.cut = 0
        self.cut_seen = asyncio.Event()
        # Requests holding delay[0] reach Redis delay[1] seconds late; set once one did.
        self._delayed_request, self._delay_s = delay
        self.delayed = asyncio.Event()
        self._pipes: set[asyncio.Task[None]] = set()
        self.accepted_at: list[float] = []  # when each connection came (time.monotonic())
        self.turn_away = False  # close each new connection at once, as a master gone would
        self.hold_s = 0.0  # a reply to cut is held back this long first: a cut noticed late
        self.passed_bytes = 0  # then this much of it goes through, before a clean close

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """The URL of the proxy, while it runs."""
        topology = self._topology
        if isinstance(topology, StandaloneTopology):
            async with self._listening(topology.node, cutting=True) as port:
                yield f"redis://127.0.0.1:{port}/0"
            return
        master = await topology.acurrent_master()
        async with self._listening(master, cutting=True) as port:
            named = (_port_field(master.port), _port_field(port))  # in SENTINEL MASTER
            async with self._listening(topology.sentinels[0], rewrite=named) as sentinel_port:
                yield f"redis+sentinel://127.0.0.1:{sentinel_port}/{topology.url.rsplit('/', 1)[1]}"

    @asynccontextmanager
    async def _listening(
        self, node: RedisNode, cutting: bool = False, rewrite: tuple[bytes, bytes] = (b"", b"")
    ) -> AsyncIterator[int]:
        """A listener forwarding to ``node``, while it runs: its port."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))

        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            self.accepted_at.append(time.monotonic())
            if self.turn_away:
                client_w.transport.abort()
                return
            server_r, server_w = await asyncio.open_connection(node.host, node.port)
            both = (client_w, server_w)
            for pipe in (
                self._pipe(client_r, server_w, both, cutting=False),
                self._pipe(server_r, client_w, both, cutting=cutting, rewrite=rewrite),
            ):
                task = asyncio.get_running_loop().create_task(pipe)
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)

        server = await asyncio.start_server(handle, sock=listener)
        try:
            yield listener.getsockname()[1]
        finally:
            server.close()
            for task in list(self._pipes):
                task.cancel()
            with suppress(asyncio.CancelledError):
                await asyncio.gather(*self._pipes)
            await server.wait_closed()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        cutting: bool,
        rewrite: tuple[bytes, bytes] = (b"", b""),
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                if not cutting:
                    self._request_seen(data, both)
                if cutting and self._cuts_on(data, both):
                    self.cut += 1
                    self.cut_seen.set()
                    if self.hold_s:  # (else cut in this step, as the _due() callbacks expect)
                        await asyncio.sleep(self.hold_s)  # the hold under test
                    writer.write(data[: self.passed_bytes])  # the part under test (0: none)
                    for side in both:
                        if side is writer and self.passed_bytes:
                            side.close()  # after the part it was given
                        else:
                            side.transport.abort()
                    return
                if rewrite[0]:
                    data = data.replace(*rewrite)  # a sentinel's reply: one read, on loopback
                if not cutting and self._delay_s and self._delayed_request in data:
                    self.delayed.set()
                    await asyncio.sleep(self._delay_s)  # the delay under test
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _request_seen(self, data: bytes, both: Connection) -> None:
        """A request (``data``, one read) on its way to Redis on the connection ``both``."""

    def _cuts_on(self, data: bytes, both: Connection) -> bool:
        """Whether this reply (``data``, one read) on the connection ``both`` is cut."""
        return self._cuts(data)

    def _cuts(self, data: bytes) -> bool:
        """Whether this reply (``data``, one read) is cut: one carrying MARKER, if due."""
        return MARKER in data and self._due()

    def _due(self) -> bool:
        if self._cuts_left and next(self._replies) % self._every == 0:
            self._cuts_left -= 1
            return True
        return False


@asynccontextmanager
async def behind(
    proxy: CuttingProxy, topology: Topology, name: str, **options: Any
) -> AsyncIterator[tuple[RedisChannelLayer, RedisChannelLayer]]:
    """A layer behind ``proxy`` (with ``options``) and another sending straight to the
    server, on one prefix; both closed after."""
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    async with proxy.running() as url:
        first = RedisChannelLayer(hosts=[url], prefix=prefix, **options)
        other = RedisChannelLayer(hosts=[topology.url], prefix=prefix)
        try:
            yield first, other
        finally:
            await first.close()
            await other.close()


def _port_field(port: int) -> bytes:
    """A port as the "port" field of a SENTINEL MASTER reply carries it."""
    return b"$4\r\nport\r\n$%d\r\n%d\r\n" % (len(str(port)), port)


def message(number: int) -> dict[str, object]:
    return {"type": "job", "n": number, "tag": MARKER}


async def nothing_more(layer: RedisChannelLayer, channel: str) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.1)


async def blocked_in_redis(client: redis.Redis, before: int) -> None:
    """Once more clients than ``before`` are blocked (a reader's wait inside Redis)."""
    deadline = time.monotonic() + TIMEOUT_S
    while int(client.info("clients")["blocked_clients"]) <= before:
        assert time.monotonic() < deadline, "the reader never blocked"
        await asyncio.sleep(0.01)  # nothing to await: the wait is inside Redis


async def test_a_pop_reply_lost_while_blocked_is_recovered(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A receiver waits; the message sent then is popped, and the pop's reply is lost with
    its connection: the reader's next connection recovers it, delivered once (seen before:
    lost, Redis had removed it)."""
    proxy = CuttingProxy(redis_topology)
    async with proxy.running() as url:
        layer = RedisChannelLayer(hosts=[url], prefix="cut-blocked")
        try:
            blocked = int(master_client.info("clients")["blocked_clients"])
            receiving = asyncio.create_task(layer.receive("jobs"))
            await blocked_in_redis(master_client, blocked)
            await layer.send("jobs", message(1))
            assert (await asyncio.wait_for(receiving, TIMEOUT_S))["n"] == 1
            await nothing_more(layer, "jobs")
        finally:
            await layer.close()
    assert proxy.cut == 1


async def test_a_pop_reply_lost_for_a_waiting_message_is_recovered(
    redis_topology: Topology,
) -> None:
    """A message waits in its list; the pop that takes it for a receiver loses its reply:
    the message is delivered once all the same."""
    proxy = CuttingProxy(redis_topology)
    async with proxy.running() as url:
        layer = RedisChannelLayer(hosts=[url], prefix="cut-waiting")
        try:
            await layer.send("jobs", message(1))
            assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 1
            await nothing_more(layer, "jobs")
        finally:
            await layer.close()
    assert proxy.cut == 1


def reader_connection(layer: RedisChannelLayer) -> int:
    """The client id of the layer's normal-channel reader."""
    server = layer._session()._readers[(0, False)].connected_to
    assert server is not None
    return server.client_id


async def test_a_batch_received_before_a_cut_is_not_delivered_again(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """Message 1 is received and stays in the reader's in-flight list (nothing popped
    since); the reader's connection is then cut: its next connection recovers 1, and
    recognises it as handed over already."""
    await layer.send("jobs", message(1))
    assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 1
    in_flight = master_client.keys(f"{layer.prefix}:f:*")
    assert len(in_flight) == 1
    assert MARKER in master_client.lrange(in_flight[0], 1, -1)[0]
    master_client.client_kill_filter(_id=reader_connection(layer))
    await layer.send("jobs", message(2))
    assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 2
    await nothing_more(layer, "jobs")
    assert layer.statistics().duplicates_dropped == 0  # not even dropped: never handed over


async def test_a_given_back_message_is_not_delivered_from_the_in_flight_list(
    layer: RedisChannelLayer, master_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message 1 is popped for a receiver cancelled meanwhile, and goes back to its list; the
    in-flight list still holds the popped copy when the reader's connection is cut: 1 is
    delivered once, from its list."""
    session = layer._session()
    real, returned = session.give_back.push_front, asyncio.Event()

    async def push_front(index: int, key: str, elements: list[bytes], return_id: str) -> None:
        await real(index, key, elements, return_id)
        returned.set()

    monkeypatch.setattr(session.give_back, "push_front", push_front)
    await layer.send("jobs", message(1))
    first = asyncio.create_task(layer.receive("jobs"))
    deliver_then(layer, monkeypatch, first.cancel)
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(returned.wait(), TIMEOUT_S)
    assert master_client.keys(f"{layer.prefix}:f:*"), "the popped copy is still in flight"
    master_client.client_kill_filter(_id=reader_connection(layer))
    assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 1
    await nothing_more(layer, "jobs")
    assert layer.statistics().duplicates_dropped == 0


@pytest.mark.redis_topologies("standalone", "sentinel")
async def test_close_deletes_the_in_flight_list(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """The reader's in-flight list holds its last batch until its next pop; closing the
    layer deletes it, all of it handed over (seen before: it stayed until it expired)."""
    await layer.send("jobs", message(1))
    assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 1
    assert master_client.keys(f"{layer.prefix}:f:*")
    await layer.close()
    assert master_client.keys(f"{layer.prefix}:f:*") == []


async def test_close_with_redis_gone_does_not_wait_to_delete_the_in_flight_list(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """Deleting the in-flight list at close, all of it handed over, takes the connection
    still there or none: with Redis gone, close() does not wait failover_timeout for a new
    one (the list expires by itself)."""
    standalone = redis_sandbox_factory("standalone")
    assert isinstance(standalone, StandaloneTopology)
    layer = RedisChannelLayer(hosts=[standalone.url], prefix="gone", failover_timeout=10)
    await layer.send("jobs", message(1))
    assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 1
    standalone.node.kill()
    started = time.monotonic()
    await layer.close()
    assert time.monotonic() - started < CLOSE_WITH_REDIS_GONE_S


# -- a lost pop whose receiver gave up ------------------------------------------------------


@asynccontextmanager
async def a_lost_pop_given_up(
    topology: Topology, master_client: redis.Redis, prefix: str
) -> AsyncIterator[tuple[RedisChannelLayer, RedisChannelLayer]]:
    """Two processes' layers: the first's receiver waited on "jobs" through a proxy that cut
    the reply of the pop taking message 1, and gave up before its reader connected again (a
    cancellation, as asyncio.wait_for's timeout makes). Both closed afterwards."""
    proxy = CuttingProxy(topology)
    async with proxy.running() as url:
        first = RedisChannelLayer(hosts=[url], prefix=prefix)
        other = RedisChannelLayer(hosts=[topology.url], prefix=prefix)
        try:
            blocked = int(master_client.info("clients")["blocked_clients"])
            receiving = asyncio.create_task(first.receive("jobs"))
            await blocked_in_redis(master_client, blocked)
            await other.send("jobs", message(1))
            await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
            yield first, other
        finally:
            await first.close()
            await other.close()
    assert proxy.cut == 1


async def delivered_once(
    first: RedisChannelLayer, other: RedisChannelLayer, first_closed: bool = False
) -> None:
    """Message 1 reaches a receiver in ``other``, and nothing more arrives in either."""
    assert (await asyncio.wait_for(other.receive("jobs"), TIMEOUT_S))["n"] == 1
    await nothing_more(other, "jobs")
    if not first_closed:
        await nothing_more(first, "jobs")
    assert first.statistics().received + other.statistics().received == 1


@pytest.mark.redis_topologies("standalone", "sentinel")
async def test_a_lost_pop_whose_receiver_gave_up_reaches_another_process(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A receiver's pop loses its reply, and the receiver gives up and never waits again:
    its reader connects again and recovers the batch all the same, and gives it back; a
    receiver in another process gets it, once (seen before: it stayed in the reader's
    in-flight list, lost, until the list expired)."""
    prefix = f"gave-up-{uuid.uuid4().hex[:8]}"
    async with a_lost_pop_given_up(redis_topology, master_client, prefix) as (first, other):
        await delivered_once(first, other)
    assert master_client.keys(f"{prefix}:f:*") == []


@pytest.mark.redis_topologies("standalone", "sentinel")
async def test_a_lost_pop_whose_receiver_gave_up_is_given_back_at_close(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """As above, but the receiver's layer is closed at once, before its reader connected
    again: the close recovers the batch and gives it back; another process gets it, once,
    and no in-flight list is left."""
    prefix = f"gave-up-closed-{uuid.uuid4().hex[:8]}"
    async with a_lost_pop_given_up(redis_topology, master_client, prefix) as (first, other):
        await first.close()
        await delivered_once(first, other, first_closed=True)
    assert master_client.keys(f"{prefix}:f:*") == []


async def back_in_list(client: redis.Redis, key: str, count: int) -> None:
    """Once the list holds ``count`` messages (given back: no receiver takes them)."""
    deadline = time.monotonic() + TIMEOUT_S
    while client.llen(key) < count:
        assert time.monotonic() < deadline, f"{key} never held {count} messages"
        await asyncio.sleep(0.01)  # nothing to await: the list is in Redis


@pytest.mark.redis_topologies("standalone", "sentinel")
async def test_a_lost_batch_goes_back_behind_the_messages_given_back_before_it(
    redis_topology: Topology, master_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two receivers wait; message 0 is handed to the first, the pop of 1 for the second
    loses its reply, and both give up: 0 is given back once 1 is recovered, with it, so
    another process gets them in order (seen: 1 recovered after 0 went back, and put in
    front of it)."""
    prefix = f"gave-up-order-{uuid.uuid4().hex[:8]}"
    proxy = CuttingProxy(redis_topology, every=2)
    async with proxy.running() as url:
        first = RedisChannelLayer(hosts=[url], prefix=prefix)
        other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
        try:
            for number in range(2):
                await other.send("jobs", message(number))
            receivers: list[asyncio.Task[dict[str, object]]] = []
            deliver_then(first, monkeypatch, lambda: [task.cancel() for task in receivers])
            receivers += [asyncio.create_task(first.receive("jobs")) for _ in range(2)]
            await asyncio.gather(*receivers, return_exceptions=True)
            await back_in_list(master_client, f"{prefix}:c:{{normal}}:jobs", 2)
            for number in range(2):
                assert (await asyncio.wait_for(other.receive("jobs"), TIMEOUT_S))["n"] == number
            await nothing_more(other, "jobs")
            await nothing_more(first, "jobs")
        finally:
            await first.close()
            await other.close()
    assert proxy.cut == 1


WAIT_DELAY_S = 0.3  # how late the reader's XREAD reaches Redis


@pytest.mark.serial  # times itself within a second or so
async def test_a_wait_that_reaches_redis_after_its_unblock_is_still_ended(
    redis_topology: Topology,
) -> None:
    """A receive on a second normal channel must end the reader's wait on the first: CLIENT
    UNBLOCK, over the command link, can reach Redis before the wait it means, and found
    nothing to end (seen once in CI: the second channel's message came 2 s late, when the
    wait timed out). It is sent again while the wait is unanswered. Here the wait is held
    up on its way."""
    proxy = CuttingProxy(redis_topology, cuts=0, delay=(b"XREAD", WAIT_DELAY_S))
    async with proxy.running() as url:
        layer = RedisChannelLayer(hosts=[url], prefix="late-wait")
        try:
            waiting_a = asyncio.create_task(layer.receive("worker-a"))
            await asyncio.wait_for(proxy.delayed.wait(), TIMEOUT_S)  # the wait on worker-a
            await layer.send("worker-b", message(1))
            started = time.monotonic()
            assert (await asyncio.wait_for(layer.receive("worker-b"), TIMEOUT_S))["n"] == 1
            assert time.monotonic() - started < WAIT_DELAY_S + 0.5
            waiting_a.cancel()
            await asyncio.gather(waiting_a, return_exceptions=True)
        finally:
            await layer.close()


MANY_CHANNELS = 8_100  # past what one Lua call takes as arguments (~8,000)


async def test_receivers_on_thousands_of_normal_channels_get_their_messages(
    layer: RedisChannelLayer,
) -> None:
    """One pop covers every normal channel some receiver of the event loop waits on. The
    first POP_NORMAL passed them all to LMPOP in one Lua call, which Redis refuses past
    ~8,000 arguments ("too many results to unpack"): every normal-channel receiver of the
    loop then failed, where BLMPOP had no such limit."""
    channels = [f"many-{index}" for index in range(MANY_CHANNELS)]
    receiving = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    try:
        await receivers_waiting(layer, channels[-1])
        await layer.send(channels[-1], message(1))
        assert (await asyncio.wait_for(receiving[-1], TIMEOUT_S))["n"] == 1
        assert not any(task.done() for task in receiving[:-1])
    finally:
        for task in receiving:
            task.cancel()
        await asyncio.wait(receiving)


async def test_flush_deletes_wake_streams_and_in_flight_lists(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A normal channel's wake stream and its reader's in-flight list carry the layer's
    prefix: flush() deletes them with the rest (the epoch mark stays)."""
    await layer.send("jobs", message(1))
    assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 1
    kinds = {key.split(b":")[1] for key in master_client.keys(f"{layer.prefix}:*")}
    assert {b"w", b"f"} <= kinds
    await layer.flush()
    assert master_client.keys(f"{layer.prefix}:*") == [f"{layer.prefix}:epoch".encode()]


async def test_competing_readers_losing_replies_deliver_each_message_once(
    redis_topology: Topology,
) -> None:
    """Two processes receive on one normal channel, each through a link that drops every
    fifth pop reply carrying a message: each of 60 messages arrives once, and each process
    gets its share in the order sent."""
    count, prefix = 60, "cut-competing"
    proxies = [CuttingProxy(redis_topology, every=5, cuts=100) for _ in range(2)]
    sender = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
    got: list[list[int]] = [[], []]
    async with proxies[0].running() as first_url, proxies[1].running() as second_url:
        receivers = [RedisChannelLayer(hosts=[u], prefix=prefix) for u in (first_url, second_url)]
        done = asyncio.Event()

        async def consume(layer: RedisChannelLayer, into: list[int]) -> None:
            while True:
                into.append((await layer.receive("jobs"))["n"])
                if sum(map(len, got)) >= count:
                    done.set()

        tasks = [asyncio.create_task(consume(r, g)) for r, g in zip(receivers, got, strict=True)]
        try:
            for layer in receivers:
                await receivers_waiting(layer, "jobs")
            for number in range(count):
                await sender.send("jobs", message(number))
            await asyncio.wait_for(done.wait(), 4 * TIMEOUT_S)
            for layer in receivers:
                await nothing_more(layer, "jobs")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for layer in (*receivers, sender):
                await layer.close()
    assert sorted(itertools.chain(*got)) == list(range(count))
    assert all(share == sorted(share) for share in got), got
    assert all(proxy.cut for proxy in proxies)


# -- a failover ----------------------------------------------------------------------------

# A reply the old master sent before its kill reaches the receiver within this (the
# receiver's event loop may be busy for a moment with the messages around it).
KILL_REPLY_WINDOW_S = 0.5


class Tally:
    """What two competing receivers got, and an event once every number sent is in."""

    def __init__(self) -> None:
        self.got: list[list[int]] = [[], []]
        self.times: dict[int, list[tuple[float, int]]] = {}  # number -> (when, receiver)
        self.sent: list[int] = []
        self.missing: set[int] | None = None  # once sending is over
        self.complete = asyncio.Event()

    def received(self, receiver: int, number: int) -> None:
        self.got[receiver].append(number)
        self.times.setdefault(number, []).append((time.monotonic(), receiver))
        if self.missing is not None:
            self.missing.discard(number)
            if not self.missing:
                self.complete.set()

    def sending_over(self) -> None:
        self.missing = set(self.sent) - set(itertools.chain(*self.got))
        if not self.missing:
            self.complete.set()


async def test_two_receivers_through_a_kill_of_the_master_get_each_message_once(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """Under Sentinel, two processes compete on a normal channel while four senders send and
    the master is killed (kill -9): every message whose send returned arrives, and once,
    except in the one case docs/failover.md names: a pop the old master answered just before
    it died without having replicated it is undone by the failover, and the other process
    may pop the message again from the new master. Whether a pop's reply is lost at the
    kill, or a pop is not replicated, is luck; the promise holds either way."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    options = {"prefix": "kill-competing", "failover_timeout": 20, "capacity": TRAFFIC_CAPACITY}
    sender = RedisChannelLayer(hosts=[sentinel.url], **options)
    receivers = [RedisChannelLayer(hosts=[sentinel.url], **options) for _ in range(2)]
    tally, numbers, kill_at = Tally(), itertools.count(), asyncio.Event()

    async def consume(index: int) -> None:
        while True:
            tally.received(index, (await receivers[index].receive("jobs"))["n"])

    async def send_until(last: int) -> None:
        for number in numbers:
            if number >= last:
                return
            await sender.send("jobs", message(number))
            tally.sent.append(number)
            if len(tally.sent) == 200:
                kill_at.set()  # sends and pops are in flight

    consumers = [asyncio.create_task(consume(index)) for index in range(2)]
    try:
        sending = asyncio.gather(*(send_until(400) for _ in range(4)))
        await asyncio.wait_for(kill_at.wait(), 10)
        old = await sentinel.acurrent_master()
        killed_at = time.monotonic()
        old.kill()
        await sentinel.await_new_master(old)
        await asyncio.wait_for(sending, 30)
        tally.sending_over()
        with suppress(asyncio.TimeoutError):  # a loss is reported below
            await asyncio.wait_for(tally.complete.wait(), 20)
        for layer in receivers:
            await nothing_more(layer, "jobs")
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.wait(consumers)
        for layer in (*receivers, sender):
            await layer.close()
    delivered = Counter(itertools.chain(*tally.got))
    lost = sorted(set(tally.sent) - set(delivered))
    twice = sorted(n for n, times in delivered.items() if times > 1)
    unexplained = [n for n in twice if not _unreplicated_pop(tally.times[n], killed_at)]
    assert (lost, unexplained) == ([], []), f"sent {len(tally.sent)}: lost {lost}, twice {twice}"


def _unreplicated_pop(receipts: list[tuple[float, int]], killed_at: float) -> bool:
    """Whether a message received twice matches the documented case: once by one receiver
    from the old master, as it died, and once by the other, after the failover."""
    (first_at, first), (second_at, second) = sorted(receipts)[:2]
    return (
        len(receipts) == 2
        and first != second
        and first_at < killed_at + KILL_REPLY_WINDOW_S
        and second_at > killed_at
    )
