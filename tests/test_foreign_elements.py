"""Elements that something else wrote to the layer's lists are dropped, not fatal.

The lists are plain Redis keys under the layer's prefix: an operator's ``RPUSH``, a script or
another program sharing the prefix can put anything there. Such an element must not stop the
reader that popped it (every receiver of the process would wait forever), nor hide the real
messages popped with it.
"""

from __future__ import annotations

import asyncio
import logging

import msgpack
import pytest
import redis

from channels_ha import RedisChannelLayer, RedisCommandError
from channels_ha._keys import KeyLayout
from channels_ha.sandbox import Topology

from .conftest import LayerFactory, receivers_waiting

pytestmark = pytest.mark.redis_topologies("standalone", "cluster")

RECEIVE_TIMEOUT_S = 5.0
_EXPIRY = b"9999999999999"  # a channels-ha element starts with its expiry, 13 digits
FOREIGN = [
    b"plain text",
    _EXPIRY + b"\xc1",  # a byte msgpack never uses
    _EXPIRY + msgpack.packb(42),
    _EXPIRY + msgpack.packb(["sender", "not a number", "target", b"body"]),
    _EXPIRY + msgpack.packb(["sender", 1, [1, 2], b"body"]),
]


async def test_foreign_elements_in_an_inbox_are_dropped(
    layer: RedisChannelLayer, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Popped in one batch with a real message: that one arrives, the others are counted."""
    channel = await layer.new_channel()
    inbox = KeyLayout(layer.prefix).inbox(channel.split("!")[0] + "!")
    master_client.rpush(inbox, *FOREIGN)
    await layer.send(channel, {"type": "real"})
    with caplog.at_level(logging.WARNING, logger="channels_ha.layer"):
        received = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S)
    assert received == {"type": "real"}
    assert layer.statistics().malformed_dropped == len(FOREIGN)
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "malformed_dropped"]
    assert len(warnings) == 1  # rate-limited: one line for the batch
    assert b"plain text".decode() not in warnings[0].getMessage()  # never the contents


async def test_a_foreign_element_on_a_normal_channel_does_not_stop_its_reader(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A normal channel is popped one element at a time: after the foreign one, the reader
    pops again for the receiver that is still waiting."""
    master_client.rpush(KeyLayout(layer.prefix).channel("shared-queue"), b"plain text")
    await layer.send("shared-queue", {"type": "real"})
    received = await asyncio.wait_for(layer.receive("shared-queue"), RECEIVE_TIMEOUT_S)
    assert received == {"type": "real"}
    assert layer.statistics().malformed_dropped == 1


async def test_a_full_list_with_a_foreign_head_still_takes_sends(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """The PUSH script makes room in a full list by dropping what expired; a foreign element
    has no expiry, and is dropped the same way rather than failing the send."""
    layer = make_layer(redis_topology, capacity=1)
    master_client.rpush(KeyLayout(layer.prefix).channel("full-queue"), b"plain text")
    await layer.send("full-queue", {"type": "real"})
    received = await asyncio.wait_for(layer.receive("full-queue"), RECEIVE_TIMEOUT_S)
    assert received == {"type": "real"}


async def test_a_foreign_key_fails_only_the_receivers_of_its_reader(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A key of another type under a normal channel's name makes that channel's receive()
    raise; receivers on process channels, popped by another reader, go on waiting."""
    specific = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(specific))
    await receivers_waiting(layer, specific)
    master_client.set(KeyLayout(layer.prefix).channel("poisoned"), "not a list")
    with pytest.raises(RedisCommandError, match="WRONGTYPE"):
        await asyncio.wait_for(layer.receive("poisoned"), RECEIVE_TIMEOUT_S)
    await layer.send(specific, {"type": "still waited for"})
    assert await asyncio.wait_for(waiting, RECEIVE_TIMEOUT_S) == {"type": "still waited for"}


async def test_a_foreign_key_fails_only_the_receivers_of_its_channel(
    layer: RedisChannelLayer, master_client: redis.Redis
) -> None:
    """A key of another type under a normal channel's name fails that channel's receive()
    only: a receiver already waiting on another normal channel, popped by the same reader
    in the same request, goes on waiting and gets its message (seen: WRONGTYPE for it too,
    and for every normal channel's receiver of the process while one waited on the key)."""
    master_client.set(KeyLayout(layer.prefix).channel("poisoned"), "not a list")
    healthy = asyncio.create_task(layer.receive("healthy"))
    await receivers_waiting(layer, "healthy")
    for _ in range(2):  # and again: a receiver trying once more fails alone as well
        with pytest.raises(RedisCommandError, match="WRONGTYPE"):
            await asyncio.wait_for(layer.receive("poisoned"), RECEIVE_TIMEOUT_S)
    assert not healthy.done()
    await layer.send("healthy", {"type": "still waited for"})
    assert await asyncio.wait_for(healthy, RECEIVE_TIMEOUT_S) == {"type": "still waited for"}
