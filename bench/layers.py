"""The layers under test, built by name from a topology's URL, and closed the way each wants.

channels_redis is given exactly the Redis that channels-ha gets: its ``hosts`` entry comes from
``channels_ha.parse_url(url).to_channels_redis_host()`` (TLS options and the Sentinel host dict
included). Names rather than objects cross process boundaries, so worker processes build their
own layers. Every run gets a fresh prefix, so runs never see each other's keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from channels_ha import RedisChannelLayer, parse_url

CHANNELS_HA, CORE, PUBSUB = "channels_ha", "core", "pubsub"
LAYERS = (CHANNELS_HA, CORE, PUBSUB)

# Back-pressure is not what these workloads measure: with channels_redis's default capacity
# (100) its core layer raises ChannelFull as soon as a producer is 100 messages ahead, and
# group_send silently skips full channels. Both layers with a capacity get this one.
CAPACITY = 1_000_000
CLOSE_TIMEOUT_S = 10.0


def new_prefix() -> str:
    """A key prefix no other run uses; every process of one run shares it."""
    return f"bench{uuid.uuid4().hex[:10]}"


def make_layer(name: str, url: str, prefix: str) -> Any:
    """A new layer ``name`` on the Redis at ``url``, its keys under ``prefix``."""
    if name == CHANNELS_HA:
        return RedisChannelLayer(hosts=[url], prefix=prefix, capacity=CAPACITY)
    host = parse_url(url).to_channels_redis_host()
    if name == CORE:
        from channels_redis.core import RedisChannelLayer as CoreLayer  # type: ignore[import-untyped]

        return CoreLayer(hosts=[host], prefix=prefix, capacity=CAPACITY)
    if name == PUBSUB:
        from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]

        return RedisPubSubChannelLayer(hosts=[host], prefix=prefix)
    raise ValueError(f"unknown layer {name!r}; choose from {', '.join(LAYERS)}")


@asynccontextmanager
async def open_layer(name: str, url: str, prefix: str) -> AsyncIterator[Any]:
    """A layer for the duration of the block, closed (within a bound) on the way out."""
    layer = make_layer(name, url, prefix)
    try:
        yield layer
    finally:
        await asyncio.wait_for(close_layer(layer), CLOSE_TIMEOUT_S)


async def close_layer(layer: Any) -> None:
    """Closes the layer's connections on this event loop."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    if isinstance(layer, RedisChannelLayer):
        await layer.close()
    elif isinstance(layer, RedisPubSubChannelLayer):
        await layer.flush()  # what closes its connections (it has no close_pools)
    else:
        await layer.close_pools()
