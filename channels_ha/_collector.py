"""The Prometheus collector of channels_ha.metrics: imports prometheus_client, which
channels_ha.metrics leaves to first use so that a urls.py importing its view works without it
(check E004 names what is missing)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from ._stats import LayerStatistics, ShardStatistics
from .metrics import LAST_FAILOVER, LAYER_METRICS, MASTER_INFO, SHARD_METRICS

__all__ = ["LayerCollector", "created_layers", "register_on"]

_LAYER = ["alias"]
_SHARD = ["alias", "shard", "topology"]

Layers = Callable[[], Mapping[str, LayerStatistics]]


def created_layers() -> dict[str, LayerStatistics]:
    """The statistics of every channel layer created in this process that has them."""
    from channels.layers import channel_layers

    found = {}
    for alias, layer in list(channel_layers.backends.items()):
        statistics = getattr(layer, "statistics", None)
        result = statistics() if callable(statistics) else None
        if isinstance(result, LayerStatistics):
            found[alias] = result
    return found


class LayerCollector:
    """A prometheus_client collector reading the layers' statistics when scraped."""

    def __init__(self, layers: Layers = created_layers) -> None:
        self._layers = layers

    def describe(self) -> list[Metric]:
        """The metric families without samples, so that registering reads no statistics."""
        return list(_families({}))

    def collect(self) -> list[Metric]:
        return list(_families(self._layers()))


def _family(name: str, kind: str, doc: str, labels: list[str]) -> Any:
    factory = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return factory(name, doc, labels=labels)


def _families(layers: Mapping[str, LayerStatistics]) -> Iterator[Metric]:
    for name, kind, field, doc in LAYER_METRICS:
        family = _family(name, kind, doc, _LAYER)
        for alias, stats in layers.items():
            family.add_metric([alias], float(getattr(stats, field)))
        yield family
    shards = [
        (alias, index, shard) for alias, s in layers.items() for index, shard in enumerate(s.shards)
    ]
    for name, kind, field, doc in SHARD_METRICS:
        family = _family(name, kind, doc, _SHARD)
        for alias, index, shard in shards:
            family.add_metric(_shard_labels(alias, index, shard), float(getattr(shard, field)))
        yield family
    yield from _shard_state(shards)


def _shard_labels(alias: str, index: int, shard: ShardStatistics) -> list[str]:
    return [alias, str(index), shard.topology]


def _shard_state(shards: list[tuple[str, int, ShardStatistics]]) -> Iterator[Metric]:
    """When each shard last saw a new master, and which master it is connected to."""
    last = GaugeMetricFamily(
        LAST_FAILOVER, "Unix time of the last new master server run seen.", labels=_SHARD
    )
    master = InfoMetricFamily(MASTER_INFO, "The master a shard last connected to.", labels=_SHARD)
    for alias, index, shard in shards:
        labels = _shard_labels(alias, index, shard)
        if shard.last_server_change is not None:
            last.add_metric(labels, shard.last_server_change)
        if shard.master is not None:
            master.add_metric(labels, {"address": shard.master})
    yield last
    yield master


_registered: weakref.WeakKeyDictionary[CollectorRegistry, LayerCollector] = (
    weakref.WeakKeyDictionary()
)


def register_on(registry: CollectorRegistry | None) -> LayerCollector:
    """Registers the layers' collector on ``registry`` (prometheus_client's default one when
    None), once; later calls return it."""
    registry = REGISTRY if registry is None else registry
    collector = _registered.get(registry)
    if collector is None:
        collector = _registered[registry] = LayerCollector()
        registry.register(collector)
    return collector
