"""Latency: W1 paced at a fixed rate, far below saturation, in one process.

Each message carries the time its ``send`` started; the consumer subtracts it from the time the
message came out of ``receive()``, on the same clock. The producer follows an absolute schedule
(message i is due at start + i / rate), so a slow send does not shift the ones after it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from typing import Any

from ..results import Measurement
from ..workload import Row, RowContext, Sizes, Workload
from ._common import WARM_UP_MESSAGES, Consumer, message, receiving, settle, warm_up, with_lost

BEHIND_SCHEDULE = 0.95  # below this share of the offered rate, the layer is saturated


class Latencies:
    """Receive time minus send start, in seconds, of the timed messages."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def record(self, received: dict[str, Any], now: float) -> None:
        if "sent_at" in received:  # warm-up messages are not timed
            self.samples.append(now - received["sent_at"])

    def percentiles_ms(self) -> tuple[float | None, float | None]:
        if len(self.samples) < 2:
            return None, None
        cuts = statistics.quantiles(self.samples, n=100, method="inclusive")
        return cuts[49] * 1000, cuts[98] * 1000


async def paced(ctx: RowContext) -> Measurement:
    latencies = Latencies()
    async with ctx.open_layer() as layer:
        channel = await layer.new_channel()
        consumers = [Consumer(layer, channel, latencies.record)]
        async with receiving(consumers) as (consumer,):
            await warm_up(layer, channel, consumer, ctx.sizes.settle_s)
            with ctx.sampler() as sampler:
                sampler.watch("process", os.getpid())
                started = time.monotonic()
                errors = await _send_paced(layer, channel, ctx.sizes, started)
                expected = WARM_UP_MESSAGES + ctx.sizes.latency_messages - errors.total()
                lost = await settle([consumer], expected, ctx.sizes.settle_s)
                await sampler.last_sample()
    p50, p99 = latencies.percentiles_ms()
    delivered = consumer.distinct - WARM_UP_MESSAGES
    return ctx.result(
        p50_ms=p50,
        p99_ms=p99,
        errors=with_lost(errors, lost, consumer.duplicates),
        sampler=sampler,
        note=_saturation(delivered, consumer.last_at - started, ctx.sizes),
    )


def _saturation(delivered: int, elapsed_s: float, sizes: Sizes) -> str:
    """A note when the layer could not carry the offered rate end to end (the producer fell
    behind, or the consumer did): the latency is then mostly queueing time."""
    # On schedule, the last message is due (n - 1) intervals after the first.
    achieved = delivered / (elapsed_s + 1 / sizes.latency_rate)
    if achieved >= BEHIND_SCHEDULE * sizes.latency_rate:
        return ""
    return f"saturated: carried {achieved:,.0f} of {sizes.latency_rate:,} msgs/s"


async def _send_paced(layer: Any, channel: str, sizes: Sizes, started: float) -> Counter[str]:
    """Sends on schedule from ``started``; returns the failures."""
    errors: Counter[str] = Counter()
    interval_s = 1 / sizes.latency_rate
    for seq in range(sizes.latency_messages):
        delay = started + seq * interval_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await layer.send(channel, message(seq, sent_at=time.monotonic()))
        except Exception as err:  # recorded: a failed send is a result, not a crash
            errors[type(err).__name__] += 1
    return errors


def rows(sizes: Sizes) -> list[Row]:
    return [Row(f"latency, W1 paced at {sizes.latency_rate:,} msgs/s", paced, "ms")]


WORKLOAD = Workload("latency", rows, description="p50/p99 of W1 at a fixed rate")
