"""The Prometheus collector reports the layers' statistics at scrape time, after real traffic."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.test import AsyncClient, override_settings
from prometheus_client import REGISTRY, CollectorRegistry

from channels_ha import RedisChannelLayer, channel_layers, parse_url
from channels_ha.metrics import METRICS, LayerCollector, register
from channels_ha.sandbox import StandaloneTopology, Topology, TopologyFactory
from tests import django_settings


@pytest.fixture(autouse=True, scope="module")
def _django() -> None:
    """Django is set up for this module."""
    django_settings.setup()


@pytest.fixture
async def layer_on() -> AsyncIterator[Callable[[Topology], RedisChannelLayer]]:
    """Makes CHANNEL_LAYERS['metrics'] a channels-ha layer on a topology; closes it after."""
    made: list[tuple[RedisChannelLayer, override_settings]] = []

    def make(topology: Topology) -> RedisChannelLayer:
        setting = channel_layers(parse_url(topology.url), alias="metrics", prefix="metrics")
        override = override_settings(CHANNEL_LAYERS=setting)
        override.enable()
        layer = get_channel_layer("metrics")
        assert isinstance(layer, RedisChannelLayer)
        made.append((layer, override))
        return layer

    yield make
    for layer, override in reversed(made):
        await layer.close()
        override.disable()


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"alias": "metrics", **labels})


async def _traffic(layer: RedisChannelLayer, messages: int) -> None:
    channel = await layer.new_channel()
    await layer.group_add("watchers", channel)
    for i in range(messages):
        await layer.send(channel, {"type": "n", "i": i})
    await layer.group_send("watchers", {"type": "all"})
    for _ in range(messages + 1):
        await layer.receive(channel)


async def test_counters_after_traffic(redis_standalone: StandaloneTopology, layer_on: Any) -> None:
    """Sent, received and group sends match the traffic; gauges and shard metrics are there."""
    layer = layer_on(redis_standalone)
    await _traffic(layer, 5)
    registry = CollectorRegistry()
    register(registry)
    assert _value(registry, "channels_ha_messages_sent_total") == 5
    assert _value(registry, "channels_ha_messages_received_total") == 6
    assert _value(registry, "channels_ha_group_sends_total") == 1
    assert _value(registry, "channels_ha_buffered_messages") == 0
    assert _value(registry, "channels_ha_sessions") == 1
    shard = {"shard": "0", "topology": layer.statistics().shards[0].topology}
    assert _value(registry, "channels_ha_failovers_total", **shard) == 0
    assert _value(registry, "channels_ha_master_wait_seconds_total", **shard) > 0
    master = f"tcp://{redis_standalone.node.host}:{redis_standalone.node.port}"
    assert _value(registry, "channels_ha_master_info", **shard, address=master) == 1


@pytest.mark.slow
async def test_restart_counted(redis_sandbox_factory: TopologyFactory, layer_on: Any) -> None:
    """A master restarted empty counts as a failover, with its time and the reconnect."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    layer = layer_on(topology)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "before"})
    await layer.receive(channel)
    started = time.time()
    await topology.node.arestart_empty()
    await layer.send(channel, {"type": "after"})
    await layer.receive(channel)
    registry = CollectorRegistry()
    register(registry)
    shard = {"shard": "0", "topology": layer.statistics().shards[0].topology}
    assert _value(registry, "channels_ha_failovers_total", **shard) == 1
    assert _value(registry, "channels_ha_reconnects_total", **shard) >= 1
    assert _value(registry, "channels_ha_last_failover_timestamp_seconds", **shard) >= started


def test_describe_reads_no_statistics() -> None:
    """Registering asks describe(), which lists every metric without reading any layer."""

    def no_reading() -> dict[str, object]:
        raise AssertionError("statistics read at registration")

    collector = LayerCollector(no_reading)  # type: ignore[arg-type]
    CollectorRegistry().register(collector)
    suffixes = {"counter": "_total", "info": "_info", "gauge": ""}
    exposed = {metric.name + suffixes[metric.type] for metric in collector.describe()}
    assert exposed == set(METRICS)


def test_register_is_idempotent() -> None:
    """register() on the same registry returns the collector it registered before."""
    registry = CollectorRegistry()
    assert register(registry) is register(registry)


async def test_metrics_view(redis_standalone: StandaloneTopology, layer_on: Any) -> None:
    """The metrics view serves the default registry in Prometheus's text format."""
    layer = layer_on(redis_standalone)
    await _traffic(layer, 1)
    register(REGISTRY)
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert 'channels_ha_messages_sent_total{alias="metrics"} 1.0' in response.content.decode()
