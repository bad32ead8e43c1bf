"""Sync callers: ``async_to_sync(layer.group_send)`` from a thread, one call after the other.

This is how a Django view, a signal handler or a Celery task sends. Outside the ASGI server's
event loop, asgiref runs each call in a new event loop, and a layer keeps connections per
event loop (channels-ha's sessions, channels_redis's pools), so every call connects again:
under Sentinel that includes asking the sentinels where the master is. The row times each
call (p50/p99); the group's one member is a consumer on this process's own event loop, which
counts what arrives.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from typing import Any

from asgiref.sync import async_to_sync

from ..results import Measurement
from ..workload import Row, RowContext, Sizes, Workload
from ._common import WARM_UP_MESSAGES, Consumer, message, receiving, settle, warm_up, with_lost

GROUP = "bench-sync"


async def sync_group_sends(ctx: RowContext) -> Measurement:
    durations: list[float] = []
    async with ctx.open_layer() as layer:
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        async with receiving([Consumer(layer, channel)]) as (consumer,):
            await warm_up(layer, channel, consumer, ctx.sizes.settle_s)
            calls = ctx.sizes.sync_calls
            errors = await asyncio.to_thread(_call_each, layer, calls, durations)
            expected = WARM_UP_MESSAGES + calls - errors.total()
            lost = await settle([consumer], expected, ctx.sizes.settle_s)
    p50, p99 = _percentiles_ms(durations)
    errors_column = with_lost(errors, lost, consumer.duplicates)
    return ctx.result(p50_ms=p50, p99_ms=p99, errors=errors_column)


def _call_each(layer: Any, count: int, durations: list[float]) -> Counter[str]:
    """In a thread without an event loop, as a WSGI view or a Celery task runs."""
    errors: Counter[str] = Counter()
    group_send = async_to_sync(layer.group_send)
    for seq in range(count):
        started = time.perf_counter()
        try:
            group_send(GROUP, message(seq))
        except Exception as err:  # recorded: a failed call is a result, not a crash
            errors[type(err).__name__] += 1
            continue
        durations.append(time.perf_counter() - started)
    return errors


def _percentiles_ms(durations: list[float]) -> tuple[float | None, float | None]:
    if len(durations) < 2:
        return None, None
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def rows(sizes: Sizes) -> list[Row]:
    label = f"sync group_send, {sizes.sync_calls:,} async_to_sync calls (time per call)"
    return [Row(label, sync_group_sends, "ms")]


WORKLOAD = Workload("sync", rows, description="group_send from sync code, an event loop per call")
