"""A bug inside channels-ha is logged and survived by the background work it hits.

These tests inject the bug (an internal method that raises once): Redis is real, but no
fault of Redis makes our own code raise. Before the guards, such an exception ended the
reader task (every receiver of its shard then waited forever) or the upkeep task (memberships
then lapsed at group_expiry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from channels_ha import RedisChannelLayer, _epoch_reads
from channels_ha._buffers import now_ms
from channels_ha._reader import BlockingReader

pytestmark = pytest.mark.redis_topologies("standalone")

RECEIVE_TIMEOUT_S = 5.0
UPKEEP_TIMEOUT_S = 5.0  # upkeep ticks every second


def raising_once(real: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    """``real``, except that its first call raises; and a list that counts the calls."""
    calls: list[int] = []

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected bug")
        return real(*args, **kwargs)

    return patched, calls


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", "") == name]


async def test_a_failed_delivery_does_not_stop_the_reader(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch the bug hit is lost and logged; the next message still arrives."""
    deliveries = layer._session().deliveries
    patched, calls = raising_once(deliveries.deliver)
    monkeypatch.setattr(deliveries, "deliver", patched)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "hit by the bug"})
    with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
        waiting = asyncio.create_task(layer.receive(channel))
        deadline = asyncio.get_running_loop().time() + RECEIVE_TIMEOUT_S
        while not calls:  # the reader has popped the first message
            assert asyncio.get_running_loop().time() < deadline, "the reader never popped"
            await asyncio.sleep(0.01)
        await layer.send(channel, {"type": "after"})
        received = await asyncio.wait_for(waiting, RECEIVE_TIMEOUT_S)
    assert received == {"type": "after"}
    (failure,) = events(caplog, "delivery_failed")
    assert failure.exc_info is not None
    assert [shard.delivery_failures for shard in layer.statistics().shards] == [1]


async def test_a_failed_upkeep_runs_again(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Upkeep that raised runs again at its next tick."""
    upkeep = layer._session().upkeep
    again = asyncio.Event()
    patched, calls = raising_once(upkeep.publish_inbox_limits)

    def counting() -> None:
        patched()
        if len(calls) >= 2:
            again.set()

    with caplog.at_level(logging.ERROR, logger="channels_ha.layer"):
        monkeypatch.setattr(upkeep, "publish_inbox_limits", counting)
        await asyncio.wait_for(again.wait(), UPKEEP_TIMEOUT_S * 2)
    (failure,) = events(caplog, "upkeep_failed")
    assert failure.exc_info is not None


async def test_a_failing_upkeep_step_does_not_stop_the_others(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A step that fails at every tick leaves the later steps running, and is reported once
    a minute rather than once a tick."""
    session = layer._session()

    def broken(shards: object) -> None:
        raise RuntimeError("injected bug")

    ticks: list[int] = []
    two_ticks = asyncio.Event()
    publish = session.upkeep.publish_inbox_limits

    def counting() -> None:
        publish()
        ticks.append(1)
        if len(ticks) >= 2:
            two_ticks.set()

    with caplog.at_level(logging.ERROR, logger="channels_ha.layer"):
        monkeypatch.setattr(session.resync, "check_epochs", broken)
        monkeypatch.setattr(session.upkeep, "publish_inbox_limits", counting)
        await asyncio.wait_for(two_ticks.wait(), UPKEEP_TIMEOUT_S * 2)
    (failure,) = events(caplog, "upkeep_failed")  # two failures, one report
    assert getattr(failure, "step", None) == "epoch check"


async def test_a_sweep_keeps_a_receiver_that_was_just_handed_a_message(
    layer: RedisChannelLayer,
) -> None:
    """Between a message handed to a waiting receiver and that receiver resuming, the buffer
    has no item and no waiter. A sweep in that moment used to forget it, and the reader's next
    look at what to pop raised KeyError and ended the reader."""
    deliveries = layer._session().deliveries
    buffer = deliveries.buffer("handed-over")
    waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    buffer.waiters.append(waiter)
    deliveries.enter(buffer)
    buffer.put((now_ms() + 60_000, b"body"))  # the receiver's task has not run yet
    assert waiter.done()
    deliveries.sweep()
    assert "handed-over" in deliveries.channels()
    assert deliveries.normal_keys(0)() == []  # nobody waits for more; and no KeyError
    deliveries.leave(buffer)


async def test_a_failing_pop_does_not_stop_the_reader(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error in a step of the reader's loop is logged; the reader goes on with a new
    connection and the message waiting in Redis arrives."""
    patched, calls = raising_once(BlockingReader._submit_pop)
    monkeypatch.setattr(BlockingReader, "_submit_pop", patched)
    await layer.send("failing-pop", {"type": "waiting"})
    with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
        received = await asyncio.wait_for(layer.receive("failing-pop"), RECEIVE_TIMEOUT_S)
    assert received == {"type": "waiting"}
    assert len(calls) >= 2
    (failure,) = events(caplog, "reader_failed")
    assert failure.exc_info is not None


async def test_a_reader_that_ends_anyway_is_started_again(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should the reader's loop end by an error after all (here: its recovery from one fails
    too), it is logged and started again rather than leaving its receivers waiting."""
    pop, _ = raising_once(BlockingReader._submit_pop)
    start_over, _ = raising_once(BlockingReader._start_over)
    monkeypatch.setattr(BlockingReader, "_submit_pop", pop)
    monkeypatch.setattr(BlockingReader, "_start_over", start_over)
    await layer.send("ended-reader", {"type": "waiting"})
    with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
        received = await asyncio.wait_for(layer.receive("ended-reader"), RECEIVE_TIMEOUT_S)
    assert received == {"type": "waiting"}
    (restart,) = events(caplog, "reader_restarted")
    assert restart.exc_info is not None


async def test_a_failing_epoch_read_is_reported_and_read_again(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The epoch reads run apart from the tick (a master that does not answer must not hold
    it up): a bug in one is still reported as the epoch check's, and the next tick reads
    again."""
    channel = await layer.new_channel()
    await layer.group_add("room", channel)  # something to re-assert: every tick reads
    patched, calls = raising_once(_epoch_reads.watch_epoch)
    monkeypatch.setattr(_epoch_reads, "watch_epoch", patched)
    with caplog.at_level(logging.ERROR, logger="channels_ha.layer"):
        deadline = asyncio.get_running_loop().time() + UPKEEP_TIMEOUT_S * 2
        while len(calls) < 2:
            assert asyncio.get_running_loop().time() < deadline, f"{len(calls)} epoch reads"
            await asyncio.sleep(0.01)  # polling: the upkeep has no hook to await
    (failure,) = events(caplog, "upkeep_failed")
    assert getattr(failure, "step", None) == "epoch check"
    assert failure.exc_info is not None
