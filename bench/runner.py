"""Runs the plan: per topology, every repeat of every row with every layer, each bounded.

Layers alternate within each repeat (W1 with channels-ha, then core, then pubsub, then W2...)
so that a burst of load from elsewhere on the machine hits them alike. A topology is started
once, its event loop is its own (``asyncio.run`` per topology), and it is stopped even when a
run fails. A row that times out or raises becomes a measurement saying so.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .layers import new_prefix
from .results import Measurement
from .targets import Target, started
from .workload import Row, RowContext, Sizes, Workload

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What to run, from the command line."""

    topologies: tuple[str, ...]
    workloads: tuple[Workload, ...]
    layers: tuple[str, ...]
    repeat: int
    sizes: Sizes


def run(plan: Plan, progress: Progress) -> list[Measurement]:
    """Every measurement of the plan, topology by topology."""
    measurements: list[Measurement] = []
    for kind in plan.topologies:
        measurements += _on_topology(kind, plan, progress)
    return measurements


def _on_topology(kind: str, plan: Plan, progress: Progress) -> list[Measurement]:
    progress(f"[{kind}] starting the topology")
    try:
        with started(kind) as target:
            return asyncio.run(_all_rows(target, plan, progress))
    except Exception as err:  # the topology itself failed: a row says so, the others go on
        failed = Measurement(kind, "topology", "-", status=f"failed: {_describe(err)}")
        progress(f"[{kind}] {failed.status}")
        return [failed]


async def _all_rows(target: Target, plan: Plan, progress: Progress) -> list[Measurement]:
    measurements = []
    for repeat in range(1, plan.repeat + 1):
        for workload in plan.workloads:
            if workload.topologies is not None and target.kind not in workload.topologies:
                continue
            for row in workload.rows(plan.sizes):
                for layer in _layers(workload, target, plan):
                    context = RowContext(target, layer, row, plan.sizes, new_prefix())
                    measurement = await run_row(row, context)
                    progress(f"[{target.kind} {repeat}/{plan.repeat}] {_line(measurement)}")
                    measurements.append(measurement)
    return measurements


def _layers(workload: Workload, target: Target, plan: Plan) -> tuple[str, ...]:
    if workload.layers is not None:  # reference rows: no layer under test
        return workload.layers
    return tuple(layer for layer in plan.layers if target.runs(layer))


async def run_row(row: Row, context: RowContext) -> Measurement:
    """One measurement; a timeout or an error is the measurement's status.

    The layers of earlier runs in this process are collected first: channels_redis on
    Sentinel leaves connections to the sentinels open after closing (98 after W2's burst),
    until its clients are collected, and this run would count them as its own.
    """
    gc.collect()
    try:
        return await asyncio.wait_for(row.run(context), context.sizes.timeout_s)
    except asyncio.TimeoutError:
        return context.result(status="timeout")
    except Exception as err:  # reported in the table: one broken layer must not hide the rest
        return context.result(status=f"failed: {_describe(err)}")


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def _line(measurement: Measurement) -> str:
    if not measurement.ok:
        result = measurement.status
    elif measurement.gap_s is not None:
        result = f"longest gap {measurement.gap_s:.2f} s"
    elif measurement.p50_ms is not None:
        result = f"p50 {measurement.p50_ms:.2f} ms, p99 {measurement.p99_ms or 0:.2f} ms"
    else:
        result = f"{measurement.rate or 0:,.0f} {measurement.unit}"
    errors = sum(measurement.errors.values())
    return f"{measurement.row} · {measurement.layer}: {result}, errors {errors}"


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
