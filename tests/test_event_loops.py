"""One layer used from several event loops of one process: the ASGI server's, and the
short-lived ones of async_to_sync calls and other threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync

from channels_ha import RedisChannelLayer, RedisUnavailable
from channels_ha.sandbox import Topology

from .conftest import LoopThread

pytestmark = pytest.mark.redis_topologies("standalone")


@pytest.fixture
def asgi_loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


def test_a_second_event_loop_receiving_on_the_inbox_is_refused(
    redis_topology: Topology, asgi_loop: LoopThread
) -> None:
    """receive() on a process channel raises while another loop waits on one (as channels_redis)."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="two-loops")
    try:
        consumer_channel = asgi_loop.run(layer.new_channel())
        waiting = asgi_loop.submit(layer.receive(consumer_channel))
        deadline = time.monotonic() + 5
        while not ((s := layer._sessions.get(asgi_loop.loop)) and s.deliveries.receiving_inbox()):
            assert time.monotonic() < deadline, "the consumer never waited"
            time.sleep(0.01)  # receive() has no hook to await its start
        reply = async_to_sync(layer.new_channel)()
        with pytest.raises(RuntimeError, match="Two event loops"):
            async_to_sync(layer.receive)(reply)
        async_to_sync(layer.send)(consumer_channel, {"type": "still.delivered"})
        assert waiting.result(5)["type"] == "still.delivered"
    finally:
        asgi_loop.run(layer.flush())
        asgi_loop.run(layer.close())


def test_memberships_can_be_refreshed_while_another_loop_joins_groups(
    redis_topology: Topology,
) -> None:
    """Reading every membership while another thread's event loop adds some raises nothing."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="refresh-race")
    memberships = layer._core.memberships
    for number in range(5_000):
        memberships.added("big", f"member-{number}")
        memberships.touch(f"member-{number}")
    stop = threading.Event()

    def join_groups() -> None:
        for number in range(200_000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            memberships.added("other", f"joiner-{number}")

    joiner = threading.Thread(target=join_groups, daemon=True)
    joiner.start()
    try:
        for _ in range(20):
            assert len(memberships.live_groups()["big"]) == 5_000
    finally:
        stop.set()
        joiner.join(5)


@pytest.mark.parametrize("closes_first", [False, True])
def test_clean_up_after_the_loop_began_shutting_down_opens_no_session(
    redis_topology: Topology, closes_first: bool
) -> None:
    """A consumer's clean-up (group_discard on cancellation) that runs after its loop's
    shutdown closed the layer's session gets RedisUnavailable. Seen: it opened a new
    session whose upkeep task nothing cancelled ("Task was destroyed but it is pending",
    a socket left open) and, with Redis down, held the shutdown for failover_timeout."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="loop-end")
    outcome: dict[str, object] = {}

    async def consumer(channel: str) -> None:
        try:
            await layer.receive(channel)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # other clean-up first: the session closes meanwhile
            if closes_first:  # a shutdown hook's close_pools(), then the consumer's discard
                await layer.close_pools()
            try:
                await layer.group_discard("room", channel)
                outcome["discard"] = "returned"
            except RedisUnavailable as err:
                outcome["discard"] = err
            raise

    async def main() -> None:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        consuming = asyncio.get_running_loop().create_task(consumer(channel))
        outcome["task"] = consuming  # asyncio.run cancels it as it ends
        await asyncio.sleep(0.1)  # the consumer waits in receive()

    asyncio.run(main())
    assert isinstance(outcome["discard"], RedisUnavailable), outcome
    assert "shutting down" in str(outcome["discard"])
    assert all(session.closed for session in layer._sessions.values())
