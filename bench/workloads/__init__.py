"""The registry of workloads, by the name ``--workloads`` takes. Add a workload here."""

from __future__ import annotations

from ..workload import Workload
from . import ceiling, latency, sync_calls, w1_point, w2_burst, w3_fanout, w4_failover

WORKLOADS: dict[str, Workload] = {
    workload.name: workload
    for workload in (
        w1_point.WORKLOAD,
        w2_burst.WORKLOAD,
        w3_fanout.WORKLOAD,
        w4_failover.WORKLOAD,
        latency.WORKLOAD,
        sync_calls.WORKLOAD,
        ceiling.WORKLOAD,
    )
}
DEFAULT_WORKLOADS = tuple(WORKLOADS)
