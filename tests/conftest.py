"""Fixtures shared by the layer tests; the Redis topologies come from the sandbox plugin."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from channels_ha import RedisChannelLayer, parse_url
from channels_ha._interop import close_sync_client, sync_client
from channels_ha.sandbox import Topology

LayerFactory = Callable[..., RedisChannelLayer]


@pytest.fixture
async def make_layer() -> AsyncIterator[LayerFactory]:
    """Builds layers on a topology, each with a prefix of its own; closes them afterwards."""
    created: list[RedisChannelLayer] = []

    def make(topology: Topology, **options: Any) -> RedisChannelLayer:
        options.setdefault("prefix", f"test{uuid.uuid4().hex[:10]}")
        layer = RedisChannelLayer(hosts=[topology.url], **options)
        created.append(layer)
        return layer

    yield make
    for layer in created:
        await layer.close()


@pytest.fixture
def layer(make_layer: LayerFactory, redis_topology: Topology) -> RedisChannelLayer:
    """A layer on the topology this test is parametrized with."""
    return make_layer(redis_topology)


@pytest.fixture
def master_client(redis_topology: Topology) -> Iterator[redis.Redis]:
    """A plain redis-py client on the current master, to look at what the layer stored."""
    client = sync_client(parse_url(redis_topology.url))
    yield client
    close_sync_client(client)
