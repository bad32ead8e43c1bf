"""A blocking reader whose replies keep being cut reconnects at a growing pace, not in a loop.

Redis closes a client whose reply exceeds its ``client-output-buffer-limit`` for normal
clients: with a message larger than that waiting, every pop's reply is cut, though the
master answers. The first lost reply still reconnects at once (a network blip, a failover);
the next ones in a row wait, as reconnections do, and say why once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha.sandbox import Topology

from .test_normal_reader import TIMEOUT_S, CuttingProxy, behind, blocked_in_redis, message

pytestmark = pytest.mark.redis_topologies("standalone")

WATCHED_S = 2.0  # how long a receiver waits while every reply is cut
MAX_CONNECTIONS = 12  # paced: at once, then 25 ms doubling up to 0.5 s (about 8 in 2 s)
PROMPT_S = 0.25  # a single lost reply is recovered within this (paced: 0.5 s)


@contextmanager
def output_buffer_limit(admin: redis.Redis, limit: str) -> Iterator[None]:
    """The server's client-output-buffer-limit for normal clients is ``limit``, then as it was."""
    before = admin.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    admin.config_set("client-output-buffer-limit", f"normal {limit} {limit} 0")
    try:
        yield
    finally:
        admin.config_set("client-output-buffer-limit", before)


def connections_received(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


def cut_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "replies_cut"]


async def test_a_normal_channel_reply_over_the_output_buffer_limit_is_paced(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2 MB message waits on a normal channel and the server cuts any reply over 1 MB: a
    receiver waiting 2 s makes the reader reconnect a few times, not hundreds (its recovery
    brings the same batch each time), logs why once, and gets the message once the limit
    is lifted (seen: ~750 connections in the 2 s, nothing logged)."""
    prefix = f"pace-normal-{uuid.uuid4().hex[:8]}"
    first = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
    other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
    try:
        await first.send("warm-up", {"type": "warm-up"})  # the command link connects now
        with output_buffer_limit(master_client, "1mb"):
            await other.send("jobs", {"type": "big", "body": "x" * 2_000_000})
            before = connections_received(master_client)
            warnings = caplog.at_level(logging.WARNING, logger="channels_ha.reader")
            with warnings, pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(first.receive("jobs"), WATCHED_S)
            connections = connections_received(master_client) - before
        received = await asyncio.wait_for(first.receive("jobs"), TIMEOUT_S)
    finally:
        await first.close()
        await other.close()
    events = cut_events(caplog)
    assert connections <= MAX_CONNECTIONS, f"{connections} connections in {WATCHED_S:g} s"
    assert len(events) == 1, [r.getMessage() for r in events]
    assert f"{prefix}:c:{{normal}}:jobs" in events[0].getMessage()
    assert "client-output-buffer-limit" in events[0].getMessage()
    assert received["type"] == "big"


async def test_process_channel_replies_over_the_output_buffer_limit_are_paced(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages over the server's output buffer limit keep coming to a process channel
    whose receiver waits 2 s: each pop's reply is cut (and its batch lost, Redis removed it:
    an inbox pop is not acknowledged), and the reader reconnects a few times, not once per
    message (seen: ~300 connections in the 2 s, one per message sent, nothing logged)."""
    prefix = f"pace-inbox-{uuid.uuid4().hex[:8]}"
    first = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix, capacity=1000)
    other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix, capacity=1000)
    stop = asyncio.Event()

    async def send_large() -> int:
        sent = 0
        while not stop.is_set():
            await other.send(channel, {"type": "big", "body": "x" * 200_000})
            sent += 1
            await asyncio.sleep(0.005)  # the sender's pace, not a synchronisation
        return sent

    try:
        channel = await first.new_channel()
        await other.send("warm-up", {"type": "warm-up"})  # the command link connects now
        with output_buffer_limit(master_client, "128kb"):
            before = connections_received(master_client)
            sending = asyncio.create_task(send_large())
            warnings = caplog.at_level(logging.WARNING, logger="channels_ha.reader")
            with warnings, pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(first.receive(channel), WATCHED_S)
            connections = connections_received(master_client) - before
            stop.set()
            sent = await sending
    finally:
        stop.set()
        await first.close()
        await other.close()
    events = cut_events(caplog)
    figures = {"connections": connections, "sent": sent, "replies_cut": len(events)}
    assert connections <= MAX_CONNECTIONS, figures
    assert len(events) == 1, figures
    inbox = channel[: channel.index("!") + 1]  # the process's part of the channel name
    assert f"{prefix}:i:" in events[0].getMessage()
    assert inbox in events[0].getMessage()


class ArmedProxy(CuttingProxy):
    """Cuts the replies that carry a message while ``armed`` is above 0, one each."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology, cuts=0)
        self.armed = 0

    def _due(self) -> bool:
        if self.armed > 0:
            self.armed -= 1
            return True
        return False


async def receive_after_cut(
    layer: RedisChannelLayer,
    other: RedisChannelLayer,
    proxy: ArmedProxy,
    admin: redis.Redis,
    cuts: int,
    n: int,
) -> float:
    """A receiver waits on "jobs" and ``other`` sends message ``n``, whose replies the proxy
    cuts ``cuts`` times in a row: seconds from the first cut to the delivery."""
    blocked = int(admin.info("clients")["blocked_clients"])
    receiving = asyncio.create_task(layer.receive("jobs"))
    await blocked_in_redis(admin, blocked)
    proxy.armed, proxy.cut_seen = cuts, asyncio.Event()
    await other.send("jobs", message(n))
    await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
    cut_at = time.monotonic()
    assert (await asyncio.wait_for(receiving, TIMEOUT_S))["n"] == n
    return time.monotonic() - cut_at


@pytest.mark.serial  # times itself within a second or so
async def test_the_pace_starts_over_after_a_reply_and_a_single_cut_is_recovered_at_once(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """Eight replies in a row are cut (the reader's pace grows to 0.5 s), then a reply
    comes: the next single cut is recovered at once, as the first ever was."""
    proxy = ArmedProxy(redis_topology)
    async with behind(proxy, redis_topology, "pace-reset") as (first, other):
        single = await receive_after_cut(first, other, proxy, master_client, 1, 1)
        paced = await receive_after_cut(first, other, proxy, master_client, 8, 2)
        again = await receive_after_cut(first, other, proxy, master_client, 1, 3)
    figures = {"single": round(single, 2), "paced": round(paced, 2), "again": round(again, 2)}
    assert single < PROMPT_S, figures
    assert again < PROMPT_S, figures


@pytest.mark.serial  # times itself within a second or so
async def test_a_new_master_announced_starts_the_pace_over(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """Every reply is cut while a receiver waits, until the reader pauses up to 0.5 s; a new
    master announced (the sentinels' nudge) ends the pause, and the next lost reply
    reconnects at once again."""
    proxy = ArmedProxy(redis_topology)
    async with behind(proxy, redis_topology, "pace-nudge") as (first, other):
        blocked = int(master_client.info("clients")["blocked_clients"])
        receiving = asyncio.create_task(first.receive("jobs"))
        await blocked_in_redis(master_client, blocked)
        proxy.armed = 1_000
        await other.send("jobs", message(1))
        deadline = time.monotonic() + TIMEOUT_S
        while proxy.cut < 8:  # paused 25 ms, then twice as long each time: 0.5 s now
            assert time.monotonic() < deadline, f"{proxy.cut} cuts"
            await asyncio.sleep(0.01)  # the proxy has no hook to await a count
        await asyncio.sleep(0.1)  # within the pause after the eighth cut
        accepted = len(proxy.accepted_at)
        nudged_at = time.monotonic()
        first._session()._readers[(0, False)].nudge()
        while len(proxy.accepted_at) < accepted + 2:
            assert time.monotonic() < deadline, "no connection after the nudge"
            await asyncio.sleep(0.01)
        after = [round(at - nudged_at, 2) for at in proxy.accepted_at[accepted:]]
        proxy.armed = 0
        assert (await asyncio.wait_for(receiving, TIMEOUT_S))["n"] == 1
    assert after[1] < 0.2, f"connections at {after} s after the nudge"


async def test_replies_cut_says_none_arrived_when_none_did(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy drops each cut reply whole: ``replies_cut`` says none of it arrived, not the
    bytes of earlier replies the parser still keeps (seen: "687 bytes of it had arrived")."""
    proxy = ArmedProxy(redis_topology)
    async with behind(proxy, redis_topology, "pace-bytes") as (first, other):
        with caplog.at_level(logging.WARNING, logger="channels_ha.reader"):
            await receive_after_cut(first, other, proxy, master_client, 3, 1)
    events = cut_events(caplog)
    assert len(events) == 1, [r.getMessage() for r in events]
    assert getattr(events[0], "received", None) == 0, events[0].getMessage()
    assert "none of it had arrived" in events[0].getMessage()
