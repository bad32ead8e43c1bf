"""W2 burst: many concurrent sends from one process (``asyncio.gather``), one consumer.

This is a page of a chat app fanning a message out with one ``send`` per recipient, or a
management command pushing a batch. A layer that checks a connection out of a pool per command
needs as many connections as there are sends in flight, and fails (channels_redis with
redis-py 8: ``MaxConnectionsError``) when the pool is exhausted; failures are counted, not
raised. Connections are sampled during the burst.
"""

from __future__ import annotations

import asyncio
import time

from ..results import Measurement
from ..workload import Row, RowContext, Sizes, Workload
from ._common import (
    WARM_UP_MESSAGES,
    error_kinds,
    message,
    one_warm_consumer,
    settle,
    with_lost,
)


async def burst(ctx: RowContext) -> Measurement:
    count = ctx.sizes.burst_messages
    async with one_warm_consumer(ctx) as (layer, channel, consumer, sampler):
        cpu = ctx.cpu_window()
        cpu.start()
        started = time.monotonic()
        sends = asyncio.gather(
            *(layer.send(channel, message(seq)) for seq in range(count)),
            return_exceptions=True,
        )
        await asyncio.to_thread(sampler.sample)  # one sample while the burst is on
        errors = error_kinds(await sends)
        await asyncio.to_thread(sampler.sample)  # and one with what the burst left open
        expected = WARM_UP_MESSAGES + count - errors.total()
        lost = await settle([consumer], expected, ctx.sizes.settle_s)
        delivered = consumer.distinct - WARM_UP_MESSAGES
        spent = cpu.per_message(delivered)
        await sampler.last_sample()
    rate = delivered / (consumer.last_at - started) if delivered else None
    errors_column = with_lost(errors, lost, consumer.duplicates)
    return ctx.result(rate=rate, errors=errors_column, cpu=spent, sampler=sampler)


def rows(sizes: Sizes) -> list[Row]:
    return [Row(f"W2 burst, {sizes.burst_messages:,} concurrent sends", burst)]


WORKLOAD = Workload("w2", rows, description="concurrent sends from one process, one consumer")
