"""The command link when the server refuses requests, forgets scripts, or stops answering.

These are the paths a failover exercises in passing; here each is produced on purpose with
a real server: ``min-replicas-to-write`` (NOREPLICAS), ``SCRIPT FLUSH`` (NOSCRIPT), SIGSTOP.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis

from channels_ha import RedisChannelLayer, RedisCommandError, RedisUnavailable
from channels_ha._resp import Endpoint, FutureSink, open_connection
from channels_ha.sandbox import StandaloneTopology, TopologyFactory

from .conftest import LayerFactory, marker_is_next


@pytest.fixture
def node(redis_sandbox_factory: TopologyFactory) -> StandaloneTopology:
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    return topology


def admin(node: StandaloneTopology) -> redis.Redis:
    return node.nodes[0].client()  # type: ignore[no-any-return]


async def counted_connection(node: StandaloneTopology) -> tuple[FutureSink, list[bytes]]:
    """A connection to ``node`` and the list of the writes its transport gets."""
    client = FutureSink()
    server = node.nodes[0]
    client.protocol = await open_connection(Endpoint(server.host, server.port), client, 2.0)
    transport = client.protocol._transport
    assert transport is not None
    writes: list[bytes] = []
    write = transport.write

    def counting_write(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = counting_write  # type: ignore[method-assign,assignment]
    return client, writes


async def test_a_lone_request_goes_out_at_once_and_a_burst_in_one_write(
    node: StandaloneTopology,
) -> None:
    """The first request of a loop iteration is written before the loop comes round (Redis
    starts on it meanwhile); what follows in the same iteration is coalesced into one write."""
    client, writes = await counted_connection(node)
    try:
        lone = client.submit("PING")
        assert len(writes) == 1  # already written, nothing awaited yet
        assert await lone == b"PONG"
        writes.clear()
        burst = [client.submit("INCR", "coalesced") for _ in range(1000)]
        assert len(writes) == 1  # the first one; the other 999 wait for the flush
        assert await asyncio.gather(*burst) == list(range(1, 1001))  # in order, none lost
        assert len(writes) == 2
    finally:
        await client.protocol.aclose()


async def test_a_request_after_a_reply_goes_out_at_once_with_nothing_scheduled(
    node: StandaloneTopology,
) -> None:
    """Once the replies came back, the next request is written at once and schedules no
    flush (a callback and a loop turn per request, before); one written before any reply
    came back waits for the flush, with the rest of its loop iteration."""
    client, writes = await counted_connection(node)
    protocol = client.protocol
    try:
        for expected in range(1, 4):
            request = client.submit("INCR", "lone")
            assert len(writes) == expected  # written, nothing scheduled
            assert not protocol._flush_due
            assert await request == expected
        blocked = client.submit("BLPOP", "never-pushed", 0.2)  # no reply for 0.2 s
        after = client.submit("PING")
        assert len(writes) == 4
        assert protocol._flush_due  # the PING waits for the flush
        assert await after == b"PONG"
        assert await blocked is None
        assert len(writes) == 5
    finally:
        await protocol.aclose()


async def test_refused_writes_wait_and_arrive_once_in_order(
    node: StandaloneTopology, make_layer: LayerFactory
) -> None:
    """Writes refused with NOREPLICAS are retried, paced, and land once each, in order."""
    layer = make_layer(node, failover_timeout=20, capacity=1000)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "warm", "n": -1})
    client = admin(node)
    client.config_set("min-replicas-to-write", 1)  # no replica: every write is refused
    sends = [asyncio.create_task(layer.send(channel, {"type": "n", "n": n})) for n in range(20)]
    normal = asyncio.create_task(layer.send("refused-normal", {"type": "n", "n": 0}))
    await asyncio.sleep(1.0)  # the refusals are the behaviour under test: let them repeat
    assert not any(task.done() for task in sends)
    reconnects = layer.statistics().shards[0].reconnects
    client.config_set("min-replicas-to-write", 0)
    client.close()
    await asyncio.wait_for(asyncio.gather(*sends, normal), 10)
    assert reconnects < 20, "refused writes must back off, not reconnect in a loop"
    received = [(await layer.receive(channel))["n"] for _ in range(21)]
    assert received == list(range(-1, 20))
    assert (await layer.receive("refused-normal"))["n"] == 0
    await marker_is_next(layer, layer, channel)


async def test_script_cache_flushed_mid_traffic(
    node: StandaloneTopology, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """After SCRIPT FLUSH the scripts are loaded again and no message is lost or doubled.
    The log says so, not that a master is sought (seen: "Redis at ... is not usable as
    master (NOSCRIPT); looking for the master", which reads like a failover)."""
    layer = make_layer(node, capacity=1000)
    channel = await layer.new_channel()
    client = admin(node)
    with caplog.at_level(logging.WARNING, logger="channels_ha.link"):
        for n in range(50):
            if n == 25:
                client.script_flush()
            await layer.send(channel, {"type": "n", "n": n})
    client.close()
    assert [(await layer.receive(channel))["n"] for _ in range(50)] == list(range(50))
    events = [(getattr(r, "event", None), r.getMessage()) for r in caplog.records]
    assert [event for event, _ in events] == ["scripts_flushed", "connection_lost"], events
    assert "loading them again" in events[0][1]
    assert "master" not in events[0][1] + events[1][1], events


async def test_a_message_over_proto_max_bulk_len_is_named_as_too_large(
    node: StandaloneTopology, make_layer: LayerFactory
) -> None:
    """Seen with a 600 MB message: RedisCommandError("ERR Protocol error: invalid bulk
    length"), naming neither the message nor the setting. Here the server's limit is 1 MB
    (its least) and the message 2 MB; the layer goes on."""
    layer = make_layer(node)
    channel = await layer.new_channel()
    await layer.group_add("large", channel)
    client = admin(node)
    client.config_set("proto-max-bulk-len", "1mb")
    try:
        large = {"type": "x", "s": b"a" * 2_000_000}
        with pytest.raises(RedisCommandError, match="larger than Redis accepts") as sent:
            await layer.send(channel, large)
        with pytest.raises(RedisCommandError, match="larger than Redis accepts") as grouped:
            await layer.group_send("large", large)
        assert "proto-max-bulk-len" in str(sent.value) + str(grouped.value)
    finally:
        client.config_set("proto-max-bulk-len", "512mb")
        client.close()
    await layer.send(channel, {"type": "small"})
    assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "small"


async def test_close_does_not_leave_a_send_hanging(node: StandaloneTopology) -> None:
    """A send in flight to a frozen server ends with RedisUnavailable when the layer closes."""
    layer = RedisChannelLayer(hosts=[node.url], failover_timeout=30)
    await layer.send("before", {"type": "x"})
    node.nodes[0].pause()
    try:
        sending = asyncio.create_task(layer.send("frozen", {"type": "x"}))
        await asyncio.sleep(0.1)  # the send must be in flight when close() starts
        started = time.monotonic()
        await layer.close()
        with pytest.raises(RedisUnavailable):
            await asyncio.wait_for(sending, 5)
        assert time.monotonic() - started < 5
    finally:
        node.nodes[0].resume()
