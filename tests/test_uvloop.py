"""The layer on uvloop, the event loop uvicorn uses by default (its transports are not
asyncio.Transport subclasses)."""

from __future__ import annotations

import asyncio

import uvloop

from channels_ha import RedisChannelLayer
from channels_ha.sandbox import SentinelTopology, TopologyFactory, Traffic


def test_roundtrip_and_groups_on_uvloop(redis_sentinel: SentinelTopology) -> None:
    """send, receive, group_send and close work on a uvloop event loop."""

    async def scenario() -> list[str]:
        layer = RedisChannelLayer(hosts=[redis_sentinel.url], prefix="uvloop")
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "direct"})
            await layer.group_add("uv", channel)
            await layer.group_send("uv", {"type": "grouped"})
            return [(await layer.receive(channel))["type"] for _ in range(2)]
        finally:
            await layer.flush()
            await layer.close()

    assert uvloop.run(scenario()) == ["direct", "grouped"]


def test_failover_on_uvloop(redis_sandbox_factory: TopologyFactory) -> None:
    """Through a master killed with kill -9, nothing is raised, lost or doubled on uvloop."""
    sentinel = redis_sandbox_factory("sentinel")
    assert isinstance(sentinel, SentinelTopology)

    async def scenario() -> str:
        layers = [RedisChannelLayer(hosts=[sentinel.url], capacity=5000) for _ in range(3)]
        traffic = Traffic(layers[0], layers[1:], rate_per_s=400, concurrency=8)  # type: ignore[arg-type]
        try:
            await traffic.start()
            await traffic.wait_sent(100, timeout_s=10)
            old = await sentinel.acurrent_master()
            old.kill()
            await sentinel.await_new_master(old)
            await traffic.wait_sent(traffic.sent + 200, timeout_s=40)
            report = await traffic.stop(drain_timeout_s=15)
            assert report.ok, report.summary()
            return report.summary()
        finally:
            await asyncio.gather(*(layer.close() for layer in layers))

    assert "lost 0" in uvloop.run(scenario())
