"""Event loops closed without shutting down (``run_until_complete``, then ``close()``): what
their sessions left goes quietly when the layer next opens one (``_dead_loop``)."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha.sandbox import Topology

pytestmark = pytest.mark.redis_topologies("standalone")

LOOPS = 20


def _layer_clients(layer: RedisChannelLayer, master_client: redis.Redis) -> int:
    """The layer's connections the server has open (they carry the layer's client name)."""
    name = layer._shard_specs()[0].settings.client_name
    return sum(1 for client in master_client.client_list() if client.get("name") == name)


def _run_and_close(layer: RedisChannelLayer, coroutine: object) -> object:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)  # type: ignore[arg-type]
    finally:
        loop.close()  # no shutdown: the session's tasks and sockets are stranded


def test_loops_closed_without_shutdown_leave_no_task_nor_socket(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """20 loops closed after a send(): once pruned, their sockets are closed (the server
    counts none) and no task of theirs is logged destroyed pending, nor a transport unclosed."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="dead-loops")
    for number in range(LOOPS):
        _run_and_close(layer, layer.send(f"dead-{number}", {"type": "m"}))
    assert _layer_clients(layer, master_client) >= 1  # the last loop's, not yet pruned
    asyncio.run(layer.flush())  # prunes them all, and closes its own at the loop's end
    assert _layer_clients(layer, master_client) == 0
    gc.collect()  # (old code: the destroyed tasks are logged, the transports warn, here)
    destroyed = [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    assert not destroyed, f"{len(destroyed)} tasks destroyed pending"


async def _two_channels(layer: RedisChannelLayer) -> tuple[str, str]:
    return await layer.new_channel(), await layer.new_channel()


def test_messages_buffered_in_a_dead_loop_are_logged_lost(
    redis_topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    """What a dead loop's receivers had popped and not delivered is logged lost (return_lost)
    when its session is pruned: no other session can deliver it."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="dead-buffers")
    mine, other = asyncio.run(_two_channels(layer))  # the process's inbox holds both
    for number in range(5):
        asyncio.run(layer.send(mine if number == 0 else other, {"type": "m", "n": number}))
    assert _run_and_close(layer, layer.receive(mine))["n"] == 0  # type: ignore[index]
    with caplog.at_level(logging.ERROR, "channels_ha.layer"):
        asyncio.run(layer.flush())
    lost = [r for r in caplog.records if getattr(r, "event", None) == "return_lost"]
    assert [r.messages for r in lost] == [4]  # type: ignore[attr-defined]
