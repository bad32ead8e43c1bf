"""A large message over a slow link is progress, not a hung server; a hung server still is.

The reply watchdogs drop a connection that answers nothing within ``socket_timeout``; a
reply or request still moving byte by byte must not count as nothing. Here a proxy on
loopback passes one direction at a fixed rate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest

from channels_ha import RedisChannelLayer
from channels_ha.sandbox import StandaloneTopology, Topology

pytestmark = pytest.mark.redis_topologies("standalone")

RATE = 4 << 20  # bytes per second through the slow direction
CHUNK = 64 << 10
TIMEOUT_S = 2.5  # socket_timeout: each transfer below takes longer; what the socket
# buffers hold (up to 4 MB leaves unseen: tcp_wmem) drains well within it


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
            if slow:
                await asyncio.sleep(len(data) / RATE)  # the rate limit itself
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def slow_proxy(topology: Topology, *, upstream_slow: bool) -> AsyncIterator[int]:
    """A port forwarding to the topology's node, one direction at ``RATE``."""
    assert isinstance(topology, StandaloneTopology)
    node, pipes = topology.node, set()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(node.host, node.port)
        for pipe in (
            _pipe(client_r, server_w, slow=upstream_slow),
            _pipe(server_r, client_w, slow=not upstream_slow),
        ):
            task = asyncio.ensure_future(pipe)
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHUNK)  # no big buffer to hide in
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=listener)
    try:
        yield listener.getsockname()[1]
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*pipes)
        await server.wait_closed()


@asynccontextmanager
async def direct_and_slow(
    topology: Topology, *, upstream_slow: bool, query: str
) -> AsyncIterator[tuple[RedisChannelLayer, RedisChannelLayer]]:
    """A layer straight to Redis, and one through the slow proxy (``query`` on its URL)."""
    prefix = f"slow{uuid.uuid4().hex[:8]}"
    direct = RedisChannelLayer(hosts=[topology.url], prefix=prefix)
    async with slow_proxy(topology, upstream_slow=upstream_slow) as port:
        slow = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0?{query}"], prefix=prefix)
        try:
            yield direct, slow
        finally:
            await slow.close()
            await direct.close()


async def test_a_large_batch_arriving_slowly_is_received(redis_topology: Topology) -> None:
    """Seen: the blocking pop's watchdog dropped the connection while a 48 MB batch was still
    arriving; Redis had already removed it from the list, and all of it was lost."""
    query = f"socket_timeout={TIMEOUT_S}"
    async with direct_and_slow(redis_topology, upstream_slow=False, query=query) as layers:
        direct, slow = layers
        channel = await slow.new_channel()
        payloads = [os.urandom(4 << 20) for _ in range(6)]  # 6 s at RATE: > 2 s + timeout
        for number, payload in enumerate(payloads):
            await direct.send(channel, {"type": "big", "n": number, "data": payload})
        received = [await asyncio.wait_for(slow.receive(channel), 30) for _ in payloads]
    assert [message["data"] for message in received] == payloads


async def test_a_large_send_leaving_slowly_goes_through(redis_topology: Topology) -> None:
    """Seen: a 24 MB send over a 3 MB/s link was dropped at every socket_timeout and never
    went through; the sends queued behind it waited until failover_timeout."""
    query = f"socket_timeout={TIMEOUT_S}&failover_timeout=20"
    async with direct_and_slow(redis_topology, upstream_slow=True, query=query) as layers:
        receiver, sender = layers
        channel = await receiver.new_channel()
        await sender.send(channel, {"type": "warm-up"})  # connected before timing
        payload = os.urandom(16 << 20)  # 4 s at RATE, more than the socket buffers hold
        started = time.monotonic()
        await sender.send(channel, {"type": "big", "data": payload})
        took = time.monotonic() - started
        await sender.send(channel, {"type": "after"})
        received = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(3)]
    assert [message["type"] for message in received] == ["warm-up", "big", "after"]
    assert received[1]["data"] == payload
    assert took < 15, f"the large send took {took:.1f} s"


async def test_a_frozen_server_under_steady_traffic_is_still_dropped_in_time(
    redis_topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes a frozen server's kernel buffers take are no progress: with a send every 10 ms
    the connection is dropped about socket_timeout after the last reply, not later (a review
    found 2 x socket_timeout), and the sends complete once the server is back."""
    assert isinstance(redis_topology, StandaloneTopology)
    node = redis_topology.node
    url = f"{redis_topology.url.split('?')[0]}?socket_timeout=1&failover_timeout=20"
    layer = RedisChannelLayer(hosts=[url], prefix="frozen", capacity=1000)
    sends: list[asyncio.Task[None]] = []
    try:
        await layer.send("frozen", {"type": "warm-up"})
        node.pause()
        frozen_at = time.time()
        try:
            with caplog.at_level(logging.WARNING, logger="channels_ha.link"):
                for number in range(400):  # 4 s of traffic at most
                    sends.append(asyncio.create_task(layer.send("frozen", {"n": number})))
                    await asyncio.sleep(0.01)  # the pace of the traffic
                    if _dropped(caplog):
                        break
        finally:
            node.resume()
        await asyncio.wait_for(asyncio.gather(*sends), 20)
    finally:
        await layer.close()
    dropped = _dropped(caplog)
    assert dropped, "the frozen server's connection was never dropped"
    assert dropped[0].created - frozen_at < 1.6, dropped[0].created - frozen_at


def _dropped(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("Dropping the connection")]
