"""The RTT ceiling: how many sequential round trips one client gets from the same Redis.

A producer that awaits each send cannot beat one round trip per message. Two reference rows
measure that bound on the topology's master: ``redis-benchmark -c 1 -t ping`` (a C client) and a
minimal asyncio client (write PING, read the reply, repeat), which adds the cost of one event
loop iteration per round trip that every asyncio layer pays too.
"""

from __future__ import annotations

import asyncio
import csv
import ssl
import time

from channels_ha.sandbox import RedisNode

from ..cpu import CpuPerMessage, CpuWindow
from ..results import Measurement
from ..table import CEILING_LAYER, CEILING_ROW
from ..workload import Row, RowContext, Sizes, Workload

ASYNCIO_LAYER = "asyncio client"
_PING = b"*1\r\n$4\r\nPING\r\n"


async def ceiling(ctx: RowContext) -> Measurement:
    node = ctx.target.master()
    requests = ctx.sizes.ceiling_requests
    if ctx.layer == CEILING_LAYER:
        return ctx.result(rate=await _redis_benchmark(node, requests))
    rate, spent = await _asyncio_pings(node, requests, ctx.cpu_window())
    return ctx.result(rate=rate, cpu=spent)


def _benchmark_command(node: RedisNode, requests: int) -> list[str]:
    command = ["redis-benchmark", "-h", node.host, "-p", str(node.port)]
    command += ["-c", "1", "-n", str(requests), "-t", "ping", "--csv"]
    if node.tls is not None:
        command += ["--tls", "--cacert", str(node.tls.ca_cert)]
    return command


async def _redis_benchmark(node: RedisNode, requests: int) -> float:
    """Requests per second of the ``PING_MBULK`` test (a RESP-encoded PING)."""
    process = await asyncio.create_subprocess_exec(
        *_benchmark_command(node, requests),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    finally:
        if process.returncode is None:  # cancelled by the row's timeout
            process.kill()
            await process.wait()
    for line in csv.reader(out.decode().splitlines()):
        if line and line[0] == "PING_MBULK":
            return float(line[1])
    raise RuntimeError(f"redis-benchmark gave no PING_MBULK result: {err.decode()[-200:]}")


async def _asyncio_pings(
    node: RedisNode, requests: int, cpu: CpuWindow
) -> tuple[float, CpuPerMessage | None]:
    context = None
    if node.tls is not None:
        context = ssl.create_default_context(cafile=str(node.tls.ca_cert))
    reader, writer = await asyncio.open_connection(node.host, node.port, ssl=context)
    try:
        cpu.start()
        started = time.monotonic()
        for _ in range(requests):
            writer.write(_PING)
            await reader.readuntil(b"\r\n")
        rate = requests / (time.monotonic() - started)
        return rate, cpu.per_message(requests)
    finally:
        writer.close()
        await writer.wait_closed()


def rows(sizes: Sizes) -> list[Row]:
    return [Row(CEILING_ROW, ceiling, "req/s")]


WORKLOAD = Workload(
    "ceiling",
    rows,
    layers=(CEILING_LAYER, ASYNCIO_LAYER),
    description="reference: sequential PING round trips of one client",
)
