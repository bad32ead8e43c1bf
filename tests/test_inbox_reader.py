"""An inbox pop whose reply is cut after Redis answered loses its batch: counted and logged.

Inbox pops are not acknowledged: Redis removes the batch as it answers. Part of the reply
arrived proves it did; a cut with nothing arrived (a pop blocked on an empty inbox, its
connection dropped) is no loss, and says nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import suppress

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha._constants import INBOX_BATCH_SIZE
from channels_ha.sandbox import Topology

from .test_lost_reply_pace import output_buffer_limit
from .test_normal_reader import TIMEOUT_S, CuttingProxy, behind, blocked_in_redis, message
from .test_normal_reader_recovery import EventSeen

pytestmark = pytest.mark.redis_topologies("standalone")

# Of the cut reply: its header and part of its first message; or its first element only,
# "*2\r\n" (a cut between elements leaves the parser nothing unparsed: seen uncounted).
PASSED_BYTES = (200, 4)
WAITING = 5  # messages in the inbox when the receiver comes


def lost_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "inbox_batch_lost"]


def batches_lost(layer: RedisChannelLayer) -> int | None:
    return getattr(layer.statistics().shards[0], "inbox_batches_lost", None)


@pytest.mark.parametrize("passed_bytes", PASSED_BYTES)
async def test_an_inbox_batch_cut_mid_reply_is_counted_and_logged_once(
    redis_topology: Topology, caplog: pytest.LogCaptureFixture, passed_bytes: int
) -> None:
    """Five messages wait in a process's inbox; the reply to the pop that takes them is
    cut after 200 bytes, or after its first 4 (a proxy closing the connection), and so
    is the next pop's: both batches are counted, one WARNING names the server, the inbox
    and the batch size (the second within the minute only counted), and the next message
    arrives (seen: nothing logged, nothing counted)."""
    proxy = CuttingProxy(redis_topology, cuts=2)
    proxy.passed_bytes = passed_bytes
    lost = EventSeen("inbox_batch_lost")
    logging.getLogger("channels_ha").addHandler(lost)
    try:
        async with behind(proxy, redis_topology, "inbox-cut") as (first, other):
            channel = await first.new_channel()
            for number in range(WAITING):
                await other.send(channel, message(number))
            with caplog.at_level(logging.WARNING, logger="channels_ha.reader"):
                receiving = asyncio.create_task(first.receive(channel))
                await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
                with suppress(asyncio.TimeoutError):  # not logged: reported below
                    await asyncio.wait_for(lost.seen.wait(), TIMEOUT_S)
                proxy.cut_seen.clear()
                await other.send(channel, message(WAITING))  # its pop is cut too
                await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
                await other.send(channel, message(WAITING + 1))
                received = await asyncio.wait_for(receiving, TIMEOUT_S)
            counted = batches_lost(first)
    finally:
        logging.getLogger("channels_ha").removeHandler(lost)
    lines = lost_lines(caplog)
    assert (len(lines), counted) == (1, 2), [r.getMessage() for r in lines]
    text = lines[0].getMessage()
    inbox = first._core.keys.inbox(channel[: channel.index("!") + 1])  # the process's
    assert (lines[0].levelname, proxy.cut) == ("WARNING", 2), text
    assert inbox in text, text
    assert f"up to {INBOX_BATCH_SIZE} messages" in text, text
    assert getattr(lines[0], "received", 0) >= passed_bytes, text
    assert received["n"] == WAITING + 1


def inbox_reader_id(layer: RedisChannelLayer) -> int | None:
    """The client id of the layer's inbox reader, while it is connected."""
    server = layer._session()._readers[(0, True)].live_server
    return None if server is None else server.client_id


async def blocked_again(layer: RedisChannelLayer, admin: redis.Redis, killed: int) -> None:
    """Once the inbox reader is on another connection, blocked in Redis again."""
    deadline = time.monotonic() + TIMEOUT_S
    while inbox_reader_id(layer) in (None, killed) or not _blocked(admin, inbox_reader_id(layer)):
        assert time.monotonic() < deadline, "the reader never blocked again"
        await asyncio.sleep(0.01)  # nothing to await: the wait is inside Redis


def _blocked(admin: redis.Redis, client_id: int | None) -> bool:
    listed = admin.execute_command("CLIENT", "LIST", "ID", client_id)
    return "cmd=blmpop" in str(listed) and "flags=b" in str(listed)


async def test_an_idle_pop_whose_connection_is_killed_is_no_loss(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver waits on an empty inbox and its reader's connection is killed (CLIENT
    KILL): nothing of a reply had arrived, the pop took nothing, so nothing is logged or
    counted, and the next message arrives."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix=f"idle-{uuid.uuid4().hex[:8]}")
    try:
        channel = await layer.new_channel()
        blocked = int(master_client.info("clients")["blocked_clients"])
        with caplog.at_level(logging.INFO, logger="channels_ha"):
            receiving = asyncio.create_task(layer.receive(channel))
            await blocked_in_redis(master_client, blocked)
            killed = inbox_reader_id(layer)
            assert killed is not None
            master_client.execute_command("CLIENT", "KILL", "ID", killed)
            await blocked_again(layer, master_client, killed)
            await layer.send(channel, message(1))
            received = await asyncio.wait_for(receiving, TIMEOUT_S)
        counted = batches_lost(layer)
    finally:
        await layer.close()
    assert lost_lines(caplog) == []
    assert counted == 0
    assert received["n"] == 1


async def test_a_reply_over_the_hard_output_buffer_limit_arrives_not_at_all(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis cuts a reply over its hard client-output-buffer-limit before any of it leaves:
    the inbox batch (messages waiting and a 2 MB one) is lost, but the reader cannot tell
    that cut from an idle pop's, so it is neither counted nor logged as inbox_batch_lost
    (failover.md says so: only replies_cut, from the third in a row, tells of it)."""
    prefix = f"inbox-limit-{uuid.uuid4().hex[:8]}"
    first = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
    other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
    try:
        channel = await first.new_channel()
        await other.send("warm-up", {"type": "warm-up"})  # the command link connects now
        with caplog.at_level(logging.INFO, logger="channels_ha"):
            with output_buffer_limit(master_client, "1mb"):
                for number in range(WAITING):
                    await other.send(channel, message(number))
                await other.send(channel, {"type": "big", "b": "x" * (2 << 20)})
                blocked = int(master_client.info("clients")["blocked_clients"])
                receiving = asyncio.create_task(first.receive(channel))
                await blocked_in_redis(master_client, blocked)  # on the emptied inbox
            await other.send(channel, message(WAITING))
            received = await asyncio.wait_for(receiving, TIMEOUT_S)
        counted = batches_lost(first)
    finally:
        await first.close()
        await other.close()
    assert received["n"] == WAITING  # the batch before it is gone
    assert (len(lost_lines(caplog)), counted) == (0, 0)
