"""A connection the server closes right after its handshake, before its first use.

A kill -9, a restart, ``CLIENT KILL`` or an idle timeout can close a connection at any moment,
including the moment between its handshake and its first command. Before this was handled,
the command link adopted the closed connection and lost the requests waiting for it (a call
hung forever, later ones raised ConnectionLost), and the blocking reader ended for good
(receive() then waited forever). Redis is real; only the timing is forced: the server closes
the new connection (``CLIENT KILL ID``) as soon as it is handshaken.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import channels_ha._connection as connection_module
import channels_ha._reader as reader_module
import channels_ha._reconnect as reconnect_module
from channels_ha import RedisChannelLayer
from channels_ha._connection import connect_to_master
from channels_ha._reader import BlockingReader
from channels_ha._reconnect import Reconnector
from channels_ha._resp import Endpoint, FutureSink, RespProtocol
from channels_ha._server import FixedLocator, ServerInfo, ServerSettings
from channels_ha.exceptions import ConnectionLost
from channels_ha.sandbox import Topology

from .conftest import LayerFactory

FAILOVER_TIMEOUT_S = 3.0
RECEIVE_TIMEOUT_S = 5.0
CLOSE_SEEN_TIMEOUT_S = 2.0

pytestmark = pytest.mark.redis_topologies("standalone", "sentinel", "cluster")


async def close_by_server(topology: Topology, protocol: RespProtocol, info: ServerInfo) -> None:
    """Has the server close the connection, and waits until the client has seen it closed."""
    (node,) = [
        n for n in topology.nodes if (n.host, n.port) == (info.endpoint.host, info.endpoint.port)
    ]
    admin = node.async_client()
    try:
        await admin.execute_command("CLIENT", "KILL", "ID", info.client_id)
    finally:
        await admin.aclose()
    await asyncio.wait_for(asyncio.shield(protocol._lost), CLOSE_SEEN_TIMEOUT_S)
    assert protocol.closed


Connect = Callable[..., Awaitable[tuple[RespProtocol, ServerInfo]]]


def closing_the_first(topology: Topology, real: Connect, closed: list[ServerInfo]) -> Connect:
    """``real``, except that the first connection it returns is closed by the server."""

    async def connect(*args: Any, **kwargs: Any) -> tuple[RespProtocol, ServerInfo]:
        protocol, info = await real(*args, **kwargs)
        if not closed:
            await close_by_server(topology, protocol, info)
            closed.append(info)
        return protocol, info

    return connect


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler ("Task exception was never
    retrieved" among others)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def sends_and_arrives(layer: RedisChannelLayer, count: int = 3) -> None:
    """Sends complete within failover_timeout, and their messages arrive."""
    channel = await layer.new_channel()
    for n in range(count):
        await asyncio.wait_for(layer.send(channel, {"type": "n", "n": n}), FAILOVER_TIMEOUT_S)
    for n in range(count):
        message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S)
        assert message == {"type": "n", "n": n}


@pytest.mark.redis_topologies("standalone")
async def test_connect_to_master_refuses_a_connection_closed_after_its_handshake(
    redis_topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection closed between its last handshake reply and the return is a failed
    attempt (ConnectionLost, which every caller retries), not a connection."""
    real = connection_module._handshake
    handshaken: list[RespProtocol] = []

    async def handshake(client: FutureSink, *args: Any) -> ServerInfo:
        info = await real(client, *args)
        assert client.protocol is not None
        await close_by_server(redis_topology, client.protocol, info)
        handshaken.append(client.protocol)
        return info

    monkeypatch.setattr(connection_module, "_handshake", handshake)
    (node,) = redis_topology.nodes
    locator = FixedLocator(Endpoint(node.host, node.port))
    with pytest.raises(ConnectionLost, match="closed the connection"):
        await connect_to_master(locator, ServerSettings(), FutureSink(), False)
    assert handshaken


def _closing_the_link_connect(
    topology: Topology, monkeypatch: pytest.MonkeyPatch, when: str, closed: list[ServerInfo]
) -> None:
    """``at-once``: the server closes the command link's first connection as soon as it is
    made; ``as-adopted``: after every check on connecting, so the first write finds it closed."""
    if when == "at-once":
        connect = closing_the_first(topology, connect_to_master, closed)
        monkeypatch.setattr(reconnect_module, "connect_to_master", connect)
        return
    real = Reconnector._attempt

    async def attempt(waiting: Reconnector) -> tuple[RespProtocol, ServerInfo]:
        return await closing_the_first(topology, lambda: real(waiting), closed)()

    monkeypatch.setattr(Reconnector, "_attempt", attempt)


@pytest.mark.parametrize("when", ["at-once", "as-adopted"])
async def test_a_send_goes_through_when_its_new_connection_closes(
    redis_topology: Topology,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
    loop_errors: list[dict[str, Any]],
    when: str,
) -> None:
    """The command link connects again (the loss of a connection it was adopting is handled
    as any loss, the request written on the next one); no request waits forever or fails
    with ConnectionLost."""
    closed: list[ServerInfo] = []
    _closing_the_link_connect(redis_topology, monkeypatch, when, closed)
    layer = make_layer(redis_topology, failover_timeout=FAILOVER_TIMEOUT_S)
    await sends_and_arrives(layer)
    assert closed, "the first command connection was not closed by the server"
    assert not loop_errors


def _closing_the_reader_connect(
    topology: Topology, monkeypatch: pytest.MonkeyPatch, when: str, closed: list[ServerInfo]
) -> None:
    """``at-once``: the reader's first connection is closed as soon as it is made;
    ``as-taken``: after every check on connecting, so the pop cannot be written."""
    if when == "at-once":
        connect = closing_the_first(topology, connect_to_master, closed)
        monkeypatch.setattr(reader_module, "connect_to_master", connect)
        return
    real = BlockingReader._reconnect

    async def reconnect(reader: BlockingReader, started: float) -> FutureSink:
        async def connect() -> tuple[RespProtocol, ServerInfo]:
            client = await real(reader, started)
            assert client.protocol is not None
            assert reader.connected_to is not None
            return client.protocol, reader.connected_to

        await closing_the_first(topology, connect, closed)()
        assert reader._client is not None
        return reader._client

    monkeypatch.setattr(BlockingReader, "_reconnect", reconnect)


@pytest.mark.parametrize("when", ["at-once", "as-taken"])
async def test_a_receiver_gets_its_message_when_the_readers_new_connection_closes(
    redis_topology: Topology,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
    loop_errors: list[dict[str, Any]],
    when: str,
) -> None:
    """The reader connects again instead of ending; the message waiting in Redis arrives."""
    closed: list[ServerInfo] = []
    _closing_the_reader_connect(redis_topology, monkeypatch, when, closed)
    layer = make_layer(redis_topology, failover_timeout=FAILOVER_TIMEOUT_S)
    await layer.send("closed-reader", {"type": "waiting"})
    message = await asyncio.wait_for(layer.receive("closed-reader"), RECEIVE_TIMEOUT_S)
    assert message == {"type": "waiting"}
    assert closed, "the reader's first connection was not closed by the server"
    await sends_and_arrives(layer)
    assert not loop_errors
