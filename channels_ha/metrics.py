"""Prometheus metrics of the channel layers, read from their ``statistics()`` at scrape time.

Off by default, and free when off: the layer keeps its statistics anyway, and this module only
reads them when Prometheus scrapes, so the hot path pays nothing either way. Turn it on with
``CHANNELS_HA_METRICS = True`` (the app then registers the collector on prometheus_client's
default registry) or :func:`register`; expose it with :func:`metrics_view` or prometheus_client's
own ``make_asgi_app()``. Needs the ``channels-ha[metrics]`` extra.

Every metric has the label ``alias`` (the ``CHANNEL_LAYERS`` alias); the per-shard ones add
``shard`` (the index of the Redis in ``hosts``) and ``topology`` (what the shard connects to).
Layers appear once they have been created in this process (``get_channel_layer()``); values are
per process, as the layer's statistics are.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ._stats import LayerStatistics, ShardStatistics

__all__ = ["METRICS", "LayerCollector", "metrics_view", "register"]

_LAYER = ["alias"]
_SHARD = ["alias", "shard", "topology"]
# (name, type, statistics field, meaning): layer-wide first, then per shard.
LAYER_METRICS = (
    ("channels_ha_messages_sent", "counter", "sent", "Messages accepted by send()."),
    ("channels_ha_messages_received", "counter", "received", "Messages returned by receive()."),
    ("channels_ha_group_sends", "counter", "group_sends", "Calls of group_send()."),
    (
        "channels_ha_group_member_reads",
        "counter",
        "group_member_reads",
        "group_send() calls that read the member list: all on Cluster; elsewhere the first "
        "to a group and those after its members changed.",
    ),
    (
        "channels_ha_duplicates_dropped",
        "counter",
        "duplicates_dropped",
        "Messages delivered twice after a retry, dropped before receive().",
    ),
    (
        "channels_ha_messages_expired",
        "counter",
        "expired",
        "Messages that expired before anyone received them.",
    ),
    (
        "channels_ha_malformed_dropped",
        "counter",
        "malformed_dropped",
        "List elements that were not channels-ha messages (written by something else), dropped.",
    ),
    (
        "channels_ha_replica_ack_shortfalls",
        "counter",
        "replica_ack_shortfalls",
        "Sends that fewer replicas acknowledged than replica_acks asks for.",
    ),
    (
        "channels_ha_buffered_messages",
        "gauge",
        "buffered",
        "Messages in this process's inboxes waiting for receive().",
    ),
    ("channels_ha_sessions", "gauge", "sessions", "Event loops with open Redis connections."),
)
SHARD_METRICS = (
    (
        "channels_ha_failovers",
        "counter",
        "server_changes",
        "New master server runs seen: failovers and restarts.",
    ),
    ("channels_ha_reconnects", "counter", "reconnects", "Connections made again after a loss."),
    (
        "channels_ha_retries",
        "counter",
        "retries",
        "Requests written again after a lost reply or to a new master.",
    ),
    (
        "channels_ha_master_wait_seconds",
        "counter",
        "master_wait_s",
        "Time spent connecting or waiting for a usable master.",
    ),
    (
        "channels_ha_delivery_failures",
        "counter",
        "delivery_failures",
        "Popped batches of messages lost to a bug in handing them to their receivers.",
    ),
    (
        "channels_ha_replay_dropped",
        "counter",
        "replay_dropped",
        "Writes of the last 2 s not kept for writing again after a failover: over the "
        "replay buffer's byte cap.",
    ),
    (
        "channels_ha_inbox_batches_lost",
        "counter",
        "inbox_batches_lost",
        "Inbox pops whose reply was cut after part of it arrived: their batch of up to 512 "
        "messages, which Redis had removed, lost unless a failover brings it back.",
    ),
)
LAST_FAILOVER = "channels_ha_last_failover_timestamp_seconds"
MASTER_INFO = "channels_ha_master"
#: Every exposed metric name (counters with their ``_total`` suffix).
METRICS = (
    *(f"{name}_total" if kind == "counter" else name for name, kind, *_ in LAYER_METRICS),
    *(f"{name}_total" for name, *_ in SHARD_METRICS),
    LAST_FAILOVER,
    f"{MASTER_INFO}_info",
)
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


def register(registry: CollectorRegistry = REGISTRY) -> LayerCollector:
    """Registers the layers' collector on ``registry`` (once; later calls return it)."""
    collector = _registered.get(registry)
    if collector is None:
        collector = _registered[registry] = LayerCollector()
        registry.register(collector)
    return collector


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """The default registry in Prometheus's text format, for urls.py.

    Async so that, under ASGI, the statistics are read on the event loop the layer runs on.
    """
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
