"""Per-channel buffers inside one process: where popped messages wait for their receiver."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._constants import INBOX_BATCH_SIZE

if TYPE_CHECKING:
    from ._core import Counters

logger = logging.getLogger("channels_ha.layer")

OVERFLOW_LOG_INTERVAL_S = 10.0  # a stalled consumer's drops are logged at most this often

# A buffered message: its expiry (ms since the epoch) and its serialized body.
Item = tuple[int, bytes]


def now_ms() -> int:
    return int(time.time() * 1000)


class ChannelBuffer:
    """Messages of one channel that reached this process, and the receivers waiting for them.

    A message is handed straight to the longest-waiting receiver. Cancelling a receiver never
    loses a message: if the cancellation races with a delivery, the message goes back to the
    front of the buffer.
    """

    __slots__ = (
        "capacity",
        "channel",
        "counters",
        "dropped",
        "handed_over",
        "items",
        "shard",
        "specific",
        "waiters",
        "waiting_key",
        "wake_reader",
        "warned_at",
    )

    def __init__(
        self, channel: str, capacity: int, shard: int, waiting_key: str, counters: Counters
    ) -> None:
        self.channel = channel
        self.capacity = capacity
        self.counters = counters  # the layer's: what expires here is counted where it goes
        # The route, worked out once: receive() runs for every message.
        self.shard = shard
        self.specific = "!" in channel
        self.waiting_key = waiting_key  # the inbox key, or the channel itself
        self.wake_reader: Callable[[], None] | None = None  # of the reader that fills it
        self.items: deque[Item] = deque()
        # Receivers append a future here; put() hands the next message to the oldest.
        self.waiters: deque[asyncio.Future[Item]] = deque()
        # Receivers handed a message that have not resumed yet: still waiting, as far as
        # liveness and sweeping go (see Deliveries.waiting_on). A count, since several
        # receivers of one channel may be in that state at once.
        self.handed_over = 0
        self.dropped = 0
        self.warned_at = 0.0

    def put(self, item: Item) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                self.handed_over += 1
                return
        self.items.append(item)
        if len(self.items) > self.capacity + INBOX_BATCH_SIZE:
            # The receiver stopped reading: keep the newest, as channels_redis does. Past its
            # capacity by more than one pop's batch only: Redis bounds a process's whole inbox,
            # not each channel, and one pop may bring a channel more than its capacity (its
            # backlog, plus what another event loop handed back: seen 18 of 120 dropped that
            # way, though every send had been accepted).
            self.items.popleft()
            self.dropped += 1
            if self.dropped == 1 or time.monotonic() - self.warned_at > OVERFLOW_LOG_INTERVAL_S:
                self.warned_at = time.monotonic()
                logger.warning(
                    "Channel %s is over capacity (%d, and one pop's batch of %d) in this "
                    "process; dropped its oldest message (%d so far)",
                    self.channel,
                    self.capacity,
                    INBOX_BATCH_SIZE,
                    self.dropped,
                    extra={"event": "buffer_overflow", "channel": self.channel},
                )

    def _put_front(self, item: Item) -> None:
        if any(not waiter.done() for waiter in self.waiters):
            self.put(item)  # straight to the longest-waiting receiver
        else:
            self.items.appendleft(item)

    def take_fresh(self) -> Item | None:
        """The oldest unexpired buffered message, if any (expired ones are dropped, and
        counted: the sweep never sees them)."""
        if not self.items:
            return None
        now = now_ms()
        while self.items:
            item = self.items.popleft()
            if item[0] > now:
                return item
            self.counters.expired += 1
        return None

    def abandon(self, waiter: asyncio.Future[Item]) -> None:
        """A receiver was cancelled: a message already handed to it goes to the next receiver
        still waiting, or back in front of the buffer."""
        if waiter.done() and not waiter.cancelled():
            if waiter.exception() is None:  # not a receiver failed with RedisUnavailable
                self.handed_over -= 1
                self._put_front(waiter.result())
        elif waiter in self.waiters:
            self.waiters.remove(waiter)

    def drop_expired(self) -> int:
        now = now_ms()
        before = len(self.items)
        self.items = deque(item for item in self.items if item[0] > now)
        return before - len(self.items)

    def take_fresh_all(self) -> list[Item]:
        """Every unexpired buffered message, in order; the expired ones are dropped and
        counted."""
        now = now_ms()
        items = [item for item in self.items if item[0] > now]
        self.counters.expired += len(self.items) - len(items)
        self.items.clear()
        return items

    def take_all(self) -> list[Item]:
        items = list(self.items)
        self.items.clear()
        return items

    @property
    def idle(self) -> bool:
        """Nothing buffered and nobody waiting (a receiver handed a message but not yet
        resumed still counts as waiting): the buffer can be forgotten."""
        return not self.items and not self.waiters and not self.handed_over
