"""``python -m demo.loadtest``: N WebSocket clients in one room, channels-ha vs channels_redis.

For each layer in turn, on the same Redis (a Sentinel sandbox started once, or yours when
``REDIS_URL`` / ``REDIS_CONNECTION_CONFIG`` is set), it starts the demo with two workers,
connects the clients (spread over the workers by the kernel), sends edits of one shared note
at a fixed rate from random clients, and reports the delivery latency of every edit to every
other client (p50, p99, max), the CPU time the worker processes and Redis spent meanwhile,
and every error, loss or duplicate. Edits go through the whole stack: WebSocket, consumer,
SQLite, ``group_send`` to N channels, N WebSocket sends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .loadclients import Swarm, SwarmResult
from .process import RunningDemo
from .run import REDIS_VARIABLES

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Redis:
    env: dict[str, str]
    pids: list[int]  # empty for an external Redis: its CPU is not ours to read


@dataclass(frozen=True)
class Row:
    layer: str
    rate_per_s: float
    swarm: SwarmResult
    worker_cpu_s: float
    redis_cpu_s: float | None
    client_cpu_s: float
    elapsed_s: float


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    _raise_file_limit()
    with _redis() as redis:
        rows = [asyncio.run(measure(layer, args, redis)) for layer in args.layers.split(",")]
    print(table(rows))
    for row in rows:
        print(f"{row.layer}: clients per worker {row.swarm.workers}; errors {row.swarm.errors[:5]}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo.loadtest", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5.0, help="edits per second (all clients)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of edits")
    parser.add_argument("--layers", default="channels_ha,channels_redis")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers")
    return parser.parse_args(argv)


@contextmanager
def _redis() -> Iterator[Redis]:
    if any(os.environ.get(name) for name in REDIS_VARIABLES):
        yield Redis({name: os.environ[name] for name in REDIS_VARIABLES if name in os.environ}, [])
        return
    from channels_ha.sandbox import start_topology

    with start_topology("sentinel") as topology:
        yield Redis(topology.env(), [node.pid for node in topology.nodes if node.pid])


async def measure(layer: str, args: argparse.Namespace, redis: Redis) -> Row:
    """One layer: start the demo, connect, edit, drain, and read the CPU clocks around it."""
    with tempfile.TemporaryDirectory(prefix="demo-load-") as scratch:
        demo = RunningDemo(Path(scratch) / "load.sqlite3", layer=layer, redis_env=redis.env)
        with demo:
            swarm = Swarm(demo, f"load-{layer}", args.clients)
            try:
                await swarm.connect()
                workers = demo.worker_pids()
                clocks = (cpu_s(workers), cpu_s(redis.pids), time.process_time(), time.monotonic())
                await swarm.edit(args.rate, args.duration)
                await swarm.drain(args.drain)
                ends = (cpu_s(workers), cpu_s(redis.pids), time.process_time(), time.monotonic())
            finally:
                await swarm.close()
    spent = [end - start for start, end in zip(clocks, ends, strict=True)]
    redis_cpu_s = spent[1] if redis.pids else None
    return Row(layer, args.rate, swarm.result(), spent[0], redis_cpu_s, spent[2], spent[3])


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (all their threads), from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _TICKS_PER_S


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def table(rows: list[Row]) -> str:
    lines = [
        "| layer | clients | edits/s | deliveries | p50 ms | p99 ms | max ms "
        "| worker CPU s | Redis CPU s | client CPU s | undelivered | dup | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        result, ms = row.swarm, [s * 1000 for s in row.swarm.latencies_s]
        redis = "n/a" if row.redis_cpu_s is None else f"{row.redis_cpu_s:.1f}"
        lines.append(
            f"| {row.layer} | {result.clients} | {row.rate_per_s:g} | {result.deliveries} "
            f"| {percentile(ms, 0.5):.1f} | {percentile(ms, 0.99):.1f} | {max(ms, default=0):.0f} "
            f"| {row.worker_cpu_s:.1f} | {redis} | {row.client_cpu_s:.1f} "
            f"| {result.undelivered} | {result.duplicates} | {len(result.errors)} |"
        )
    return "\n".join(lines)


def _raise_file_limit() -> None:
    """Each client is a descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    main()
