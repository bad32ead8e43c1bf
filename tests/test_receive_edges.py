"""receive() at the edges: cancelled right after being handed a message, cancelled while
failing, pending at close(), failed receivers' buffers.

The moments are forced from inside a real layer on real Redis: a cancellation issued from the
delivery itself lands exactly between a message being handed to a receiver and that receiver
resuming, which no outside timing can hit reliably.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from channels_ha import RedisChannelLayer, RedisUnavailable

from .conftest import receivers_waiting

pytestmark = pytest.mark.redis_topologies("standalone")

TIMEOUT_S = 5.0


def deliver_then(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, act: Callable[[], Any]
) -> None:
    """Runs ``act`` right after the next delivery, in the same loop step."""
    deliveries = layer._session().deliveries
    real = deliveries.deliver

    def deliver(key: str, elements: list[bytes]) -> set[str]:
        touched = real(key, elements)
        act()
        monkeypatch.setattr(deliveries, "deliver", real)
        return touched

    monkeypatch.setattr(deliveries, "deliver", deliver)


async def test_a_message_handed_to_a_cancelled_receiver_goes_to_the_next(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two receivers wait; the first is handed the message and cancelled before it resumes:
    the second gets the message."""
    first = asyncio.create_task(layer.receive("edge-queue"))
    await receivers_waiting(layer, "edge-queue", 1)
    second = asyncio.create_task(layer.receive("edge-queue"))
    await receivers_waiting(layer, "edge-queue", 2)
    deliver_then(layer, monkeypatch, first.cancel)
    await layer.send("edge-queue", {"type": "m"})
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, TIMEOUT_S) == {"type": "m"}


async def test_a_message_survives_a_sweep_while_two_receivers_leave(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One receiver leaves as the other is handed the message, a sweep runs, and the other is
    cancelled before resuming: the message must still be there for the next receive()."""
    session = layer._session()
    first = asyncio.create_task(layer.receive("edge-sweep"))
    await receivers_waiting(layer, "edge-sweep", 1)
    second = asyncio.create_task(layer.receive("edge-sweep"))
    await receivers_waiting(layer, "edge-sweep", 2)
    loop = asyncio.get_running_loop()
    deliveries = session.deliveries
    real = deliveries.deliver

    def deliver(key: str, elements: list[bytes]) -> set[str]:
        second.cancel()  # leaves before the message is handed over
        loop.call_soon(deliveries.sweep)  # the upkeep's sweep lands in this very step
        touched = real(key, elements)  # handed to the first receiver
        first.cancel()  # which is cancelled before it resumes
        monkeypatch.setattr(deliveries, "deliver", real)
        return touched

    monkeypatch.setattr(deliveries, "deliver", deliver)
    await layer.send("edge-sweep", {"type": "m"})
    await asyncio.wait({first, second})
    assert await asyncio.wait_for(layer.receive("edge-sweep"), TIMEOUT_S) == {"type": "m"}


async def test_a_cancel_racing_a_failure_raises_cancelled_error(layer: RedisChannelLayer) -> None:
    """A receiver failed with RedisUnavailable and cancelled in the same step is cancelled: the
    cancellation must not turn into the failure."""
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    buffer = await receivers_waiting(layer, channel, 1)
    layer._session().deliveries.fail_waiters(buffer.shard, RedisUnavailable("no master"))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_close_ends_a_pending_receive(layer: RedisChannelLayer) -> None:
    """close() while a receive() waits makes it raise RedisUnavailable, instead of leaving it
    waiting on a session that is gone."""
    waiting = asyncio.create_task(layer.receive("edge-close"))
    await receivers_waiting(layer, "edge-close", 1)
    await layer.close()
    done, _ = await asyncio.wait({waiting}, timeout=TIMEOUT_S)  # no cancel: it must end alone
    if not done:
        waiting.cancel()
        pytest.fail("receive() still waits after close()")
    with pytest.raises(RedisUnavailable, match="closed"):
        waiting.result()


async def test_buffers_of_failed_receivers_are_swept(layer: RedisChannelLayer) -> None:
    """Receivers failed with RedisUnavailable leave nothing behind: their buffers are swept and
    no longer count in the inbox limit this process publishes."""
    deliveries = layer._session().deliveries
    channels = [await layer.new_channel() for _ in range(3)]
    receivers = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    for channel in channels:
        buffer = await receivers_waiting(layer, channel, 1)
    deliveries.fail_waiters(buffer.shard, RedisUnavailable("no master"))
    for receiver in receivers:
        with pytest.raises(RedisUnavailable):
            await receiver
    deliveries.sweep()
    assert not set(channels) & set(deliveries.channels())
    assert deliveries.inbox_limits() == {}
