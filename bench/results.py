"""Measurements of single runs, their medians over repeats, and the markdown table.

A timeout or a crash is a measurement too, never an exception: one slow or broken layer must not
hide the others' results. Repeats are summarised by medians, because the machines this runs on
are small and shared (two cores, other engineers' test runs).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

REFERENCE_LAYERS = ("core", "pubsub")  # the ratio columns, in order


@dataclass(frozen=True)
class Measurement:
    """One run of one workload row with one layer on one topology."""

    topology: str
    row: str
    layer: str
    rate: float | None = None  # messages or deliveries per second, end to end
    unit: str = "msgs/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    gap_s: float | None = None  # W4: the longest time without a delivery during the failover
    # CPU per message (or delivery, or PING) on rows where all of a layer's work runs in
    # one process: that process's event-loop thread, and the Redis masters (bench/cpu.py).
    cpu_us: float | None = None
    redis_cpu_us: float | None = None
    errors: Mapping[str, int] = field(default_factory=dict)  # exception or "lost" -> count
    connections: Mapping[str, int] = field(default_factory=dict)  # process role -> peak
    # The same on the sentinels, all of them together (empty on other topologies).
    sentinel_connections: Mapping[str, int] = field(default_factory=dict)
    status: str = "ok"  # "ok", "timeout" or "failed: <why>"
    # One awaited Redis round trip per message: compared with the RTT ceiling row.
    rtt_bound: bool = False
    note: str = ""  # e.g. a paced producer that could not keep its schedule

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Summary:
    """Every repeat of one (topology, row, layer): medians, total errors, peak connections."""

    topology: str
    row: str
    layer: str
    unit: str
    rate: float | None
    p50_ms: float | None
    p99_ms: float | None
    gap_s: float | None
    cpu_us: float | None
    redis_cpu_us: float | None
    errors: Counter[str]
    connections: dict[str, int]
    sentinel_connections: dict[str, int]
    runs: int
    failures: Counter[str]  # status -> count, for runs that did not finish
    rtt_bound: bool
    note: str  # the most frequent note of the runs that finished

    @property
    def latency(self) -> bool:
        return self.p50_ms is not None


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(group: list[Measurement]) -> Summary:
    """Medians over the runs that finished; errors summed and connections peaked over all."""
    first, finished = group[0], [m for m in group if m.ok]
    return Summary(
        topology=first.topology,
        row=first.row,
        layer=first.layer,
        unit=first.unit,
        rate=_median(m.rate for m in finished),
        p50_ms=_median(m.p50_ms for m in finished),
        p99_ms=_median(m.p99_ms for m in finished),
        gap_s=_median(m.gap_s for m in finished),
        cpu_us=_median(m.cpu_us for m in finished),
        redis_cpu_us=_median(m.redis_cpu_us for m in finished),
        errors=sum((Counter(m.errors) for m in group), Counter()),
        connections=_peaks(m.connections for m in group),
        sentinel_connections=_peaks(m.sentinel_connections for m in group),
        runs=len(group),
        failures=Counter(m.status for m in group if not m.ok),
        rtt_bound=first.rtt_bound,
        note=_most_common(m.note for m in finished),
    )


def _peaks(samples: Iterable[Mapping[str, int]]) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for sample in samples:
        for role, count in sample.items():
            peaks[role] = max(count, peaks.get(role, 0))
    return peaks


def _most_common(notes: Iterable[str]) -> str:
    counted = Counter(notes)
    return counted.most_common(1)[0][0] if counted else ""


def summarise_all(measurements: Iterable[Measurement]) -> list[Summary]:
    """One summary per (topology, row, layer), in the order they were first measured."""
    groups: dict[tuple[str, str, str], list[Measurement]] = {}
    for measurement in measurements:
        key = (measurement.topology, measurement.row, measurement.layer)
        groups.setdefault(key, []).append(measurement)
    return [summarise(group) for group in groups.values()]
