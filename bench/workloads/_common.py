"""What the workloads share: the message, a counting consumer, and how a run settles.

Every message carries a sequence number, unique on its channel within a run (warm-up messages
take negative ones), and a consumer counts the distinct numbers it received: a count of
arrivals alone would let a duplicate stand in for a lost message, and report neither. A run
ends when every consumer has the distinct messages it expects, or when no new one arrived for
``settle_s``: whatever is still missing then is counted as lost (an error), not waited for,
so a layer that drops messages shows up in the errors column instead of as a timeout, and so
does one that delivers a message twice (``duplicates``).
Times are ``time.monotonic()``, which on Linux is one system-wide clock, so a worker process's
receive times compare with the parent's send times.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..connections import ConnectionSampler
    from ..workload import RowContext

WARM_UP_MESSAGES = 20  # opens connections, starts readers, loads scripts before timing
POLL_S = 0.01
_TEXT = "x" * 110  # with the other fields, ~150 bytes of msgpack


def message(seq: int, **extra: Any) -> dict[str, Any]:
    """The benchmark message: ~150 bytes serialized."""
    return {"type": "bench.message", "seq": seq, "text": _TEXT, **extra}


def warm_up_message(number: int) -> dict[str, Any]:
    """Warm-up message ``number`` (from 0): numbered below 0, apart from the timed ones."""
    return message(-1 - number)


class Consumer:
    """Receives on one channel in a task of its own, counting which messages arrive and when.

    The numbers seen are kept in a set: one ``add`` per message (tens of nanoseconds, against
    tens of microseconds for a ``receive``), the same for every layer.
    """

    def __init__(
        self,
        layer: Any,
        channel: str,
        on_message: Callable[[dict[str, Any], float], None] | None = None,
    ) -> None:
        self.layer = layer
        self.channel = channel
        self.received = 0  # every arrival, duplicates included
        self.last_at = 0.0
        self._seen: set[int] = set()
        self._on_message = on_message
        self.task: asyncio.Task[None] | None = None

    @property
    def distinct(self) -> int:
        """How many different messages arrived."""
        return len(self._seen)

    @property
    def duplicates(self) -> int:
        """Arrivals of a message that had arrived already."""
        return self.received - len(self._seen)

    async def run(self) -> None:
        """Receives until cancelled."""
        seen = self._seen
        while True:
            received = await self.layer.receive(self.channel)
            now = time.monotonic()
            seen.add(received["seq"])
            self.received += 1
            self.last_at = now
            if self._on_message is not None:
                self._on_message(received, now)

    def failure(self) -> BaseException | None:
        """Why the receiving task stopped, if it stopped on its own."""
        task = self.task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()


@asynccontextmanager
async def receiving(consumers: list[Consumer]) -> AsyncIterator[list[Consumer]]:
    """Runs the consumers for the duration of the block; cancels and awaits them after."""
    loop = asyncio.get_running_loop()
    for consumer in consumers:
        consumer.task = loop.create_task(consumer.run())
    try:
        yield consumers
    finally:
        tasks = {consumer.task for consumer in consumers if consumer.task is not None}
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # unlike gather, does not re-raise their cancellation
        for task in tasks:
            if not task.cancelled():
                task.exception()  # seen: a failure during the run was raised by settle()


async def settle(consumers: list[Consumer], expected_each: int, idle_s: float) -> int:
    """Waits until each consumer received ``expected_each`` distinct messages, or no new one
    arrives for ``idle_s``; returns how many are missing (lost)."""
    total = expected_each * len(consumers)
    last_count, last_change = -1, time.monotonic()
    while True:
        count = sum(min(c.distinct, expected_each) for c in consumers)
        if count >= total:
            return 0
        _raise_failure(consumers)
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change >= idle_s:
            return total - count
        await asyncio.sleep(POLL_S)


def _raise_failure(consumers: list[Consumer]) -> None:
    for consumer in consumers:
        error = consumer.failure()
        if error is not None:
            raise RuntimeError(f"a consumer stopped: {type(error).__name__}: {error}") from error


async def warm_up(layer: Any, channel: str, consumer: Consumer, idle_s: float) -> None:
    """Sends and receives a few messages, so that timing starts on a warm layer."""
    for number in range(WARM_UP_MESSAGES):
        await layer.send(channel, warm_up_message(number))
    if await settle([consumer], WARM_UP_MESSAGES, idle_s):
        raise RuntimeError("warm-up messages were lost")


@asynccontextmanager
async def one_warm_consumer(
    ctx: RowContext,
) -> AsyncIterator[tuple[Any, str, Consumer, ConnectionSampler]]:
    """A layer, a new channel with one consumer task in this process, warmed up, and a
    connection sampler watching this process, for the duration of the block."""
    async with ctx.open_layer() as layer:
        channel = await layer.new_channel()
        async with receiving([Consumer(layer, channel)]) as (consumer,):
            await warm_up(layer, channel, consumer, ctx.sizes.settle_s)
            with ctx.sampler() as sampler:
                sampler.watch("process", os.getpid())
                yield layer, channel, consumer, sampler


async def send_each(layer: Any, channel: str, count: int, errors: Counter[str]) -> None:
    """Sends ``count`` messages one after the other, each awaited; failures are counted."""
    for seq in range(count):
        try:
            await layer.send(channel, message(seq))
        except Exception as err:  # recorded: a failed send is a result, not a crash
            errors[type(err).__name__] += 1


def error_kinds(outcomes: list[Any]) -> Counter[str]:
    """Exception type name -> count, from ``gather(..., return_exceptions=True)`` results."""
    return Counter(type(o).__name__ for o in outcomes if isinstance(o, BaseException))


def duplicates(consumers: list[Consumer]) -> int:
    """Arrivals of a message its consumer had already, over all ``consumers``."""
    return sum(consumer.duplicates for consumer in consumers)


def with_lost(errors: Counter[str], lost: int, duplicated: int = 0) -> dict[str, int]:
    """The errors column: failures by exception type, then ``lost`` and ``duplicates``
    (messages, or deliveries in W3), each left out when 0."""
    return dict(errors + Counter(lost=lost, duplicates=duplicated))
