"""The benchmark's accounts: a lost or duplicated message, the connections a process holds, the
ratios it prints, and what a row timing out leaves behind.

Like tests/test_bench_smoke.py, these run the bench's own rows with small counts; here in this
process, on the sandbox topologies, with channels-ha (or a faulty wrapper of it) as the layer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bench.layers
from bench.results import Summary
from bench.runner import run_row
from bench.table import render
from bench.targets import Target
from bench.workload import QUICK, Row, RowContext
from bench.workloads import latency, w1_point, w2_burst, w3_fanout, w4_failover
from channels_ha.sandbox import SentinelTopology, StandaloneTopology, start_topology

# A lost message costs a row settle_s of waiting for it; QUICK's 2 s would be most of the test.
SIZES = dataclasses.replace(QUICK, settle_s=0.5)
LOST, TWICE = 5, 6  # the timed messages the faulty layer loses and delivers twice


class Faulty:
    """A channels-ha layer that loses message ``LOST`` and delivers ``TWICE`` twice: when it
    receives them (the reviewer's layer), or when it sends them (which also reaches the
    consumers of worker processes, whose layers are built there)."""

    def __init__(self, inner: Any, side: str) -> None:
        self.inner = inner
        self.side = side
        self.again: dict[str, list[dict[str, Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def receive(self, channel: str) -> dict[str, Any]:
        if self.again.get(channel):
            return self.again[channel].pop()
        while True:
            message: dict[str, Any] = await self.inner.receive(channel)
            if self.side != "receive":
                return message
            if message["seq"] == LOST:
                continue
            if message["seq"] == TWICE:
                self.again.setdefault(channel, []).append(message)
            return message

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        for _ in range(self._copies(message)):
            await self.inner.send(channel, message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        for _ in range(self._copies(message)):
            await self.inner.group_send(group, message)

    def _copies(self, message: dict[str, Any]) -> int:
        if self.side != "send":
            return 1
        return {LOST: 0, TWICE: 2}.get(message["seq"], 1)


ONE_PROCESS = {
    "w1": w1_point.rows(SIZES)[0],
    "w2": w2_burst.rows(SIZES)[0],
    "w3": w3_fanout.rows(SIZES)[0],
    "latency": latency.rows(SIZES)[0],
}
WORKERS = {"w1-2": w1_point.rows(SIZES)[1], "w3-n": w3_fanout.rows(SIZES)[1]}
# Per message in W1, W2 and latency; per delivery in W3, one for each of its channels.
EACH = {"w1": 1, "w2": 1, "latency": 1, "w1-2": 1, "w3": QUICK.fanout_channels}
EACH["w3-n"] = QUICK.fanout_channels


@pytest.mark.parametrize(
    ("name", "side"),
    [(name, "receive") for name in ONE_PROCESS]
    + [(name, "send") for name in [*ONE_PROCESS, *WORKERS]],
)
async def test_a_row_reports_the_message_lost_and_the_one_delivered_twice(
    redis_standalone: StandaloneTopology,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    side: str,
) -> None:
    """One message lost and another delivered twice is 'lost 1, duplicates 1' (times the
    channels in W3), not a clean row: counting arrivals, the duplicate stood in for the loss."""
    make_layer = bench.layers.make_layer
    monkeypatch.setattr(bench.layers, "make_layer", lambda *args: Faulty(make_layer(*args), side))
    row = {**ONE_PROCESS, **WORKERS}[name]
    measurement = await _run(Target("standalone", redis_standalone), row)
    assert measurement.status == "ok"
    assert dict(measurement.errors) == {"lost": EACH[name], "duplicates": EACH[name]}


async def test_connections_to_the_sentinels_are_counted_apart(
    redis_sentinel: SentinelTopology,
) -> None:
    """On Sentinel a channels-ha process holds 2 connections on the master and 1 on each
    sentinel (its watch for failover announcements, opened 1 s after its first connection);
    the table says both."""
    row = w1_point.rows(SIZES)[0]
    measurement = await _run(Target("sentinel", redis_sentinel), row)
    assert measurement.status == "ok", measurement.status
    assert dict(measurement.connections) == {"process": 2}
    assert dict(measurement.sentinel_connections) == {"process": 3}
    table = render([_summary(connections={"process": 2}, sentinels={"process": 3})])
    assert "| process 2 + 3 sentinels |" in table


def test_the_table_says_data_then_sentinel_connections_for_each_role() -> None:
    connections = {"sender": 1, "receiver-1": 2, "receiver-2": 2}
    sentinels = {"sender": 3, "receiver-1": 3, "receiver-2": 0}
    table = render([_summary(connections=connections, sentinels=sentinels)])
    assert "| sender 1 + 3 sentinels · 2 receivers 2 + 0-3 sentinels each |" in table
    table = render([_summary(connections=connections)])  # no sentinels: as before
    assert "| sender 1 · 2 receivers 2 each |" in table


def test_no_ratio_against_a_row_with_errors() -> None:
    """core's W2 rate, made of the few sends that did not fail, is no yardstick: the ratio
    columns stay empty, both ways, as the CPU column does."""
    ours = _summary(layer="channels_ha", rate=30_000.0)
    core = _summary(layer="core", rate=150.0, errors=Counter(MaxConnectionsError=9_900))
    pubsub = _summary(layer="pubsub", rate=5_000.0)
    lines = render([ours, core, pubsub]).splitlines()[2:]
    ratios = [line.split(" | ")[4:6] for line in lines]
    assert ratios == [["", "6.0x"], ["", ""], ["", ""]]


def test_a_row_cancelled_while_its_topology_starts_leaves_no_redis_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """W4 starts a topology per run, in a thread; a timeout during the start (cancelling the
    row) used to leave that topology running for the rest of the benchmark."""

    fresh_topology = w4_failover.fresh_topology

    async def cancel_while_starting() -> None:
        loop = asyncio.get_running_loop()
        starting = asyncio.Event()

        def start_and_say(kind: str) -> Any:
            loop.call_soon_threadsafe(starting.set)
            return start_topology(kind)

        async def run() -> None:
            async with fresh_topology("standalone"):
                pytest.fail("cancelled while starting, it cannot get here")

        monkeypatch.setattr(w4_failover, "start_topology", start_and_say)
        task = asyncio.create_task(run())
        await starting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = set(_redis_servers())
    asyncio.run(cancel_while_starting())  # returns once its threads are done: no start running
    assert set(_redis_servers()) - before == set()


async def _run(target: Target, row: Row) -> Any:
    context = RowContext(target, bench.layers.CHANNELS_HA, row, SIZES, bench.layers.new_prefix())
    return await run_row(row, context)


def _summary(
    layer: str = "channels_ha",
    rate: float = 1_000.0,
    errors: Counter[str] | None = None,
    connections: dict[str, int] | None = None,
    sentinels: dict[str, int] | None = None,
) -> Summary:
    return Summary(
        topology="standalone",
        row="W2 burst",
        layer=layer,
        unit="msgs/s",
        rate=rate,
        p50_ms=None,
        p99_ms=None,
        gap_s=None,
        cpu_us=None,
        redis_cpu_us=None,
        errors=errors or Counter(),
        connections=connections or {"process": 2},
        sentinel_connections=sentinels or {},
        runs=1,
        failures=Counter(),
        rtt_bound=False,
        note="",
    )


def _redis_servers() -> Iterator[int]:
    """The redis-server processes this process started (the sandbox's nodes are its children)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        command, fields = stat.rsplit(")", 1)
        if command.endswith("(redis-server") and fields.split()[1] == me:
            yield int(entry.name)
