"""Prometheus metrics of the channel layers, read from their ``statistics()`` at scrape time.

Off by default, and free when off: the layer keeps its statistics anyway, and this module only
reads them when Prometheus scrapes, so the hot path pays nothing either way. Turn it on with
``CHANNELS_HA_METRICS = True`` (the app then registers the collector on prometheus_client's
default registry) or :func:`register`; expose it with :func:`metrics_view` or prometheus_client's
own ``make_asgi_app()``. Needs the ``channels-ha[metrics]`` extra, though this module imports
without it: :func:`metrics_view` then answers 503 naming the extra.

Every metric has the label ``alias`` (the ``CHANNEL_LAYERS`` alias); the per-shard ones add
``shard`` (the index of the Redis in ``hosts``) and ``topology`` (what the shard connects to).
Layers appear once they have been created in this process (``get_channel_layer()``); values are
per process, as the layer's statistics are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponse

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._collector import LayerCollector

__all__ = ["METRICS", "LayerCollector", "metrics_view", "register"]
# prometheus_client is imported on first use: a urls.py that imports metrics_view must work
# without it (seen: ModuleNotFoundError from urls.py, though check E004 says the app starts).
_COLLECTOR = {"LayerCollector": "._collector", "created_layers": "._collector"}
__getattr__, __dir__ = lazy_exports(__name__.rpartition(".")[0], _COLLECTOR, globals())
NO_PROMETHEUS = (
    'Metrics need prometheus_client: pip install "channels-ha[metrics]" '
    "(manage.py check reports it as channels_ha.E004).\n"
)

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


def register(registry: CollectorRegistry | None = None) -> LayerCollector:
    """Registers the layers' collector on ``registry`` (prometheus_client's default one when
    None), once; later calls return it. Raises ImportError without prometheus_client."""
    from ._collector import register_on

    return register_on(registry)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """The default registry in Prometheus's text format, for urls.py; without
    prometheus_client, a 503 that names the missing extra (a failing scrape target).

    Async so that, under ASGI, the statistics are read on the event loop the layer runs on.
    """
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    except ImportError:
        return HttpResponse(NO_PROMETHEUS, status=503, content_type="text/plain; charset=utf-8")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
