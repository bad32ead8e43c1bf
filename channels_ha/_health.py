"""The health check: does a writable master answer, and what has the channel layer seen?

Writable means it takes a write (``_probe_write``), not only that it answers ROLE and PING: a
master out of memory, or short of ``min-replicas-to-write``, refuses every send.

:mod:`channels_ha.health` (the Django views and the ASGI middleware) is a thin shell over
:func:`check_health`. The probe blocks (it runs an event loop of its own) within one
deadline, so it runs in a small thread pool of its own, and requests that arrive while a probe
of the same alias is in flight share it: a burst of requests costs Redis one probe, not one per
request. The layer's statistics are read on the calling event loop, where its sessions live.

Nothing in the body is a traceback or a password: probe errors are redis-py's messages, which
name addresses only, and configuration errors are redacted when they are made.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ._config import RedisConfig
from ._probe_master import MASTER_PROBE_TIMEOUT_S, probe_master
from ._probe_report import MasterReport
from ._stats import LayerStatistics, ShardStatistics
from .exceptions import ConfigurationError

__all__ = ["HEALTH_TIMEOUT_S", "Health", "check_health", "layer_statistics"]

logger = logging.getLogger("channels_ha.health")

#: Bound on the Redis side of one health check, every shard included.
HEALTH_TIMEOUT_S = MASTER_PROBE_TIMEOUT_S
# Beyond the probe's own deadline: starting the worker thread and rendering, at most.
_SLACK_S = 0.5
# Probes of different aliases or timeouts that may run at once; more wait for a thread.
_PROBE_THREADS = 4
_probes = ThreadPoolExecutor(_PROBE_THREADS, thread_name_prefix="channels-ha-health")
_in_flight: dict[tuple[str, float], Future[list[MasterReport]]] = {}
_in_flight_lock = threading.RLock()  # RLock: a done future runs its callback at once


@dataclass(frozen=True)
class Health:
    """The outcome of one health check: an HTTP status and a JSON-able body."""

    ok: bool
    body: dict[str, Any]

    @property
    def status_code(self) -> int:
        return 200 if self.ok else 503


async def check_health(alias: str = "default", timeout_s: float = HEALTH_TIMEOUT_S) -> Health:
    """Probe the master(s) behind channel layer ``alias`` and add what the layer has seen."""
    from ._settings import require_alias

    try:
        require_alias(alias)
    except ConfigurationError as err:  # a typo in urls.py or asgi.py: never another Redis
        return _failure(alias, str(err))
    statistics = layer_statistics(alias)
    # Shielded: a caller that gives up must not cancel a probe other callers share.
    probing = asyncio.shield(asyncio.wrap_future(_shared_probe(alias, timeout_s)))
    try:
        reports = await asyncio.wait_for(probing, timeout_s + _SLACK_S)
    except ConfigurationError as err:
        return _failure(alias, str(err))
    except asyncio.TimeoutError:
        return _failure(alias, f"no answer within {timeout_s:g} s")
    except Exception as err:  # a probe must answer, never crash: the log has the traceback
        logger.exception("Health check of channel layer %r failed", alias)
        return _failure(alias, f"health check failed: {type(err).__name__}")
    shards = [_shard(report, _shard_statistics(statistics, i)) for i, report in enumerate(reports)]
    ok = all(report.ok for report in reports)
    return Health(ok, {"status": "ok" if ok else "unavailable", "alias": alias, "shards": shards})


def _failure(alias: str, error: str) -> Health:
    return Health(False, {"status": "unavailable", "alias": alias, "error": error, "shards": []})


def _shared_probe(alias: str, timeout_s: float) -> Future[list[MasterReport]]:
    """The probe of ``alias`` in flight, or a new one."""
    key = (alias, timeout_s)
    with _in_flight_lock:
        future = _in_flight.get(key)
        if future is None:
            future = _in_flight[key] = _probes.submit(_probe_alias, alias, timeout_s)
            future.add_done_callback(lambda done: _forget(key, done))
    return future


def _forget(key: tuple[str, float], done: Future[list[MasterReport]]) -> None:
    with _in_flight_lock:
        if _in_flight.get(key) is done:
            del _in_flight[key]


def _probe_alias(alias: str, timeout_s: float) -> list[MasterReport]:
    """One master probe per shard, all within one deadline (blocking: runs in a thread)."""
    from ._settings import alias_configs, alias_prefix

    deadline = time.monotonic() + timeout_s
    prefix = alias_prefix(alias)
    return [_probe_until(config, deadline, prefix) for config in alias_configs(alias)]


def _probe_until(config: RedisConfig, deadline: float, prefix: str) -> MasterReport:
    left = deadline - time.monotonic()
    if left <= 0:
        return MasterReport(config.mode, ok=False, error="not probed: the health timeout ran out")
    return probe_master(config, left, prefix)


def layer_statistics(alias: str) -> LayerStatistics | None:
    """The statistics of the channel layer ``alias``; None for layers without them."""
    from channels.layers import get_channel_layer

    try:
        layer = get_channel_layer(alias)
    except Exception as err:  # a layer that cannot be built: the system checks say why
        logger.warning("Channel layer %r cannot be built: %s", alias, err)
        return None
    statistics = getattr(layer, "statistics", None)
    result = statistics() if callable(statistics) else None
    return result if isinstance(result, LayerStatistics) else None


def _shard_statistics(statistics: LayerStatistics | None, index: int) -> ShardStatistics | None:
    if statistics is None or index >= len(statistics.shards):
        return None
    return statistics.shards[index]


def _shard(report: MasterReport, stats: ShardStatistics | None) -> dict[str, Any]:
    """The probe's findings plus the layer's failover history for one shard."""
    seen = None if stats is None else stats.last_server_change
    return {
        **report.to_dict(),
        "last_failover": None if seen is None else _iso(seen),
        "failovers": None if stats is None else stats.server_changes,
        "reconnects": None if stats is None else stats.reconnects,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
