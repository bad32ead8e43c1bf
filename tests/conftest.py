"""Fixtures shared by the layer tests; the Redis topologies come from the sandbox plugin."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
import redis

from channels_ha import RedisChannelLayer, parse_url
from channels_ha._buffers import ChannelBuffer
from channels_ha._interop import close_sync_client, sync_client
from channels_ha._recovery import watch_epoch
from channels_ha.sandbox import ClusterTopology, RedisNode, SentinelTopology, Topology, Traffic

LayerFactory = Callable[..., RedisChannelLayer]
T = TypeVar("T")


@pytest.fixture
async def make_layer() -> AsyncIterator[LayerFactory]:
    """Builds layers on a topology, each with a prefix of its own; closes them afterwards."""
    created: list[RedisChannelLayer] = []

    def make(topology: Topology, **options: Any) -> RedisChannelLayer:
        options.setdefault("prefix", f"test{uuid.uuid4().hex[:10]}")
        layer = RedisChannelLayer(hosts=[topology.url], **options)
        created.append(layer)
        return layer

    yield make
    for layer in created:
        await layer.close()


@pytest.fixture
def layer(make_layer: LayerFactory, redis_topology: Topology) -> RedisChannelLayer:
    """A layer on the topology this test is parametrized with."""
    return make_layer(redis_topology)


@pytest.fixture
def master_client(redis_topology: Topology) -> Iterator[redis.Redis]:
    """A plain redis-py client on the current master, to look at what the layer stored."""
    client = sync_client(parse_url(redis_topology.url))
    yield client
    close_sync_client(client)


# Sends queue up while a master is replaced (400/s for 2-3 s) and land at once on the new one:
# capacity must hold that backlog, or group_send drops what does not fit (as the spec allows).
TRAFFIC_CAPACITY = 5_000
BEFORE_FAULT, AFTER_FAULT = 100, 200  # messages sent before a fault, and required after it


async def start_traffic(
    topology: Topology, make_layer: LayerFactory, mode: str = "group"
) -> tuple[Traffic, RedisChannelLayer]:
    """Numbered traffic from one layer to two others (stand-ins for other processes), with
    requests in flight at any moment; returns it and the first receiving layer."""
    sender = make_layer(topology, capacity=TRAFFIC_CAPACITY)
    receivers = [
        make_layer(topology, prefix=sender.prefix, capacity=TRAFFIC_CAPACITY) for _ in range(2)
    ]
    traffic = Traffic(
        sender,  # type: ignore[arg-type]
        receivers,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        rate_per_s=400,
        concurrency=8,  # requests are in flight when a fault strikes
    )
    await traffic.start()
    await traffic.wait_sent(BEFORE_FAULT, timeout_s=10)
    return traffic, receivers[0]


async def finish_traffic(traffic: Traffic) -> None:
    """Requires traffic to go on after the fault, then every message exactly once, in order."""
    await traffic.wait_sent(traffic.sent + AFTER_FAULT, timeout_s=40)
    report = await traffic.stop(drain_timeout_s=15)
    print(report.summary())
    details = f"{report.summary()}; lost {report.lost}; twice {report.duplicates}"
    assert report.ok, f"{details}; errors {report.send_errors[:3]} {report.receive_errors[:3]}"
    assert report.reordered == 0, f"{details}; came late: {traffic.reorderings[:5]}"


class LoopThread:
    """An event loop running in a thread of its own, as an ASGI server's does."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return self.submit(coroutine).result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


RECEIVERS_WAIT_TIMEOUT_S = 5.0


async def receivers_waiting(
    layer: RedisChannelLayer, channel: str, receivers: int = 1
) -> ChannelBuffer:
    """The channel's buffer, once ``receivers`` receive() calls wait on it."""
    deliveries = layer._session().deliveries
    deadline = asyncio.get_running_loop().time() + RECEIVERS_WAIT_TIMEOUT_S
    while True:
        buffer = deliveries.buffers.get(channel)
        if buffer is not None and sum(not w.done() for w in buffer.waiters) >= receivers:
            return buffer
        assert asyncio.get_running_loop().time() < deadline, "the receivers never waited"
        await asyncio.sleep(0.01)  # receive() has no hook to await its start


@contextmanager
def nothing_left_open() -> Iterator[None]:
    """No socket more after the block than before it, and no unclosed resource collected."""
    before = _sockets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        left = _sockets() - before
        gc.collect()
    assert not left, f"{len(left)} sockets left open"
    assert [str(w.message) for w in caught] == []


def _sockets() -> set[str]:
    """This process's open sockets, as their inodes."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
        if link.startswith("socket:"):
            found.add(link)
    return found


# Settings under which a master answers ROLE and PING but refuses every write, and the error
# code it refuses them with: out of memory under noeviction, fewer replicas than required.
WRITE_REFUSALS = {
    "oom": ({"maxmemory-policy": "noeviction", "maxmemory": "1"}, "OOM"),
    "noreplicas": ({"min-replicas-to-write": "5"}, "NOREPLICAS"),
}


@contextmanager
def refusing_writes(nodes: Iterable[RedisNode], refusal: str) -> Iterator[str]:
    """``nodes`` refuse writes for ``refusal`` (a key of WRITE_REFUSALS) inside the block,
    their settings restored after; yields the error code the refusals start with."""
    settings, code = WRITE_REFUSALS[refusal]
    clients = [node.client() for node in nodes]
    saved = [{name: client.config_get(name)[name] for name in settings} for client in clients]
    try:
        for client in clients:
            for name, value in settings.items():
                client.config_set(name, value)
        yield code
    finally:
        for client, before in zip(clients, saved, strict=True):
            for name in reversed(list(before)):  # maxmemory back before the policy
                client.config_set(name, before[name])
            client.close()


def masters_of(topology: Topology) -> list[RedisNode]:
    """The masters of ``topology`` now: every one of a cluster's, the one of a Sentinel set."""
    if isinstance(topology, ClusterTopology):
        return topology.masters()
    if isinstance(topology, SentinelTopology):
        return [topology.current_master()]
    return list(topology.nodes)


def user_kept_to_prefix(node: RedisNode, prefix: str = "myapp") -> str:
    """A URL of ``node`` for a user the ACL keeps to the keys under ``prefix`` (a layer's own)."""
    admin = node.client()
    try:
        admin.execute_command("ACL", "SETUSER", "app", "on", ">app-pw", f"~{prefix}:*", "+@all")
    finally:
        admin.close()
    return f"redis://app:app-pw@{node.host}:{node.port}"


async def read_every_epoch(layer: RedisChannelLayer) -> bool:
    """The upkeep's epoch read of every master of the layer's first shard, at once; True if
    one of them lost its data."""
    session = layer._session()
    shard = session._shards[0]
    marks = shard.epoch_keys(session.core.keys)
    seen = session.resync.epochs
    reads = [watch_epoch(session.core, shard, seen, node, key) for node, key in marks]
    return any(await asyncio.gather(*reads))


UPKEEP_WAIT_TIMEOUT_S = 5.0  # a tick comes every second (EPOCH_CHECK_INTERVAL_S)


async def next_upkeep(*layers: RedisChannelLayer) -> None:
    """Each layer's next upkeep tick has run, and the epoch reads it started have ended: a
    loss the tick found has been acted on (its replay and re-assertions are submitted)."""
    await asyncio.gather(*(_next_upkeep(layer) for layer in dict.fromkeys(layers)))


async def _next_upkeep(layer: RedisChannelLayer) -> None:
    session = layer._session()
    upkeep = session.upkeep
    tick = upkeep.tick
    ticked = asyncio.get_running_loop().create_future()

    def tick_and_tell() -> None:
        tick()
        if not ticked.done():
            ticked.set_result(None)

    upkeep.tick = tick_and_tell  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(ticked, UPKEEP_WAIT_TIMEOUT_S)
    finally:
        del upkeep.tick  # the class's again
    reads = set(session.resync.epoch_reads._reads.values())
    if reads:
        await asyncio.wait(reads, timeout=UPKEEP_WAIT_TIMEOUT_S)


async def nothing_more_arrives(
    sender: RedisChannelLayer, receiver: RedisChannelLayer, channel: str
) -> None:
    """No copy of what ``receiver`` got on ``channel`` is on its way, even one written again
    a tick later (waiting 0.1 s for nothing misses that): once both layers' next upkeep has
    run (its epoch check writes again what a master lost), a marker is the next message."""
    await next_upkeep(sender, receiver)
    await marker_is_next(sender, receiver, channel)


async def marker_is_next(
    sender: RedisChannelLayer, receiver: RedisChannelLayer, channel: str
) -> None:
    """Nothing stored for ``channel`` before now is left for ``receiver``: a marker sent now
    is the next message (a list is stored and read in order; ``receiver`` is its one reader)."""
    await sender.send(channel, {"type": "nothing-more"})
    assert await asyncio.wait_for(receiver.receive(channel), 10) == {"type": "nothing-more"}


def run_switching_often(threads: list[threading.Thread], timeout_s: float = 60) -> None:
    """Runs ``threads`` to their end with a thread switch every microsecond, so that a race
    between two steps on shared state shows within a few thousand rounds."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout_s)
    finally:
        sys.setswitchinterval(switch)
