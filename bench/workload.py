"""What a workload is, to the runner: named rows, each a coroutine that returns a measurement.

Adding a workload is one module under ``bench/workloads/`` that builds a :class:`Workload`,
plus one line in the registry (``bench/workloads/__init__.py``). The runner owns repeats,
topologies, layers and timeouts; a row only runs once, with one layer, and reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from .connections import ConnectionSampler
from .cpu import CpuPerMessage, CpuWindow
from .layers import open_layer
from .results import Measurement
from .targets import Target


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does; ``QUICK`` is the smoke-test size."""

    point_messages: int = 20_000
    burst_messages: int = 10_000
    fanout_channels: int = 100
    fanout_processes: int = 4
    fanout_sends: int = 1_000
    latency_messages: int = 5_000
    latency_rate: int = 1_000  # messages per second
    sync_calls: int = 1_000
    ceiling_requests: int = 20_000
    failover_rate: int = 400  # group_sends per second
    failover_duration_s: float = 10.0
    settle_s: float = 5.0  # a consumer that got nothing for this long counts the rest as lost
    timeout_s: float = 300.0  # one row with one layer, workers and cleanup included


QUICK = Sizes(
    point_messages=300,
    burst_messages=500,
    fanout_channels=20,
    fanout_processes=2,
    fanout_sends=20,
    latency_messages=200,
    sync_calls=30,
    ceiling_requests=2_000,
    failover_rate=100,
    failover_duration_s=4.0,
    settle_s=2.0,
    timeout_s=30.0,
)


@dataclass(frozen=True)
class RowContext:
    """Everything one run of one row needs."""

    target: Target
    layer: str
    row: Row
    sizes: Sizes
    prefix: str  # the key prefix of this run, shared by its worker processes

    def open_layer(self) -> AbstractAsyncContextManager[Any]:
        """A fresh layer of this run, closed when the block ends."""
        return open_layer(self.layer, self.target.url, self.prefix)

    def worker_options(self) -> dict[str, Any]:
        """What a worker process needs to build the same layer on the same Redis."""
        return {"layer": self.layer, "url": self.target.url, "prefix": self.prefix}

    def sampler(self) -> ConnectionSampler:
        """Counts connections to the masters, and apart to the sentinels if any."""
        return ConnectionSampler(self.target.masters(), self.target.sentinels())

    def cpu_window(self) -> CpuWindow:
        return CpuWindow(self.target.masters())

    def result(
        self,
        cpu: CpuPerMessage | None = None,
        sampler: ConnectionSampler | None = None,
        **fields: Any,
    ) -> Measurement:
        """This run's measurement: ``fields``, the CPU per message and the connections the
        sampler counted, if given."""
        if cpu is not None:
            fields.update(cpu_us=cpu.process_us, redis_cpu_us=cpu.redis_us)
        if sampler is not None:
            fields.update(
                connections=sampler.peaks(), sentinel_connections=sampler.sentinel_peaks()
            )
        measurement = Measurement(
            topology=self.target.kind,
            row=self.row.label,
            layer=self.layer,
            unit=self.row.unit,
            rtt_bound=self.row.rtt_bound,
        )
        return replace(measurement, **fields)


@dataclass(frozen=True)
class Row:
    """One line of the table per layer: a label and the coroutine that measures it."""

    label: str
    run: Callable[[RowContext], Awaitable[Measurement]]
    unit: str = "msgs/s"
    rtt_bound: bool = False


@dataclass(frozen=True)
class Workload:
    """A named set of rows; ``layers`` fixes the layers of reference rows (no layer under test),
    ``topologies`` limits where the workload means something (a failover needs replicas)."""

    name: str
    rows: Callable[[Sizes], list[Row]]
    layers: tuple[str, ...] | None = None
    topologies: tuple[str, ...] | None = None
    description: str = field(default="", compare=False)
