"""W1 point-to-point: one producer awaiting each send, one consumer, on a process channel.

The producer waits for each send to be acknowledged before the next, as a Django view or
consumer does, so every message costs at least one Redis round trip: the RTT ceiling row shows
how close each layer gets. The consumer receives on a channel from ``new_channel()``, first in
the producer's process, then in a worker process (a sender in one ASGI process, a consumer in
another).
"""

from __future__ import annotations

import os
import time
from collections import Counter

from ..layers import open_layer
from ..processes import Pipe, started_workers
from ..results import Measurement
from ..workload import Row, RowContext, Sizes, Workload
from ._common import (
    WARM_UP_MESSAGES,
    Consumer,
    one_warm_consumer,
    receiving,
    send_each,
    settle,
    warm_up_message,
    with_lost,
)


async def one_process(ctx: RowContext) -> Measurement:
    count = ctx.sizes.point_messages
    async with one_warm_consumer(ctx) as (layer, channel, consumer, sampler):
        errors: Counter[str] = Counter()
        cpu = ctx.cpu_window()
        cpu.start()
        started = time.monotonic()
        await send_each(layer, channel, count, errors)
        expected = WARM_UP_MESSAGES + count - errors.total()
        lost = await settle([consumer], expected, ctx.sizes.settle_s)
        delivered = consumer.distinct - WARM_UP_MESSAGES
        spent = cpu.per_message(delivered)
        await sampler.last_sample()
    rate = delivered / (consumer.last_at - started) if delivered else None
    errors_column = with_lost(errors, lost, consumer.duplicates)
    return ctx.result(rate=rate, errors=errors_column, cpu=spent, sampler=sampler)


async def two_processes(ctx: RowContext) -> Measurement:
    count, settle_s = ctx.sizes.point_messages, ctx.sizes.settle_s
    options = {**ctx.worker_options(), "count": count, "settle_s": settle_s}
    async with started_workers(consume_in_worker, [options], ctx.sizes.timeout_s) as (worker,):
        channel = await worker.pipe.receive("ready")
        async with ctx.open_layer() as layer:
            with ctx.sampler() as sampler:
                sampler.watch("producer", os.getpid())
                sampler.watch("consumer", worker.pid)
                for number in range(WARM_UP_MESSAGES):
                    await layer.send(channel, warm_up_message(number))
                await worker.pipe.receive("warm")
                errors: Counter[str] = Counter()
                started = time.monotonic()
                await send_each(layer, channel, count, errors)
                delivered, duplicated, last_at = await worker.pipe.receive("done")
                await sampler.last_sample()
    lost = max(count - errors.total() - delivered, 0)
    rate = delivered / (last_at - started) if delivered else None
    errors_column = with_lost(errors, lost, duplicated)
    return ctx.result(rate=rate, errors=errors_column, sampler=sampler)


async def consume_in_worker(
    pipe: Pipe, layer: str, url: str, prefix: str, count: int, settle_s: float
) -> None:
    """The consumer process: reports its channel, the warm-up, then what it received."""
    async with open_layer(layer, url, prefix) as channel_layer:
        channel = await channel_layer.new_channel()
        async with receiving([Consumer(channel_layer, channel)]) as (consumer,):
            pipe.send("ready", channel)
            if await settle([consumer], WARM_UP_MESSAGES, settle_s):
                raise RuntimeError("warm-up messages were lost")
            pipe.send("warm")
            await settle([consumer], WARM_UP_MESSAGES + count, settle_s)
            delivered = consumer.distinct - WARM_UP_MESSAGES
            pipe.send("done", (delivered, consumer.duplicates, consumer.last_at))
            await pipe.receive("close")  # connections stay open until the parent counted them


def rows(sizes: Sizes) -> list[Row]:
    return [
        Row("W1 point-to-point, 1 process", one_process, rtt_bound=True),
        Row("W1 point-to-point, 2 processes", two_processes, rtt_bound=True),
    ]


WORKLOAD = Workload(
    "w1",
    rows,
    description="one producer awaiting each send, one consumer on a new_channel() channel",
)
