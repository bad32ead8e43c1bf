"""From popped list elements to the receivers of one event loop.

Readers pop elements; this module turns them into messages in per-channel buffers, drops
what expired and what is a duplicate, keeps count of who is waiting (which tells readers
what to pop), and gives back what nobody here will receive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ._buffers import ChannelBuffer, now_ms
from ._codec import decode_element, encode_element
from ._core import LayerCore
from ._inbox_limits import InboxLimits
from ._reader import KeysFn
from ._throttle import LogThrottle
from .exceptions import MalformedElement

logger = logging.getLogger("channels_ha.layer")

MALFORMED_LOG_INTERVAL_S = 10.0  # a stream of foreign elements is logged at most this often


def inbox_of(channel: str) -> str:
    """The non-local part of a process-specific channel name, up to and including the "!"."""
    return channel[: channel.index("!") + 1]


def target_of(channel: str) -> str:
    """What a channel's messages are routed by: its inbox, or the channel itself."""
    return inbox_of(channel) if "!" in channel else channel


class Deliveries:
    """Buffers, waiting receivers and duplicate marks of one event loop."""

    def __init__(self, core: LayerCore, limits: InboxLimits) -> None:
        self._core = core
        self.buffers: dict[str, ChannelBuffer] = {}  # channel -> its buffer; never replaced
        self._limits = limits  # told as buffers of process-specific channels come and go
        # Inbox key -> receivers waiting; read by sends too (see _local_path).
        self.inbox_waiting: dict[str, int] = {}
        self._normal_waiting: dict[str, int] = {}  # channel -> receivers waiting
        self._inbox_shard: dict[str, int] = {}
        # Normal channel -> its give-backs in flight (see take_returnable): not popped meanwhile.
        self._returning: dict[str, int] = {}
        # Inbox key -> hand-overs awaited (_handover): not popped meanwhile, nor sent to
        # without Redis (read by sends too: see _local_path).
        self.inbox_gates: dict[str, int] = {}
        # Inbox keys this loop was asked to hand over to another (_handover), and has not
        # received on since: it holds nothing of them, or gives it back (other threads add).
        self.inboxes_handed_over: set[str] = set()
        self._malformed_log = LogThrottle(MALFORMED_LOG_INTERVAL_S)

    def buffer(self, channel: str) -> ChannelBuffer:
        buffer = self.buffers.get(channel)
        if buffer is None:
            buffer = self._add(channel)
        return buffer

    def _add(self, channel: str) -> ChannelBuffer:
        """A new channel's buffer; a process-specific one raises its inbox's limit (once per
        channel, off the hot path)."""
        core = self._core
        capacity = core.capacity_of(channel)
        if "!" in channel:
            target = inbox_of(channel)
            waiting_key = core.keys.inbox(target)
        else:
            target = waiting_key = channel
        shard = core.shard_index(target)
        buffer = ChannelBuffer(channel, capacity, shard, waiting_key, core.stats)
        self.buffers[channel] = buffer
        if buffer.specific:
            self._limits.added(target, capacity)
        return buffer

    # -- who is waiting ----------------------------------------------------------------------

    def waiting_on(self, channel: str) -> bool:
        """Whether a receive() on ``channel`` waits in this event loop. Safe to ask from
        another thread (async_to_sync): the waiters are copied in one step."""
        buffer = self.buffers.get(channel)
        if buffer is None:
            return False
        return buffer.handed_over > 0 or any(not waiter.done() for waiter in tuple(buffer.waiters))

    def receiving_inbox(self) -> bool:
        """Whether a receive() on a process-specific channel waits in this event loop (asked
        from other threads: one read of a dict's size)."""
        return bool(self.inbox_waiting)

    def enter(self, buffer: ChannelBuffer) -> bool:
        """A receiver starts waiting; True if it is the first for its inbox or channel."""
        counter = self.inbox_waiting if buffer.specific else self._normal_waiting
        key = buffer.waiting_key
        if buffer.specific:
            self._inbox_shard[key] = buffer.shard
            if key in self.inboxes_handed_over:
                self.inboxes_handed_over.remove(key)
        count = counter[key] = counter.get(key, 0) + 1
        return count == 1

    def leave(self, buffer: ChannelBuffer) -> bool:
        """A receiver stops waiting; True if it was the last for its inbox or channel."""
        counter = self.inbox_waiting if buffer.specific else self._normal_waiting
        key = buffer.waiting_key
        count = counter[key] - 1
        if count > 0:
            counter[key] = count
            return False
        del counter[key]
        return True

    def inbox_keys(self, index: int) -> KeysFn:
        """What the inbox reader of shard ``index`` pops: inboxes somebody waits on."""

        def keys() -> list[str]:
            gates = self.inbox_gates
            return [
                key
                for key in self.inbox_waiting
                if self._inbox_shard.get(key) == index and key not in gates
            ]

        return keys

    def gate(self, key: str) -> None:
        """The inbox ``key`` is not popped until ``ungate`` (a hand-over is under way)."""
        self.inbox_gates[key] = self.inbox_gates.get(key, 0) + 1

    def ungate(self, key: str) -> bool:
        """One hand-over of ``key`` is over; True if none is left (it may be popped)."""
        count = self.inbox_gates.get(key, 0) - 1
        if count > 0:
            self.inbox_gates[key] = count
            return False
        self.inbox_gates.pop(key, None)
        return True

    def holding(self, key: str) -> list[str]:
        """The process-specific channels of the inbox ``key`` with messages buffered here."""
        return [
            channel
            for channel, buffer in self.buffers.items()
            if buffer.items and buffer.waiting_key == key and buffer.specific
        ]

    def normal_keys(self, index: int) -> KeysFn:
        """What the normal-channel reader pops: channels with a receiver still unserved.

        Popping ahead of receivers would take messages that a competing receiver in another
        process should get. A channel whose messages are on their way back to the head of its
        list waits until they are there: a pop before that would take a later message first.
        """
        core = self._core

        def keys() -> list[str]:
            buffers, returning = self.buffers, self._returning
            return [
                core.keys.channel(channel)
                for channel in self._normal_waiting
                if (buffer := buffers.get(channel)) is not None
                and buffer.waiters
                and channel not in returning
                and core.shard_index(channel) == index
            ]

        return keys

    def fail_waiters(self, index: int, error: Exception, specific: bool | None = None) -> None:
        """Hands ``error`` to every receiver waiting on a channel of shard ``index`` (only on
        process-specific or only on normal channels, if ``specific`` says which: the reader
        that failed); their waiters leave the buffers, which the sweep can then forget."""
        for buffer in self.buffers.values():
            if buffer.shard == index and specific in (None, buffer.specific):
                _fail(buffer, error)

    def fail_list(self, key: str, error: Exception) -> None:
        """Hands ``error`` to the receivers waiting on the normal channel whose list is
        ``key`` (Redis refused to pop that list alone)."""
        keys = self._core.keys
        for channel in [c for c in self._normal_waiting if keys.channel(c) == key]:
            buffer = self.buffers.get(channel)
            if buffer is not None:
                _fail(buffer, error)

    # -- delivering --------------------------------------------------------------------------

    def deliver(self, key: str, elements: list[bytes]) -> set[str]:
        """Buffers the elements popped from ``key``; returns the normal channels touched."""
        now = now_ms()
        stats = self._core.stats
        normal: set[str] = set()
        unpopped = self._core.unpopped.by_key.get(key)  # this process's, in its inbox
        for element in elements:
            try:
                envelope = decode_element(element)
            except MalformedElement as err:
                self._malformed(key, err)
                continue
            if unpopped:  # no longer in Redis: sends here may skip it (see _local_path)
                unpopped.pop((envelope.sender, envelope.seq), None)
            if envelope.expires_ms <= now:
                stats.expired += 1
            elif self._core.marks.is_copy(key, envelope.sender, envelope.seq):
                stats.duplicates_dropped += 1
            else:
                item = (envelope.expires_ms, envelope.body)
                targets = envelope.targets
                buffers = self.buffers
                for target in [targets] if isinstance(targets, str) else targets:
                    buffer = buffers.get(target)
                    if buffer is None:
                        buffer = self._add(target)
                    buffer.put(item)
                    if "!" not in target:
                        normal.add(target)
        return normal

    def _malformed(self, key: str, err: MalformedElement) -> None:
        self._core.stats.malformed_dropped += 1
        count = self._malformed_log.due()
        if count:
            logger.warning(
                "Dropped %d element(s) of %s that are not channels-ha messages (the last: %s). "
                "Is another program writing to this layer's prefix?",
                count,
                key,
                err,
                extra={"event": "malformed_dropped", "key": key},
            )

    # -- giving back ---------------------------------------------------------------------------

    def stranded(self, channels: Iterable[str]) -> list[str]:
        """Normal channels holding messages that no receiver here is waiting for."""
        found = []
        for channel in channels:
            buffer = self.buffers.get(channel)
            if buffer is not None and buffer.items and not buffer.waiters:
                found.append(channel)
        return found

    def take_returnable(
        self, channels: Iterable[str], returner: str
    ) -> tuple[dict[tuple[int, str], list[bytes]], list[str]]:
        """Removes the buffered messages of ``channels`` (unless somebody waits there) and
        encodes them again for their list, by (shard, key), in their original order; with
        the normal channels they came from, which are not popped until ``returned`` says
        the give-back is over.

        They go back under ``returner``, a fresh sender id: receivers hold no mark for it, so
        they will not mistake the returned messages for duplicates.
        """
        core = self._core
        numbers: dict[str, int] = {}  # key -> the last number given back there
        returned: dict[tuple[int, str], list[bytes]] = {}
        gated: list[str] = []
        for channel in channels:
            buffer = self.buffers.get(channel)
            if buffer is None or buffer.waiters:
                continue
            target = target_of(channel)
            key = core.keys.inbox(target) if "!" in channel else core.keys.channel(channel)
            items = buffer.take_fresh_all()
            for expires, body in items:
                seq = numbers[key] = numbers.get(key, 0) + 1
                element = encode_element(expires, returner, seq, channel, body)
                if "!" in channel:  # until popped again, a send here must not overtake it
                    core.unpopped.add(key, returner, seq, expires)
                returned.setdefault((core.shard_index(target), key), []).append(element)
            if items and "!" not in channel:
                self._returning[channel] = self._returning.get(channel, 0) + 1
                gated.append(channel)
        return returned, gated

    def returned(self, channels: Iterable[str]) -> None:
        """A give-back of ``channels`` is over (written, or failed and kept for a retry): their
        receivers here may pop again."""
        for channel in channels:
            count = self._returning.get(channel, 0) - 1
            if count > 0:
                self._returning[channel] = count
                continue
            self._returning.pop(channel, None)
            buffer = self.buffers.get(channel)
            if buffer is not None and buffer.waiters and buffer.wake_reader is not None:
                buffer.wake_reader()

    def channels(self) -> list[str]:
        return list(self.buffers)

    def inbox_limits(self) -> dict[str, int]:
        """Per inbox of this process: the summed capacity of its channels seen here."""
        return self._limits.current()

    # -- upkeep ------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Drops expired messages, idle buffers and old marks; returns stranded channels."""
        for channel, buffer in list(self.buffers.items()):
            self._core.stats.expired += buffer.drop_expired()
            if buffer.idle:
                del self.buffers[channel]
                if buffer.specific:
                    self._limits.removed(inbox_of(channel), buffer.capacity)
        return self.stranded(c for c in self.buffers if "!" not in c)

    def clear(self) -> None:
        for buffer in self.buffers.values():
            buffer.take_all()

    def discard(self) -> int:
        """At close, once nothing will give back: drops what is still buffered; returns how
        many messages were still fresh (lost), the expired ones counted as such."""
        return sum(len(buffer.take_fresh_all()) for buffer in self.buffers.values())

    def buffered(self) -> int:
        """Asked from other threads too (statistics() for metrics and health): a snapshot."""
        return sum(len(buffer.items) for buffer in tuple(self.buffers.values()))


def _fail(buffer: ChannelBuffer, error: Exception) -> None:
    """Fails every receiver waiting on ``buffer``; their waiters leave it."""
    while buffer.waiters:
        waiter = buffer.waiters.popleft()
        if not waiter.done():
            waiter.set_exception(error)
