"""W4 failover under load: steady ``group_send`` traffic while the master is killed (kill -9).

What an operator wants to know about a failover is not a rate but an account: did any call
raise, did a message whose ``group_send`` returned never arrive, did one arrive twice, and how
long did receivers hear nothing. :class:`channels_ha.sandbox.Traffic` keeps that account; this
row runs it at a fixed rate for a fixed time and kills the master a third of the way in.

Every run gets a topology of its own, started here and stopped after: a run leaves its topology
one node short (and a second kill on the same Sentinel sandbox would leave no replica), so
reusing the row's topology would make later runs measure something else. On Cluster the victim
is the busiest master (most commands over a short sample), which is the one holding the
receivers' inboxes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from channels_ha.sandbox import RedisNode, Topology, Traffic, TrafficReport, start_topology

from ..layers import open_layer
from ..results import Measurement
from ..workload import Row, RowContext, Sizes, Workload

FAULT_AT = 1 / 3  # of the run's duration
CONCURRENCY = 8  # group_sends in flight: a fault always catches some of them mid-way
RECEIVERS = 2  # layers standing in for other worker processes, two channels each
BUSIEST_SAMPLE_S = 0.5


@asynccontextmanager
async def fresh_topology(kind: str) -> AsyncIterator[Topology]:
    """A new topology of ``kind`` for one run; stopped whatever happens, a cancellation (the
    row's timeout) while it starts included."""
    topology = await _started(kind)
    try:
        yield topology
    finally:
        await asyncio.to_thread(topology.stop)


async def _started(kind: str) -> Topology:
    """Starts the topology in a thread. Cancelled, it waits for the thread, which cannot be
    interrupted, and stops what it started: otherwise a row timing out here would leave its
    Redis servers running for the rest of the benchmark."""
    starting = asyncio.ensure_future(asyncio.to_thread(start_topology, kind))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        await _stop_once_started(starting)
        raise


async def _stop_once_started(starting: asyncio.Future[Topology]) -> None:
    try:
        topology = await starting
    except Exception:  # it failed to start: start_topology stopped what it had started
        return
    await asyncio.to_thread(topology.stop)


async def failover_under_load(ctx: RowContext) -> Measurement:
    sizes = ctx.sizes
    async with fresh_topology(ctx.target.kind) as topology, AsyncExitStack() as stack:
        layers = [
            await stack.enter_async_context(open_layer(ctx.layer, topology.url, ctx.prefix))
            for _ in range(1 + RECEIVERS)
        ]
        traffic = Traffic(
            layers[0],
            layers[1:],
            mode="group",
            rate_per_s=sizes.failover_rate,
            concurrency=CONCURRENCY,
        )
        started = time.monotonic()
        await traffic.start()
        await asyncio.sleep(sizes.failover_duration_s * FAULT_AT)  # the schedule, not a wait
        victim = await _busiest_master(topology)
        victim.kill()
        await asyncio.sleep(started + sizes.failover_duration_s - time.monotonic())
        report = await traffic.stop(drain_timeout_s=sizes.settle_s)
    return ctx.result(gap_s=report.max_gap_s, errors=account(report), rate=None)


def account(report: TrafficReport) -> dict[str, int]:
    """Errors raised, messages lost and messages duplicated, counted per ``group_send``.

    A failed ``group_send`` is a message lost as well as an error raised; a returned one is
    lost if any member never got it, duplicated if any member got it twice.
    """
    lost = {number for numbers in report.lost.values() for number in numbers}
    twice = {number for numbers in report.duplicates.values() for number in numbers}
    counts = {
        "send raised": len(report.send_errors),
        "receive raised": len(report.receive_errors),
        "lost": len(lost) + len(report.send_errors),
        "duplicates": len(twice),
    }
    return {kind: count for kind, count in counts.items() if count}


async def _busiest_master(topology: Topology) -> RedisNode:
    """Sentinel's master, or the Cluster master that processed the most commands lately."""
    current = getattr(topology, "acurrent_master", None)
    if current is not None:
        node: RedisNode = await current()
        return node
    masters: list[RedisNode] = await topology.amasters()  # type: ignore[attr-defined]
    before = await asyncio.gather(*(_commands(node) for node in masters))
    await asyncio.sleep(BUSIEST_SAMPLE_S)  # a sampling window, not a wait for an event
    after = await asyncio.gather(*(_commands(node) for node in masters))
    busiest = max(range(len(masters)), key=lambda i: after[i] - before[i])
    return masters[busiest]


async def _commands(node: RedisNode) -> int:
    client = node.async_observer_client()  # raw replies: INFO is text
    try:
        info = await client.execute_command("INFO", "stats")  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"INFO stats of {node.name} has no total_commands_processed")


def rows(sizes: Sizes) -> list[Row]:
    label = (
        f"W4 failover: group_send {sizes.failover_rate}/s for {sizes.failover_duration_s:g} s, "
        "master killed at 1/3"
    )
    return [Row(label, failover_under_load, "longest gap")]


WORKLOAD = Workload(
    "w4",
    rows,
    topologies=("sentinel", "cluster"),
    description="kill -9 of the master under group_send load",
)
