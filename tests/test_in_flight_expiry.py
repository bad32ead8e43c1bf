"""A normal-channel batch whose reply was lost and whose in-flight list expired before a
recovery brought it back is logged once (``in_flight_lost``), a receiver waiting or not.

The list expires ``expiry`` after Redis ran the pop; the reader counts from just before it
sent the pop, so it cannot count past the list (tests/test_normal_reader_recovery.py has the
cases with nobody waiting).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha._constants import CLOSE_RETURN_TIMEOUT_S
from channels_ha._keys import KeyLayout
from channels_ha._normal_reader import NormalReader, _State
from channels_ha.sandbox import Topology

from .test_lost_reply_pace import output_buffer_limit
from .test_normal_reader import (
    MARKER,
    TIMEOUT_S,
    CuttingProxy,
    behind,
    blocked_in_redis,
    message,
)
from .test_normal_reader_recovery import EventSeen

pytestmark = pytest.mark.redis_topologies("standalone")

TTL_S = 1.0  # the in-flight list's life: expiry (failover_timeout is not more)
LATE_S = 1.5  # past TTL_S: a reply held, or a recovery held back, this long
BIG_TTL_S = 2.0  # the same, with 2 MB messages to move
# With BIG_TTL_S: how long the reply of a pop that took nothing is held. The recoveries after
# it go at 1.0, 1.0, 1.03, 1.08, 1.18, 1.38, 1.78, then 2.28 s (paced: 25 ms doubling, up to
# 0.5 s): the window closes at 2.0 s between two of them, the list of the batch popped at
# 1.0 s expires at 3.0 s.
EMPTY_HELD_S = 1.0
CUT_MARGIN_S = 0.15  # cutting goes on this long past the window, for a request sent before
EMPTY_POP = b"*2\r\n:0\r\n"  # how POP_NORMAL's reply begins when it took nothing: {0, ids}


@asynccontextmanager
async def watching(event: str, times: int = 1) -> AsyncIterator[EventSeen]:
    """Records of ``event`` are counted while in the block."""
    seen = EventSeen(event, times)
    logging.getLogger("channels_ha").addHandler(seen)
    try:
        yield seen
    finally:
        logging.getLogger("channels_ha").removeHandler(seen)


def lost_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "in_flight_lost"]


async def test_each_batch_whose_list_expires_while_a_receiver_waits_is_logged(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Two 2 MB messages wait on a normal channel and the server cuts any reply over 1 MB:
    while a receiver waits, the pop of each and every recovery after it are cut, until its
    in-flight list expires: each batch is logged lost once, when its list expired, and the
    reader goes on (seen: nothing logged; each recovery cut was taken for a new pop, which
    kept the reader's reckoning of the expiry moving, and the recovery after the real one
    found the list gone and settled in silence)."""
    prefix = f"cut-expiry-{uuid.uuid4().hex[:8]}"
    options = {"prefix": prefix, "expiry": BIG_TTL_S, "failover_timeout": BIG_TTL_S / 2}
    first = RedisChannelLayer(hosts=[redis_topology.url], **options)
    other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
    try:
        await first.send("warm-up", {"type": "warm-up"})  # the command link connects now
        with caplog.at_level(logging.INFO, logger="channels_ha"):
            async with watching("in_flight_lost", times=2) as lost:
                with output_buffer_limit(master_client, "1mb"):
                    for number in range(2):
                        await other.send("jobs", {"type": "big", "n": number, "b": "x" * (2 << 20)})
                    started = time.monotonic()
                    receiving = asyncio.create_task(first.receive("jobs"))
                    with suppress(asyncio.TimeoutError):  # fewer lines: reported below
                        await asyncio.wait_for(lost.seen.wait(), 2 * BIG_TTL_S + TIMEOUT_S)
            await other.send("jobs", message(2))
            received = await asyncio.wait_for(receiving, TIMEOUT_S)
    finally:
        await first.close()
        await other.close()
    wall = time.time() - (time.monotonic() - started)
    figures = {
        "in_flight_lost at s": [round(r.created - wall, 1) for r in lost_lines(caplog)],
        "received": received.get("n"),
    }
    assert len(figures["in_flight_lost at s"]) == 2, figures
    first_at, second_at = figures["in_flight_lost at s"]
    assert BIG_TTL_S <= first_at < BIG_TTL_S + 1.0, figures  # (recoveries paced: 0.5 s)
    assert first_at + BIG_TTL_S <= second_at < first_at + BIG_TTL_S + 1.0, figures
    assert figures["received"] == 2, figures


class LateRecoveryProxy(CuttingProxy):
    """Cuts the first reply that carries a message, then holds each EVALSHA (the recovery)
    back ``LATE_S``: it reaches Redis after the in-flight list expired."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology, cuts=1, delay=(b"EVALSHA", 0.0))

    def _due(self) -> bool:
        due = super()._due()
        if due:
            self._delay_s = LATE_S
        return due


async def lost_then_next(
    proxy: CuttingProxy, topology: Topology, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> dict[str, object]:
    """A receiver waits on "jobs" of a layer behind ``proxy`` (expiry ``TTL_S``), the pop of
    message 1 loses its reply, and message 2 follows once the loss is logged (or not, after
    a while): the figures."""
    async with behind(proxy, topology, "late", expiry=TTL_S, failover_timeout=TTL_S) as (
        first,
        other,
    ):
        with caplog.at_level(logging.INFO, logger="channels_ha"):
            async with watching("in_flight_lost") as lost:
                blocked = int(admin.info("clients")["blocked_clients"])
                receiving = asyncio.create_task(first.receive("jobs"))
                await blocked_in_redis(admin, blocked)
                await other.send("jobs", message(1))
                with suppress(asyncio.TimeoutError):  # not logged: reported below
                    await asyncio.wait_for(lost.seen.wait(), LATE_S + TIMEOUT_S)
                await other.send("jobs", message(2))
                received = await asyncio.wait_for(receiving, TIMEOUT_S)
    return {"cuts": proxy.cut, "in_flight_lost": len(lost_lines(caplog)), "received": received["n"]}


async def test_a_recovery_reaching_redis_after_the_list_expired_logs_the_batch(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver's pop loses its reply; the recovery, sent at once, reaches Redis only
    after the in-flight list expired and finds nothing: the batch is logged lost, and the
    next message reaches the receiver (seen: nothing logged, the recovery's empty reply
    settled the loss in silence)."""
    proxy = LateRecoveryProxy(redis_topology)
    figures = await lost_then_next(proxy, redis_topology, master_client, caplog)
    assert figures == {"cuts": 1, "in_flight_lost": 1, "received": 2}, figures


async def test_a_cut_noticed_after_the_list_expired_logs_the_batch(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver's pop reply is held back past the in-flight list's expiry, then its
    connection cut (a network cut noticed late): the batch is logged lost at once, and the
    next message reaches the receiver (seen: the reader counted the expiry from the cut,
    its recovery found the list gone, and nothing was logged)."""
    proxy = CuttingProxy(redis_topology, cuts=1)
    proxy.hold_s = LATE_S
    figures = await lost_then_next(proxy, redis_topology, master_client, caplog)
    assert figures == {"cuts": 1, "in_flight_lost": 1, "received": 2}, figures


class EmptyPopHeldProxy(CuttingProxy):
    """Holds the reply of the reader's first pop, which took nothing, ``EMPTY_HELD_S``
    (``cut_seen`` set as the hold starts), then cuts it; then cuts every reply that carries a
    message until the window the reader counts from that pop (``BIG_TTL_S``) has closed, and
    a margin for a request sent just before then."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology, cuts=0)
        self.hold_s = EMPTY_HELD_S
        self._cut_until = 0.0

    def _cuts(self, data: bytes) -> bool:
        if not self._cut_until:
            if EMPTY_POP not in data:
                return False  # (the handshake's replies)
            self._cut_until = time.monotonic() + BIG_TTL_S + CUT_MARGIN_S
            return True
        self.hold_s = 0.0
        return MARKER in data and time.monotonic() < self._cut_until


async def test_a_batch_popped_by_a_cut_recovery_is_recovered_after_the_window(
    redis_topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    """The reader's first pop takes nothing and its reply is cut late; message 1, sent
    meanwhile, is popped by the recovery that follows (the in-flight list was empty), and
    every reply carrying it is cut until the window counted from the first pop has closed:
    the next request, the list still there, recovers it, and nothing is said lost (seen:
    that request was a plain pop, which deleted the list with message 1 in it; logged
    in_flight_lost, and message 2, sent after message 1 was popped, was received)."""
    proxy = EmptyPopHeldProxy(redis_topology)
    async with behind(
        proxy, redis_topology, "popped-anew", expiry=BIG_TTL_S, failover_timeout=BIG_TTL_S
    ) as (first, other):
        with caplog.at_level(logging.INFO, logger="channels_ha"):
            receiving = asyncio.create_task(first.receive("jobs"))
            await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)  # its reply held
            proxy.cut_seen.clear()
            await other.send("jobs", message(1))
            await asyncio.wait_for(proxy.cut_seen.wait(), EMPTY_HELD_S + TIMEOUT_S)
            await other.send("jobs", message(2))  # (message 1 is in the in-flight list)
            received = await asyncio.wait_for(receiving, BIG_TTL_S + TIMEOUT_S)
    figures = {
        "cuts": proxy.cut,
        "in_flight_lost": len(lost_lines(caplog)),
        "received": received["n"],
    }
    assert figures["cuts"] > 2, figures  # the held reply, the recovery popping message 1, more
    assert (figures["in_flight_lost"], figures["received"]) == (0, 1), figures


async def test_a_batch_in_the_list_when_the_window_closes_with_nobody_waiting_is_recovered(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """The window of a lost batch closes while nobody waits, the connection open (a paced
    reconnect came first), and the list holds a batch all the same: a receiver's recovery,
    its reply cut, found the list empty and popped a new one. The write-off lets the next
    receiver's request recover it (seen: a plain pop, which deleted the list with it)."""
    prefix = f"idle-off-{uuid.uuid4().hex[:8]}"
    options = {"prefix": prefix, "expiry": BIG_TTL_S, "failover_timeout": BIG_TTL_S}
    layer = RedisChannelLayer(hosts=[redis_topology.url], **options)
    other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
    try:
        await other.send("jobs", message(0))  # the reader connected, its list emptied after
        assert (await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S))["n"] == 0
        reader = layer._session()._readers[(0, False)]
        await other.send("jobs", message(1))
        channel = KeyLayout(prefix).channel("jobs")
        # What the cut recovery did in Redis (POP_NORMAL): the list emptied, then message 1
        # popped into it behind the name of its channel.
        element = master_client.lpop(channel)
        assert element is not None
        master_client.delete(reader._in_flight)
        master_client.rpush(reader._in_flight, channel, element)
        master_client.pexpire(reader._in_flight, int(BIG_TTL_S * 1000))
        reader._state = _State.LOST  # and what the reader knows: lost, its window closed
        reader._idle._until = time.monotonic() - 0.1
        reader._wanted.set()  # with nobody waiting, the reader looks: the window closed
        for _ in range(100):  # a few loop turns: the reader's task runs, and writes off
            if reader._state is not _State.LOST:
                break
            await asyncio.sleep(0)
        assert reader._state is not _State.LOST
        received = await asyncio.wait_for(layer.receive("jobs"), TIMEOUT_S)
    finally:
        await layer.close()
        await other.close()
    assert received["n"] == 1


async def test_closing_during_a_last_recovery_unanswered_recovers_what_it_popped(
    redis_topology: Topology,
) -> None:
    """A receiver's last recovery (its window closed) finds the list empty and pops message
    1, and its reply is late; the receiver leaves and the layer closes meanwhile. The
    recovery's loss is judged as the receiver's it was, so close() recovers the batch and
    gives it back (seen: taken for close()'s own request, with nobody's channels, and
    written off: message 1 stayed in the in-flight list until it expired)."""
    proxy = CuttingProxy(redis_topology)
    # The reply of the recovery popping message 1: longer than close() waits for it, after
    # which close() drops the connection itself.
    proxy.hold_s = CLOSE_RETURN_TIMEOUT_S + 1.0
    async with behind(
        proxy, redis_topology, "close-overdue", expiry=10.0, failover_timeout=10.0
    ) as (first, other):
        receiving = asyncio.create_task(first.receive("jobs"))
        reader = await waiting_on_the_wake_stream(first)
        reader._state = _State.LOST  # a pop lost before, which took nothing; window closed
        reader._idle._until = time.monotonic() - 0.1
        await other.send("jobs", message(1))
        await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)  # the reply, held
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await first.close()
        received = await asyncio.wait_for(other.receive("jobs"), TIMEOUT_S)
    assert received["n"] == 1


async def waiting_on_the_wake_stream(layer: RedisChannelLayer) -> NormalReader:
    """The layer's normal-channel reader, once its pop found nothing and it waits on the
    channel's wake stream (XREAD)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        reader = layer._session()._readers.get((0, False))
        if isinstance(reader, NormalReader) and reader._pending is not None and not reader._pops:
            return reader
        assert time.monotonic() < deadline, "the reader never waited on the wake stream"
        await asyncio.sleep(0.01)  # nothing to await: the reader has no hook for it
