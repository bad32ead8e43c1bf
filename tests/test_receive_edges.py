"""receive() at the edges: cancelled right after being handed a message, cancelled while
failing, pending at close(), failed receivers' buffers.

The moments are forced from inside a real layer on real Redis: a cancellation issued from the
delivery itself lands exactly between a message being handed to a receiver and that receiver
resuming, which no outside timing can hit reliably.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import pytest
import redis

from channels_ha import RedisChannelLayer, RedisUnavailable
from channels_ha._buffers import now_ms
from channels_ha._codec import encode_element
from channels_ha.sandbox import Topology

from .conftest import LayerFactory, receivers_waiting

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


# -- messages that expire in this process ------------------------------------------------------

EXPIRY_S = 1  # the shortest expiry the layer takes


async def buffered_to_expire(layer: RedisChannelLayer) -> str:
    """A process-specific channel with one message buffered here, expired by now."""
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.send(b, {"type": "old"})
    await layer.send(a, {"type": "wake"})
    await layer.receive(a)  # the inbox pop brings b's message along
    assert layer.statistics().buffered == 1
    await asyncio.sleep(EXPIRY_S + 0.1)  # the behaviour under test is the passage of time
    return b


async def test_a_message_expired_in_the_buffer_is_counted_once(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """receive() skips a buffered message that expired: counted then, and not again by the
    sweep (seen: statistics().expired 0, since only the 10 s sweep counted)."""
    layer = make_layer(redis_topology, expiry=EXPIRY_S)
    b = await buffered_to_expire(layer)
    await layer.send(b, {"type": "new"})
    assert (await asyncio.wait_for(layer.receive(b), TIMEOUT_S))["type"] == "new"
    layer._session().deliveries.sweep()
    assert layer.statistics().expired == 1


async def test_a_message_expired_before_its_give_back_is_counted(
    make_layer: LayerFactory, redis_topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    """close() gives back what is buffered, less what expired: counted as expired, neither
    returned nor logged lost (seen: expired 0)."""
    layer = make_layer(redis_topology, expiry=EXPIRY_S)
    await buffered_to_expire(layer)
    with caplog.at_level("INFO", logger="channels_ha"):
        await layer.close()
    assert layer.statistics().expired == 1
    assert not [r for r in caplog.records if "Returned" in r.getMessage()]
    assert not [r for r in caplog.records if getattr(r, "event", None) == "return_lost"]


async def test_a_failed_give_back_expired_before_its_retry_is_counted(
    layer: RedisChannelLayer,
) -> None:
    """A RETURN that failed is tried again at the next sweep, less what expired meanwhile:
    counted as expired, and not tried (seen: expired 0)."""
    give_back = layer._session().give_back
    expired = encode_element(now_ms() - 1, "returner", 1, "edge-retry", b"body")
    give_back._unreturned.append((0, layer._core.keys.channel("edge-retry"), [expired], "id"))
    give_back.retry()
    assert not give_back.tasks
    assert layer.statistics().expired == 1


# -- order across cancelled receives on a normal channel ---------------------------------------


def record_pops(layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Records each time the normal-channel reader works out what to pop (before its first
    receive()): the event is set then, and the keys it found are in ``event.found``."""
    deliveries = layer._session().deliveries
    real = deliveries.normal_keys
    asked = asyncio.Event()

    def normal_keys(index: int) -> Callable[[], list[str]]:
        keys = real(index)

        def recorded() -> list[str]:
            found = keys()
            asked.found = found  # type: ignore[attr-defined]
            asked.set()
            return found

        return recorded

    monkeypatch.setattr(deliveries, "normal_keys", normal_keys)
    return asked


def hold_give_backs(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Holds every RETURN until the second event is set; the first is set once one waits."""
    session = layer._session()
    real = session.give_back.push_front
    held, release = asyncio.Event(), asyncio.Event()

    async def push_front(index: int, key: str, elements: list[bytes], return_id: str) -> None:
        held.set()
        await release.wait()
        await real(index, key, elements, return_id)

    monkeypatch.setattr(session.give_back, "push_front", push_front)
    return held, release


async def give_back_held(
    layer: RedisChannelLayer, channel: str, monkeypatch: pytest.MonkeyPatch
) -> asyncio.Event:
    """A receive() on ``channel`` handed its message and cancelled before it resumes: the
    message is on its way back to Redis, held there until the event returned is set."""
    held, release = hold_give_backs(layer, monkeypatch)
    first = asyncio.create_task(layer.receive(channel))
    deliver_then(layer, monkeypatch, first.cancel)
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(held.wait(), TIMEOUT_S)
    return release


async def received_numbers(layer: RedisChannelLayer, channel: str, count: int) -> list[int]:
    return [(await asyncio.wait_for(layer.receive(channel), TIMEOUT_S))["n"] for _ in range(count)]


async def test_a_receive_during_a_give_back_gets_the_returned_message_first(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver is handed message 0 and cancelled before it resumes: 0 goes back to the head
    of the list. A receive() made while that give-back is still on its way must get 0, not
    pop 1 ahead of it."""
    channel = "order-return"
    for number in range(3):
        await layer.send(channel, {"type": "m", "n": number})
    asked = record_pops(layer, monkeypatch)
    release = await give_back_held(layer, channel, monkeypatch)  # 0 is on its way back
    asked.clear()
    second = asyncio.create_task(layer.receive(channel))
    await asyncio.wait_for(asked.wait(), TIMEOUT_S)  # the reader worked out what to pop
    if asked.found:  # type: ignore[attr-defined]
        await asyncio.wait({second}, timeout=TIMEOUT_S)  # it popped ahead of the give-back
    release.set()
    got = [(await asyncio.wait_for(second, TIMEOUT_S))["n"]]
    assert got + await received_numbers(layer, channel, 2) == [0, 1, 2]


async def test_a_message_popped_as_a_give_back_starts_goes_back_behind_it(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two receivers wait; the first is handed message 0 and both are cancelled before they
    resume, while the reader already pops again for the second: 0 goes back, and 1, which
    that pop brings, must go back behind it, not in front of it."""
    channel = "order-late-pop"
    for number in range(4):
        await layer.send(channel, {"type": "m", "n": number})
    _, release = hold_give_backs(layer, monkeypatch)  # until the second pop is delivered
    first = asyncio.create_task(layer.receive(channel))
    second = asyncio.create_task(layer.receive(channel))  # both wait before the first pop
    deliveries = layer._session().deliveries
    real = deliveries.deliver
    delivered = 0

    def deliver(key: str, elements: list[bytes]) -> set[str]:
        nonlocal delivered
        touched = real(key, elements)
        delivered += 1
        if delivered == 1:  # 0, handed to the first: neither resumes
            first.cancel()
            second.cancel()
        else:  # 1, from the pop made for the second
            release.set()
            monkeypatch.setattr(deliveries, "deliver", real)
        return touched

    monkeypatch.setattr(deliveries, "deliver", deliver)
    for receiver in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await receiver
    await asyncio.wait_for(release.wait(), TIMEOUT_S)
    assert await received_numbers(layer, channel, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("receivers", [1, 2])
async def test_cancelled_receives_keep_a_normal_channels_order(
    make_layer: LayerFactory, redis_topology: Topology, receivers: int
) -> None:
    """receive() calls on a normal channel cancelled at random moments (a consumer's
    wait_for timeouts): every message arrives once, in the order sent. The moments are
    counted in event-loop steps, so that they fall around the pops and the give-backs."""
    layer = make_layer(redis_topology, capacity=1000)
    channel, count = f"order-random-{receivers}", 300
    for number in range(count):
        await layer.send(channel, {"type": "m", "n": number})
    got: list[int] = []
    chance = random.Random(receivers)
    for _ in range(20 * count):  # bounded: each round ends all its receive() calls
        if len(got) == count:
            break
        calls = [asyncio.create_task(layer.receive(channel)) for _ in range(receivers)]
        for call in calls:
            for _ in range(chance.randrange(12)):
                await asyncio.sleep(0)  # one loop step: not a wait for anything
            call.cancel()
        for call in calls:
            with suppress(asyncio.CancelledError):
                got.append((await asyncio.wait_for(call, TIMEOUT_S))["n"])
        for _ in range(chance.randrange(4)):
            await asyncio.sleep(0)  # the next receive() before or after a give-back started
    assert got == list(range(count))


async def test_a_give_back_goes_to_the_receiver_waiting_in_another_process(
    make_layer: LayerFactory,
    redis_topology: Topology,
    master_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Message 0, popped for a receiver here that was cancelled, goes back to Redis for the
    receiver another process has waiting; a receive() made here meanwhile does not keep 0 in
    this process but waits its turn, and gets the next message."""
    here = make_layer(redis_topology)
    there = make_layer(redis_topology, prefix=here.prefix)
    channel = "order-compete"
    await there.send(channel, {"type": "warm-up"})  # its link connected, scripts loaded
    assert (await asyncio.wait_for(there.receive(channel), TIMEOUT_S))["type"] == "warm-up"
    await here.send(channel, {"type": "m", "n": 0})
    release = await give_back_held(here, channel, monkeypatch)  # 0 is on its way back
    blocked = int(master_client.info("clients")["blocked_clients"])
    waiting_there = asyncio.create_task(there.receive(channel))
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while int(master_client.info("clients")["blocked_clients"]) <= blocked:
        assert asyncio.get_running_loop().time() < deadline, "the other pop never blocked"
        await asyncio.sleep(0.01)  # receive() has no hook: its pop blocks inside Redis
    waiting_here = asyncio.create_task(here.receive(channel))
    await receivers_waiting(here, channel, 1)
    release.set()
    assert (await asyncio.wait_for(waiting_there, TIMEOUT_S))["n"] == 0
    await here.send(channel, {"type": "m", "n": 1})
    assert (await asyncio.wait_for(waiting_here, TIMEOUT_S))["n"] == 1
