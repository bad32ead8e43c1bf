"""Sync code (async_to_sync: an event loop and a session per call) right after a master lost
its data: what one event loop knows of the loss must reach every call of the process."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync

import channels_ha._core as core_module
from channels_ha._constants import RESTART_GRACE_S, SENTINEL_WATCH_DELAY_S
from channels_ha.sandbox import SentinelTopology, StandaloneTopology, TopologyFactory

from .conftest import LayerFactory

CALLERS = 8
SLOW_MEMBER_S = RESTART_GRACE_S / 4  # the member's process re-asserts well within the grace


@pytest.mark.parametrize("fault", ["restart-empty", "restart-empty-new-group", "FLUSHALL"])
async def test_concurrent_sync_group_sends_after_a_loss_all_reach_the_member(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory, fault: str
) -> None:
    """Seen: of 16 threads calling group_send right after a master restarted empty, 4 sent to
    nobody and returned at once. The first call's session took the process's record that
    the group had members, and the other sessions, each new, knew no earlier epoch to
    compare with: they took the empty member list for an empty group. Every call must wait
    for the member to re-assert its membership, and it then gets each message once; also
    to a group the process never sent to before ("new-group"), which only the epoch the
    process knew from an earlier call tells from an empty one.

    The member is another layer in this test's event loop, which is held up for a moment
    (as a busy process would be) so that the senders read the group while it is empty."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    member = make_layer(topology)
    sender = make_layer(topology, prefix=member.prefix)
    channel = await member.new_channel()
    await member.group_add("room", channel)
    receiving = asyncio.create_task(member.receive(channel))  # a live member
    if fault == "restart-empty-new-group":  # an earlier call read the master's epoch
        await asyncio.to_thread(async_to_sync(sender.send), "unrelated", {"type": "before"})
    else:
        await asyncio.to_thread(async_to_sync(sender.group_send), "room", {"type": "before"})
        assert (await asyncio.wait_for(receiving, 10))["type"] == "before"
        receiving = asyncio.create_task(member.receive(channel))
    outcomes: dict[int, float] = {}
    barrier = threading.Barrier(CALLERS)

    def group_send(number: int) -> None:
        barrier.wait(10)
        started = time.monotonic()
        async_to_sync(sender.group_send)("room", {"type": "n", "n": number})
        outcomes[number] = time.monotonic() - started

    # From here the member's event loop (this one) is held up: it notices nothing.
    if fault.startswith("restart-empty"):
        topology.node.restart_empty()
        # Any call of the process meets the new server run first (a request, a task).
        first = threading.Thread(
            target=async_to_sync(sender.send), args=("unrelated", {"type": "first-after"})
        )
        first.start()
        first.join(30)
    else:
        admin = topology.node.client()
        try:
            admin.flushall()  # a Django cache's clear() on a shared database
        finally:
            admin.close()
    callers = [threading.Thread(target=group_send, args=(n,)) for n in range(CALLERS)]
    for caller in callers:
        caller.start()
    # Blocking on purpose, no synchronisation: the member's process is busy a moment.
    time.sleep(SLOW_MEMBER_S)  # noqa: ASYNC251
    for caller in callers:
        await asyncio.to_thread(caller.join, 30)
    assert sorted(outcomes) == list(range(CALLERS)), "a group_send did not return"
    received = [(await asyncio.wait_for(receiving, 5))["n"]]
    for _ in range(CALLERS - 1):
        received.append((await asyncio.wait_for(member.receive(channel), 5))["n"])
    assert sorted(received) == list(range(CALLERS)), f"returned after {outcomes}"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(member.receive(channel), 0.3)


async def test_a_process_with_only_sync_callers_writes_again_at_its_next_call(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Guard for what docs/failover.md says of such a process: with no event loop between
    two calls, what a master restarted empty forgot is written again by the next call,
    which meets the new server run (and not before: nothing runs meanwhile)."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology)
    receiver = make_layer(topology, prefix=sender.prefix)
    for number in range(5):
        await asyncio.to_thread(async_to_sync(sender.send), "jobs", {"type": "n", "n": number})
    await topology.node.arestart_empty()
    await asyncio.to_thread(async_to_sync(sender.send), "jobs", {"type": "n", "n": 5})
    received = [(await asyncio.wait_for(receiver.receive("jobs"), 5))["n"] for _ in range(6)]
    assert sorted(received) == list(range(6))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(receiver.receive("jobs"), 0.3)


SYNC_CALLS = 20


async def test_a_sync_call_opens_no_subscription_on_the_sentinels(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Each async_to_sync call is a session of a few milliseconds, which connects anew:
    subscribing to the sentinels' announcements as well opened a connection per sentinel
    and call for nothing. A session that lives on subscribes after
    SENTINEL_WATCH_DELAY_S, on every sentinel."""
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    layer = make_layer(topology)
    admins = [sentinel.client() for sentinel in topology.sentinels]
    try:

        def accepted() -> list[int]:
            return [int(a.info("stats")["total_connections_received"]) for a in admins]

        before = await asyncio.to_thread(accepted)
        for number in range(SYNC_CALLS):
            await asyncio.to_thread(async_to_sync(layer.send), "jobs", {"type": "n", "n": number})
        after = await asyncio.to_thread(accepted)
        opened = [b - a for a, b in zip(before, after, strict=True)]
        # A lookup (a connection per sentinel) for the first call, then the calls try the
        # master it named (see test_hints); a subscription would add one per call. The
        # stats call of `accepted` adds none (kept open).
        assert max(opened) < SYNC_CALLS / 2, opened

        watch_name = f"{layer._session()._shards[0].spec.settings.client_name}:sentinel-watch"

        def watching() -> list[int]:
            return [sum(entry["name"] == watch_name for entry in a.client_list()) for a in admins]

        await layer.send("jobs", {"type": "n", "n": SYNC_CALLS})  # this loop's session lives on
        assert await asyncio.to_thread(watching) == [0, 0, 0]
        shard = layer._session()._shards[0]
        await asyncio.wait_for(shard.watch_subscribed(), SENTINEL_WATCH_DELAY_S + 5)
        assert await asyncio.to_thread(watching) == [1, 1, 1]
    finally:
        for admin in admins:
            admin.close()


SHORT_S = 0.3  # the liveness window and the shortest dedupe memory, for the test below
ROUNDS = 20


async def test_a_process_without_a_long_lived_event_loop_forgets_what_expired(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen: a WSGI or Celery worker (every call async_to_sync, a session of milliseconds
    that never reaches its first upkeep tick) never swept the process's records: one
    membership per group_add, one liveness stamp per channel received on, one delivery mark
    per call that sent to a channel it receives (~1.3 KB per call, for good). Once their
    horizons pass, the next call forgets them.

    The horizons are shortened, not skipped: group_expiry, expiry and failover_timeout are
    options, the liveness window and the dedupe memory's floor the module values the layer
    reads when it is built, and the sweep interval a value of its core; the code that uses
    them is the code under test."""
    monkeypatch.setattr(core_module, "CHANNEL_LIVENESS_S", SHORT_S)
    monkeypatch.setattr(core_module, "DEDUPE_MEMORY_MIN_S", SHORT_S)
    topology = redis_sandbox_factory("standalone")
    # dedupe memory: 2 * failover_timeout + expiry = 3 s; memberships: group_expiry = 1 s.
    layer = make_layer(topology, expiry=1, group_expiry=1, failover_timeout=1)
    other = make_layer(topology, prefix=layer.prefix)  # another process's consumer
    core = layer._core
    core.sweep_interval_s = 3_600.0  # none during the calls, however slow: they are counted

    def sync_calls() -> None:  # what a sync view or task does, call by call
        for number in range(ROUNDS):
            reply_to = async_to_sync(layer.new_channel)()  # an RPC-style reply channel
            async_to_sync(layer.send)(reply_to, {"type": "reply"})
            async_to_sync(layer.receive)(reply_to)
            async_to_sync(layer.group_add)(f"own-{number}", reply_to)
            consumer = async_to_sync(other.new_channel)()
            async_to_sync(layer.group_add)(f"user-{number}", consumer)
            async_to_sync(layer.send)("worker", {"type": "job", "n": number})
            async_to_sync(layer.receive)("worker")

    await asyncio.to_thread(sync_calls)
    assert core.memberships.remembered() >= ROUNDS + 1  # the reply channels, and "worker"
    assert len(core.memberships) >= ROUNDS  # their groups
    assert len(core.marks._marks) == 2 * ROUNDS  # each call is a sender of its own
    last_call = time.monotonic()
    assert not layer._sessions or all(s.closed for s in layer._sessions.values())
    # The horizons passing is what is under test: no event marks it.
    await asyncio.sleep(core.dedupe_memory_s + SHORT_S)
    assert time.monotonic() - last_call > max(core.dedupe_memory_s, core.group_expiry_s)
    core.sweep_interval_s = SHORT_S  # (the calls began longer ago than that)
    await asyncio.to_thread(async_to_sync(layer.send), "unrelated", {"type": "next call"})
    assert core.memberships.remembered() == 0
    assert len(core.memberships) == 0
    assert len(core.marks._marks) == 0
