"""W3 fan-out: ``group_send`` to a group of channels received in one process, then in several.

A group is a chat room or a live dashboard: one ``group_send`` per event, one delivery per
member. Deliveries per second are all deliveries over the time from the first timed
``group_send`` to the last delivery; one warm-up ``group_send`` first proves every member
receives. In the multi-process variant the sender is the parent and each worker process
receives on its share of the channels.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

from ..connections import ConnectionSampler
from ..layers import open_layer
from ..processes import Pipe, Worker, started_workers
from ..results import Measurement
from ..workload import Row, RowContext, Sizes, Workload
from ._common import Consumer, duplicates, message, receiving, settle, with_lost

GROUP = "bench-group"


async def join(layer: Any, count: int) -> list[Consumer]:
    """``count`` new channels of this process, all in the group."""
    channels = [await layer.new_channel() for _ in range(count)]
    for channel in channels:
        await layer.group_add(GROUP, channel)
    return [Consumer(layer, channel) for channel in channels]


async def send_all(layer: Any, count: int) -> Counter[str]:
    """``count`` group_sends, each awaited; failures counted by exception type."""
    errors: Counter[str] = Counter()
    for seq in range(count):
        try:
            await layer.group_send(GROUP, message(seq))
        except Exception as err:  # recorded: a failed send is a result, not a crash
            errors[type(err).__name__] += 1
    return errors


async def one_process(ctx: RowContext) -> Measurement:
    sends, settle_s = ctx.sizes.fanout_sends, ctx.sizes.settle_s
    async with (
        ctx.open_layer() as layer,
        receiving(await join(layer, ctx.sizes.fanout_channels)) as consumers,
    ):
        await layer.group_send(GROUP, message(-1))
        if await settle(consumers, 1, settle_s):
            raise RuntimeError("the warm-up group_send did not reach every member")
        with ctx.sampler() as sampler:
            sampler.watch("process", os.getpid())
            cpu = ctx.cpu_window()
            cpu.start()
            started = time.monotonic()
            errors = await send_all(layer, sends)
            lost = await settle(consumers, 1 + sends - errors.total(), settle_s)
            delivered = sum(consumer.distinct - 1 for consumer in consumers)
            spent = cpu.per_message(delivered)
            await sampler.last_sample()
    last_at = max(consumer.last_at for consumer in consumers)
    rate = delivered / (last_at - started) if delivered else None
    errors_column = with_lost(errors, lost, duplicates(consumers))
    return ctx.result(rate=rate, errors=errors_column, cpu=spent, sampler=sampler)


async def many_processes(ctx: RowContext) -> Measurement:
    sizes = ctx.sizes
    share = sizes.fanout_channels // sizes.fanout_processes
    options = {**ctx.worker_options(), "channels": share, "sends": sizes.fanout_sends}
    options["settle_s"] = sizes.settle_s
    every = [options] * sizes.fanout_processes
    async with started_workers(receive_in_worker, every, sizes.timeout_s) as workers:
        await _all(workers, "ready")
        started, errors, reports, sampler = await _send_to_workers(ctx, workers)
    delivered = sum(report[0] for report in reports)
    duplicated = sum(report[1] for report in reports)
    expected = share * sizes.fanout_processes * (sizes.fanout_sends - errors.total())
    rate = delivered / (max(report[2] for report in reports) - started) if delivered else None
    lost = max(expected - delivered, 0)
    return ctx.result(rate=rate, errors=with_lost(errors, lost, duplicated), sampler=sampler)


async def _send_to_workers(
    ctx: RowContext, workers: list[Worker]
) -> tuple[float, Counter[str], list[Any], ConnectionSampler]:
    """The warm-up, then the timed group_sends; returns when they started, their failures,
    the workers' reports and the connection sampler (stopped)."""
    async with ctx.open_layer() as layer:
        with ctx.sampler() as sampler:
            sampler.watch("sender", os.getpid())
            for number, worker in enumerate(workers, 1):
                sampler.watch(f"receiver-{number}", worker.pid)
            await layer.group_send(GROUP, message(-1))
            await _all(workers, "warm")
            started = time.monotonic()
            errors = await send_all(layer, ctx.sizes.fanout_sends)
            reports = await _all(workers, "done")
            await sampler.last_sample()
    return started, errors, reports, sampler


async def _all(workers: list[Worker], tag: str) -> list[Any]:
    return list(await asyncio.gather(*(worker.pipe.receive(tag) for worker in workers)))


async def receive_in_worker(
    pipe: Pipe, layer: str, url: str, prefix: str, channels: int, sends: int, settle_s: float
) -> None:
    """A receiving process: joins, proves the warm-up arrived, reports its deliveries."""
    async with (
        open_layer(layer, url, prefix) as channel_layer,
        receiving(await join(channel_layer, channels)) as consumers,
    ):
        pipe.send("ready")
        if await settle(consumers, 1, settle_s):
            raise RuntimeError("the warm-up group_send did not reach every member")
        pipe.send("warm")
        await settle(consumers, 1 + sends, settle_s)
        delivered = sum(consumer.distinct - 1 for consumer in consumers)
        last_at = max(consumer.last_at for consumer in consumers)
        pipe.send("done", (delivered, duplicates(consumers), last_at))
        await pipe.receive("close")  # connections stay open until the parent counted them


def rows(sizes: Sizes) -> list[Row]:
    channels, processes = sizes.fanout_channels, sizes.fanout_processes
    return [
        Row(f"W3 fan-out, {channels} channels, 1 process", one_process, "deliveries/s"),
        Row(
            f"W3 fan-out, {channels} channels, {processes} processes",
            many_processes,
            "deliveries/s",
        ),
    ]


WORKLOAD = Workload("w3", rows, description="group_send to a group of channels")
