"""receive(): a message for a waiting consumer, popped by this event loop's readers.

Each shard has up to two blocking readers per event loop, started on first use: one for
this process's inboxes, one for the normal channels its consumers wait on. They pop for
every channel with a waiting receiver and hand the messages over through ``Deliveries``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from ._buffers import Item
from ._core import LayerCore
from ._delivery import Deliveries
from ._give_back import GiveBack
from ._in_flight import InFlight
from ._reader import BlockingReader
from ._shard import ShardConnections
from ._slots import slot_of


class Receiver:
    """receive() on one event loop, and the readers it starts."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        deliveries: Deliveries,
        readers: dict[tuple[int, bool], BlockingReader],  # (shard, specific) -> reader
        give_back: GiveBack,
        client_prefix: str,
    ) -> None:
        self.core = core
        self._shards = shards
        self.deliveries = deliveries
        self._readers = readers
        self._give_back = give_back
        self._client_prefix = client_prefix
        self._loop = asyncio.get_running_loop()
        self._buffers = deliveries.buffers  # read directly: receive() runs for every message
        self._last_active = core.memberships.last_active
        self._loads = core.codec.loader()

    async def receive(self, channel: str) -> dict[str, Any]:
        # The hot path of every delivery: written out flat, since each call and frame here
        # is paid once per message by every consumer.
        core = self.core
        buffer = self._buffers.get(channel)
        if buffer is None:
            buffer = self.deliveries.buffer(channel)
        item = buffer.take_fresh() if buffer.items else None
        if item is None:
            wake = buffer.wake_reader
            if wake is None:
                wake = buffer.wake_reader = self._reader(buffer.shard, buffer.specific).wake
            waiter: asyncio.Future[Item] = self._loop.create_future()
            buffer.waiters.append(waiter)  # before waking the reader, whose keys count waiters
            if self.deliveries.enter(buffer) or not buffer.specific:
                wake()
            received = False
            try:
                item = await waiter
                received = True
            except asyncio.CancelledError:
                buffer.abandon(waiter)  # passes on a message handed over meanwhile
                raise
            finally:
                # Whatever ends the wait (a message, a cancellation, RedisUnavailable), the
                # channel stays live for a while: its consumer may well receive again.
                self._last_active[channel] = time.monotonic()  # memberships.touch()
                if received:
                    buffer.handed_over -= 1  # resumed with the message it was handed
                if self.deliveries.leave(buffer) and not buffer.specific:
                    wake()  # the channel's reader: stop popping what nobody awaits
                if not buffer.specific:
                    self._give_back.return_stranded([channel])
        else:
            self._last_active[channel] = time.monotonic()  # memberships.touch()
        core.stats.received += 1
        return self._loads(item[1])

    def _reader(self, index: int, specific: bool) -> BlockingReader:
        reader = self._readers.get((index, specific))
        if reader is None:
            reader = self._readers[(index, specific)] = self._start_reader(index, specific)
        return reader

    def _start_reader(self, index: int, specific: bool) -> BlockingReader:
        shard, deliveries = self._shards[index], self.deliveries

        def fail(error: Exception, key: str | None = None) -> None:
            if key is None:
                deliveries.fail_waiters(index, error, specific)
            else:
                deliveries.fail_list(key, error)

        core = self.core
        if specific:
            # Every inbox of this process shares one slot: its tag is the client prefix.
            slot = slot_of(core.keys.inbox(f"x.{self._client_prefix}!"))
            return shard.reader(deliveries.inbox_keys(index), self.deliver, fail, slot)
        slot = slot_of(core.keys.channel("any"))  # every normal channel shares one slot
        # Kept as long as its messages may wait, and at least as long as a failover may take.
        ttl_ms = int(max(core.expiry_s, core.failover_timeout_s) * 1000)
        in_flight = InFlight(core.keys.in_flight(secrets.token_hex(8)), ttl_ms)
        keys = deliveries.normal_keys(index)
        return shard.reader(keys, self.deliver, fail, slot, in_flight)

    def deliver(self, key: str, elements: list[bytes]) -> None:
        """What a reader popped, to the receivers waiting for it (or given back)."""
        touched = self.deliveries.deliver(key, elements)
        if touched:
            self._give_back.return_stranded(touched)
