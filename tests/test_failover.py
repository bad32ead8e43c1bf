"""Riding through failures: no exception, no loss, no duplicate, groups kept.

Every test starts a fresh topology (they break it), runs numbered traffic from one layer to
channels of two other layers (stand-ins for other ASGI processes), injects a real fault, and
checks that every message whose send returned arrived exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from asgiref.sync import async_to_sync

from channels_ha import RedisChannelLayer, RedisUnavailable, parse_url
from channels_ha._constants import SENTINEL_WATCH_DELAY_S
from channels_ha._interop import close_sync_client, sync_client
from channels_ha._keys import KeyLayout
from channels_ha.sandbox import RedisNode, SentinelTopology, Topology, TopologyFactory

from .conftest import (
    LayerFactory,
    finish_traffic,
    nothing_more_arrives,
    receivers_waiting,
    start_traffic,
)

Fault = Callable[[], Awaitable[None]]


async def run_through(
    fault: Fault, topology: Topology, make_layer: LayerFactory, mode: str = "group"
) -> None:
    traffic, _ = await start_traffic(topology, make_layer, mode)
    await fault()
    await finish_traffic(traffic)


def kill_master(sentinel: SentinelTopology) -> Fault:
    async def fault() -> None:
        old = await sentinel.acurrent_master()
        old.kill()
        await sentinel.await_new_master(old)

    return fault


def freeze_master(sentinel: SentinelTopology) -> Fault:
    async def fault() -> None:
        old = await sentinel.acurrent_master()
        old.pause()
        await sentinel.await_new_master(old)
        old.resume()

    return fault


def hand_over(sentinel: SentinelTopology) -> Fault:
    async def fault() -> None:
        old = await sentinel.acurrent_master()
        await sentinel.afailover()
        await sentinel.await_new_master(old)

    return fault


def restart_master_empty(sentinel: SentinelTopology) -> Fault:
    async def fault() -> None:
        await (await sentinel.acurrent_master()).arestart_empty()

    return fault


SENTINEL_FAULTS = {
    "kill": kill_master,
    "sigstop": freeze_master,
    "sentinel-failover": hand_over,
    "restart-empty": restart_master_empty,
}


@pytest.mark.parametrize("mode", ["group", "send"])
@pytest.mark.parametrize("fault_name", list(SENTINEL_FAULTS))
async def test_sentinel_faults(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory, fault_name: str, mode: str
) -> None:
    """Through each Sentinel fault, sends and receives raise nothing and lose nothing."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    await run_through(SENTINEL_FAULTS[fault_name](sentinel), sentinel, make_layer, mode)


@pytest.mark.parametrize("kind", ["standalone", "tls"])
async def test_single_node_restarted_empty(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory, kind: str
) -> None:
    """A single node restarted empty (also over TLS) costs no message and no error."""
    topology = redis_sandbox_factory(kind)

    async def fault() -> None:
        await topology.nodes[0].arestart_empty()

    await run_through(fault, topology, make_layer)


async def test_memberships_reasserted_after_restart_empty(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Group memberships of live channels are back in Redis after a restart empty."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology)
    channels = [await layer.new_channel() for _ in range(3)]
    receivers = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    for channel in channels:
        await layer.group_add("kept", channel)
    await topology.nodes[0].arestart_empty()
    client = sync_client(parse_url(topology.url))
    try:
        deadline = time.monotonic() + 10
        key = KeyLayout(layer.prefix).group("kept")
        while len(client.zrange(key, 0, -1)) < 3:
            assert time.monotonic() < deadline, "memberships were not re-asserted in 10 s"
            await asyncio.sleep(0.05)  # polling Redis, which has no event for this
    finally:
        close_sync_client(client)
    await layer.group_send("kept", {"type": "after.restart"})
    for task in receivers:
        assert (await asyncio.wait_for(task, 5))["type"] == "after.restart"


async def test_live_memberships_are_refreshed(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A channel still being received on never falls out of its group at group_expiry."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology, group_expiry=2)
    live = await layer.new_channel()
    receiving = asyncio.create_task(layer.receive(live))
    await layer.group_add("refreshed", live)
    await layer.group_add("refreshed", "idle-channel")
    await asyncio.sleep(3)  # the behaviour under test is the passage of group_expiry
    await layer.group_send("refreshed", {"type": "still.here"})
    assert (await asyncio.wait_for(receiving, 5))["type"] == "still.here"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive("idle-channel"), 0.1)


_LONG_SCRIPT = """
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local stop = now() + tonumber(ARGV[1]) * 1000
while now() < stop do end
return 1
"""


async def test_a_server_busy_with_a_long_script_is_waited_for(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A script running past busy-reply-threshold makes Redis answer BUSY to everyone else
    until it ends: send() waits for that, as for a failover, instead of raising."""
    topology = redis_sandbox_factory("standalone")
    node = topology.nodes[0]
    layer = make_layer(topology)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "before"})
    assert await layer.receive(channel) == {"type": "before"}
    admin, runner = node.client(), node.client()
    try:
        admin.config_set("busy-reply-threshold", 100)
        script = asyncio.create_task(asyncio.to_thread(runner.eval, _LONG_SCRIPT, 0, 1500))
        deadline = time.monotonic() + 5
        while not _answers_busy(admin):  # nothing announces the busy state: PING until BUSY
            assert time.monotonic() < deadline, "the script never made the server busy"
            await asyncio.sleep(0.02)
        waiting = asyncio.create_task(layer.receive(channel))
        await layer.send(channel, {"type": "during"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "during"}
        assert await script == 1
    finally:
        admin.close()
        runner.close()


def _answers_busy(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.ResponseError as err:
        return str(err).startswith("BUSY")
    return False


@pytest.mark.serial  # times itself within a second or so
async def test_gives_up_after_failover_timeout(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """Past failover_timeout without a master, send and receive raise RedisUnavailable."""
    topology = redis_sandbox_factory("standalone")
    layer = RedisChannelLayer(hosts=[topology.url], failover_timeout=1)
    try:
        channel = await layer.new_channel()
        receiving = asyncio.create_task(layer.receive(channel))
        await layer.send("before", {"type": "ok"})
        topology.nodes[0].kill()
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=r"failover_timeout.*single node tcp://"):
            await layer.send("after", {"type": "lost"})
        assert 0.9 < time.monotonic() - started < 5
        with pytest.raises(RedisUnavailable):
            await asyncio.wait_for(receiving, 10)
    finally:
        await layer.close()


async def test_a_receiver_that_gave_up_keeps_its_groups(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A receive() that raised RedisUnavailable leaves its channel live (its consumer may well
    receive again): when Redis comes back empty, the channel's memberships are re-asserted."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology, failover_timeout=1)
    channel = await layer.new_channel()
    await layer.group_add("kept", channel)
    receiving = asyncio.create_task(layer.receive(channel))
    node = topology.nodes[0]
    node.kill()
    with pytest.raises(RedisUnavailable):
        await asyncio.wait_for(receiving, 10)
    await node.arestart_empty()
    client = sync_client(parse_url(topology.url))
    try:
        deadline = time.monotonic() + 10
        key = KeyLayout(layer.prefix).group("kept")
        while client.zrange(key, 0, -1) != [channel.encode()]:
            assert time.monotonic() < deadline, "the membership was not re-asserted in 10 s"
            await asyncio.sleep(0.05)  # polling Redis, which has no event for this
    finally:
        close_sync_client(client)


async def test_waits_for_a_node_that_comes_back(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A send issued while the only node is down completes once it is back."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology)
    await layer.send("warm-up", {"type": "x"})
    node = topology.nodes[0]
    node.kill()
    sending = asyncio.create_task(layer.send("queued", {"type": "waited"}))
    await asyncio.sleep(0.5)  # the send must be waiting while the node is down
    assert not sending.done()
    await node.arestart_empty()
    await asyncio.wait_for(sending, 10)
    assert (await layer.receive("queued"))["type"] == "waited"


async def test_a_blocking_pop_without_reply_is_given_up(
    redis_sandbox_factory: TopologyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen server never answers the reader's BLMPOP: past its limit (the pop's own
    2 s plus socket_timeout) the reader drops the connection, and once the server is back
    the receiver gets the next message, once."""
    topology = redis_sandbox_factory("standalone")
    layer = RedisChannelLayer(hosts=[f"{topology.url}?socket_timeout=1"], prefix="watchdog")
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "warm-up"})
        assert (await layer.receive(channel))["type"] == "warm-up"
        receiving = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(0.2)  # let the reader block on the server before it freezes
        caplog.set_level("INFO", logger="channels_ha")
        node = topology.nodes[0]
        node.pause()
        try:
            deadline = time.monotonic() + 10
            while "no reply to a blocking pop" not in caplog.text:
                assert time.monotonic() < deadline, "the stuck pop was never given up"
                await asyncio.sleep(0.1)
        finally:
            node.resume()
        await layer.send(channel, {"type": "after"})
        assert (await asyncio.wait_for(receiving, 10))["type"] == "after"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.3)
    finally:
        await layer.close()


@pytest.mark.parametrize("mode", ["send", "group_send"])
async def test_messages_a_restarted_master_forgot_are_written_again(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory, mode: str
) -> None:
    """Messages stored but not yet received when the only node restarted empty still arrive,
    once each and in order: the sender writes its last seconds again (group messages
    without the membership check they were sent with: the group is gone with the data)."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology)
    receiver = make_layer(topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    await receiver.group_add("forgotten", channel)
    for number in range(5):
        if mode == "send":
            await sender.send(channel, {"type": "n", "n": number})
        else:
            await sender.group_send("forgotten", {"type": "n", "n": number})
    await topology.nodes[0].arestart_empty()
    received = [(await asyncio.wait_for(receiver.receive(channel), 10))["n"] for _ in range(5)]
    assert received == list(range(5))
    await nothing_more_arrives(sender, receiver, channel)


async def test_flushed_messages_are_not_written_again(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """flush() also forgets the recent writes kept for replay: a master restarted empty right
    after must not get back what the application deleted."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "flushed"})
    await layer.flush()
    await topology.nodes[0].arestart_empty()
    await layer.send(channel, {"type": "after"})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "after"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.5)


REPLAY_EXPIRY_S = 2
REPLAY_MEMBERS = 50


async def test_writes_kept_for_replay_are_dropped_once_their_messages_expired(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Seen: a process that went idle kept its last writes for good (20 group_sends of
    10 KB to 200 members: 42 MB), dropped only by a newer write. Writing a message again
    after it expired brings back nothing, so the upkeep's sweeps drop the writes then, and
    not before: until the expiry, an outage may still end with their server run gone."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology, expiry=REPLAY_EXPIRY_S)
    layer._core.sweep_interval_s = 0.1  # many sweeps before the expiry, none may drop them
    for number in range(REPLAY_MEMBERS):  # consumers of other processes, one inbox each
        await layer.group_add("big", f"specific.other{number}!consumer")
    before = time.monotonic()
    await layer.group_send("big", {"type": "burst", "body": "x" * 1_000})
    recent = layer._core.recent[0]
    assert len(recent.requests()) == 1
    # The expiry passing, and the upkeep ticking (every second), are what is under test.
    for _ in range(int((REPLAY_EXPIRY_S + 5) / 0.1)):
        if not recent.requests():
            break
        await asyncio.sleep(0.1)
    assert not recent.requests(), "kept after its messages expired"
    assert time.monotonic() - before > REPLAY_EXPIRY_S


async def replicas_caught_up(
    master: RedisNode, replicas: list[RedisNode], timeout_s: float = 5.0
) -> None:
    """Waits until every replica has applied the master's whole replication stream (a kill
    right after a write otherwise races the asynchronous replication)."""
    clients = [node.client() for node in (master, *replicas)]
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            offset = clients[0].info("replication")["master_repl_offset"]
            applied = [c.info("replication").get("slave_repl_offset", -1) for c in clients[1:]]
            if min(applied) >= offset:
                return
            assert time.monotonic() < deadline, f"replicas at {applied}, master at {offset}"
            await asyncio.sleep(0.01)  # nothing to await: replication progress is polled
    finally:
        for client in clients:
            client.close()


async def test_written_again_after_failover_but_received_once(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """After a failover the sender writes its last seconds again; what the new master already
    had arrives once (the copies are recognised and dropped)."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    sender = make_layer(sentinel)
    receiver = make_layer(sentinel, prefix=sender.prefix)
    channel = await receiver.new_channel()
    for number in range(5):
        await sender.send(channel, {"type": "n", "n": number})
    old = await sentinel.acurrent_master()
    # What this test is about is copies: the promoted replica must already hold 0-4, or the
    # sender's replay would deliver them for the first time instead of as copies.
    await replicas_caught_up(old, [node for node in sentinel.data_nodes if node is not old])
    old.kill()
    await sentinel.await_new_master(old)
    await sender.send(channel, {"type": "n", "n": 5})  # the sender meets the new master
    received = [(await asyncio.wait_for(receiver.receive(channel), 10))["n"] for _ in range(6)]
    assert received == list(range(6))
    await nothing_more_arrives(sender, receiver, channel)
    assert receiver.statistics().duplicates_dropped >= 5


async def test_an_aborted_failover_releases_held_writes(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Writes held while sentinels promote a replica go out when they abort the failover;
    the warning says they are released, not that they "go on to the master" (which may be
    dead: they go to whichever master the layer finds)."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    layer = make_layer(sentinel)  # holds writes for at most min(10 s, failover_timeout / 2)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "before"})
    shard = layer._session()._shards[0]
    await asyncio.wait_for(shard.watch_subscribed(), SENTINEL_WATCH_DELAY_S + 5)
    link = shard.link
    master = await sentinel.acurrent_master()
    replicas = [node for node in sentinel.data_nodes if node is not master]
    await sentinel.afailover()
    for replica in replicas:  # the promotion cannot finish: failover-timeout (3 s) aborts it
        replica.pause()
    try:
        deadline = time.monotonic() + 5.0
        while link._holding is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the failover start was not heard"
            await asyncio.sleep(0.01)  # the link has no hook to await a hold
        held_at = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="channels_ha.layer"):
            await layer.send(channel, {"type": "held"})
        assert time.monotonic() - held_at < 6.0  # released by the abort, not by the 10 s limit
    finally:
        for replica in replicas:
            replica.resume()
    assert (await layer.receive(channel))["type"] == "before"
    assert (await layer.receive(channel))["type"] == "held"
    events = [r for r in caplog.records if getattr(r, "event", None) == "failover_aborted"]
    assert events, "the abort was not logged"
    assert all("are released" in r.getMessage() for r in events)


@pytest.mark.parametrize("mode", ["send", "group_send"])
async def test_writes_made_through_async_to_sync_are_written_again(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory, mode: str
) -> None:
    """Sends from sync code (an event loop per call) are written again after a restart empty."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology)
    receiver = make_layer(topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    await receiver.group_add("sync-senders", channel)
    await sender.send("warm-up", {"type": "w"})  # the process's long-lived event loop
    for number in range(5):
        message = {"type": "n", "n": number}
        if mode == "send":
            await asyncio.to_thread(async_to_sync(sender.send), channel, message)
        else:
            await asyncio.to_thread(async_to_sync(sender.group_send), "sync-senders", message)
    await topology.nodes[0].arestart_empty()
    received = [(await asyncio.wait_for(receiver.receive(channel), 5))["n"] for _ in range(5)]
    assert received == list(range(5))


OUTAGE_S = 3.0  # longer than the 2 s close() used to give the returns


async def test_close_during_an_outage_gives_back_what_the_reader_popped(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """Seen: close() gave the returns a fixed 2 s, so a close during a failover lost every
    message the reader had popped and not delivered, whose sends had returned, with a
    warning naming nothing. They now wait for a master like any request."""
    topology = redis_sandbox_factory("standalone")
    layer = RedisChannelLayer(hosts=[topology.url], prefix="close-outage", failover_timeout=10)
    node = topology.nodes[0]
    try:
        channel = await layer.new_channel()
        for number in range(10):
            await layer.send(channel, {"type": "n", "n": number})
        assert (await layer.receive(channel))["n"] == 0  # the reader popped all ten
        assert layer.statistics().buffered == 9
        node.kill()
        closing = asyncio.create_task(layer.close())
        done, _ = await asyncio.wait({closing}, timeout=OUTAGE_S)
        assert not done, "close() gave up on the returns during the outage"
        node.restart_empty()
        await asyncio.wait_for(closing, 10)
        received = [(await layer.receive(channel))["n"] for _ in range(9)]
        assert received == list(range(1, 10))
        await nothing_more_arrives(layer, layer, channel)
    finally:
        await layer.close()


async def test_a_give_back_during_an_outage_keeps_its_place(
    redis_sandbox_factory: TopologyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message 0 is popped for a receiver that is cancelled as the master dies: its give-back
    waits for the master, and so does the next receive() here, which then gets 0 first.
    The restarted master lost the list; the sender writes 0-2 again, and the copy of 0 is
    recognised: each arrives once."""
    topology = redis_sandbox_factory("standalone")
    layer = RedisChannelLayer(hosts=[topology.url], prefix="return-outage", failover_timeout=10)
    node = topology.nodes[0]
    try:
        for number in range(3):
            await layer.send("outage-queue", {"type": "n", "n": number})
        deliveries = layer._session().deliveries
        real = deliveries.deliver
        first = asyncio.create_task(layer.receive("outage-queue"))

        def deliver(key: str, elements: list[bytes]) -> set[str]:
            touched = real(key, elements)  # 0, handed to the first receiver
            first.cancel()
            node.kill()
            monkeypatch.setattr(deliveries, "deliver", real)
            return touched

        monkeypatch.setattr(deliveries, "deliver", deliver)
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(layer.receive("outage-queue"))
        await receivers_waiting(layer, "outage-queue", 1)
        await node.arestart_empty()
        received = [(await asyncio.wait_for(second, 10))["n"]]
        for _ in range(2):
            received.append((await asyncio.wait_for(layer.receive("outage-queue"), 5))["n"])
        assert received == [0, 1, 2]
        await nothing_more_arrives(layer, layer, "outage-queue")
        assert layer.statistics().duplicates_dropped == 1  # 0 written again
    finally:
        await layer.close()


@pytest.mark.serial  # times itself within a second or so
async def test_a_frozen_master_fails_sends_within_failover_timeout(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """A frozen server still accepts connections (the kernel does), then never answers the
    handshake. Seen: RedisUnavailable 4 s after a 6 s failover_timeout, since each attempt
    waited its whole reply timeout whatever the requests' deadline."""
    topology = redis_sandbox_factory("standalone")
    url = f"{topology.url}?socket_timeout=5"
    connected = RedisChannelLayer(hosts=[url], prefix="frozen-deadline", failover_timeout=2)
    connecting = RedisChannelLayer(hosts=[url], prefix="frozen-deadline", failover_timeout=2)
    node = topology.nodes[0]
    try:
        await connected.send("frozen-deadline", {"type": "warm-up"})
        node.pause()
        try:
            for layer in (connected, connecting):  # a reply due; a handshake due
                started = time.monotonic()
                with pytest.raises(RedisUnavailable, match="failover_timeout"):
                    await layer.send("frozen-deadline", {"type": "refused"})
                waited = time.monotonic() - started
                assert waited < 2 + 1.0, f"RedisUnavailable came {waited:.1f} s after the send"
        finally:
            node.resume()
    finally:
        await connected.close()
        await connecting.close()


async def test_a_cancelled_close_still_closes_and_reports_the_loss(
    redis_sandbox_factory: TopologyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """close() now waits for a master to give messages back; a shutdown hook that gives it
    less time cancels it. Seen: tasks and connections left for good, and every later
    close() returning at once. What could not be given back is logged as lost."""
    topology = redis_sandbox_factory("standalone")
    layer = RedisChannelLayer(hosts=[topology.url], prefix="close-cancel", failover_timeout=10)
    channel = await layer.new_channel()
    for number in range(10):
        await layer.send(channel, {"type": "n", "n": number})
    assert (await layer.receive(channel))["n"] == 0  # nine more popped, not delivered
    session = layer._session()
    topology.nodes[0].kill()
    with caplog.at_level("ERROR", logger="channels_ha"), pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.close(), 0.5)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert all(shard.link.unsettled() == [] for shard in session._shards)
    lost = [r for r in caplog.records if getattr(r, "event", None) == "return_lost"]
    assert [getattr(r, "messages", None) for r in lost] == [9]


async def test_a_reader_that_reconnects_does_not_pop_a_channel_giving_back(
    redis_sandbox_factory: TopologyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message 0 is handed to a receiver as the master dies, and both receivers waiting on
    the channel are cancelled: 0 goes back to Redis once a new master is there. The reader,
    knowing its connection gone, had worked out what to pop before it reconnected; seen: it
    popped with that list after the new master came, taking 1 ahead of 0 (3 runs in 4)."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)
    layer = RedisChannelLayer(hosts=[sentinel.url], prefix="stale-keys", failover_timeout=20)
    try:
        for number in range(4):
            await layer.send("q", {"type": "n", "n": number})
        session = layer._session()
        deliveries, real = session.deliveries, session.deliveries.deliver
        old = await sentinel.acurrent_master()
        receivers = [asyncio.create_task(layer.receive("q")) for _ in range(2)]

        def deliver(key: str, elements: list[bytes]) -> set[str]:
            touched = real(key, elements)  # 0, handed to the first receiver
            old.kill()
            session._readers[(0, False)]._client = None  # it knows the connection is gone
            for receiver in receivers:
                receiver.cancel()
            monkeypatch.setattr(deliveries, "deliver", real)
            return touched

        monkeypatch.setattr(deliveries, "deliver", deliver)
        for receiver in receivers:
            with pytest.raises(asyncio.CancelledError):
                await receiver
        await sentinel.await_new_master(old)
        received = [(await asyncio.wait_for(layer.receive("q"), 25))["n"] for _ in range(4)]
        assert received == [0, 1, 2, 3]
    finally:
        await asyncio.wait_for(layer.close(), 40)
