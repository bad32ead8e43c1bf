"""Sends that never leave the process: to a process-specific channel of this layer, from the
event loop that receives its inbox.

Such a message would go to Redis (PUSH into the inbox) only to come back through this same
event loop's inbox reader, a round trip each way. It goes straight into the channel's
buffer instead, where the reader would have put it, when two things hold:

- This event loop has a receive() waiting on the channel's inbox. Its reader is then the
  one popping that inbox: a message sent through Redis would land in this same buffer. An
  event loop that does not receive the inbox (an ``async_to_sync`` thread's, or any before
  its first receive()) sends through Redis, where whichever loop receives next finds it;
  put in its own buffer, nobody would ever take it.
- None of this process's earlier messages to that inbox is still in Redis (``Unpopped``):
  the local one would overtake it, and FIFO per channel for one sender would break (a
  ``send`` or a ``group_send`` whose copy went through Redis, then a ``send`` here).

Capacity is the channel's, counted in its buffer: ``ChannelFull`` when it holds
``capacity`` messages, as channels_redis counts a channel's own messages. (Through Redis a
process-specific channel is refused only when its whole inbox is full.)
"""

from __future__ import annotations

from ._buffers import ChannelBuffer, now_ms

# Sequence numbers identify a message within its inbox: (sender name, number).
Ident = tuple[str, int]
# Past this many messages of an inbox in Redis, each one added first forgets the expired
# (the front of the dict, oldest first): messages sent to an inbox nobody pops stay bounded
# by what did not expire.
_PRUNE_FROM = 256


class Unpopped:
    """This process's messages on their way through its own inboxes in Redis: written (or
    being written), not yet popped. Shared by the event loops of the process: a message one
    loop sent may be popped by another's reader (the one receiving then).

    Each is forgotten when a reader pops it, when Redis refused it (full, or a group plan
    found stale: nothing stored), or when it expires (popped then, it is dropped: no later
    message can overtake it). Plain dict operations, atomic under the GIL: several threads
    add and remove."""

    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[str, dict[Ident, int]] = {}  # inbox key -> ident -> expiry (ms)

    def add(self, key: str, sender: str, seq: int, expires_ms: int) -> None:
        waiting = self.by_key.get(key)
        if waiting is None:
            waiting = self.by_key.setdefault(key, {})
        elif len(waiting) > _PRUNE_FROM:  # an inbox nobody here pops: forget what expired
            self.any_left(key)
        waiting[(sender, seq)] = expires_ms

    def discard(self, key: str, sender: str, seq: int) -> None:
        """Redis did not store it after all."""
        waiting = self.by_key.get(key)
        if waiting:
            waiting.pop((sender, seq), None)

    def any_left(self, key: str) -> bool:
        """Whether a message of this process may still be in the inbox ``key``. The expired
        ones go first: oldest first, as added (a dict keeps that order)."""
        waiting = self.by_key.get(key)
        if not waiting:
            return False
        now = now_ms()
        try:
            while True:
                # (None: another thread's reader took the last one since the check above)
                oldest = next(iter(waiting.items()), None)
                if oldest is None:
                    return False
                if oldest[1] > now:
                    return True
                waiting.pop(oldest[0], None)
        except RuntimeError:  # another thread's reader popped one between iter() and next()
            return True  # (asked again at the next send)


class LocalPath:
    """One event loop's short-cut: which sends may take it, and the buffer they go to."""

    __slots__ = ("_buffers", "_gates", "_inbox_waiting", "_unpopped")

    def __init__(
        self,
        buffers: dict[str, ChannelBuffer],
        inbox_waiting: dict[str, int],
        gates: dict[str, int],
        unpopped: Unpopped,
    ) -> None:
        self._buffers = buffers  # the event loop's Deliveries' (never replaced)
        self._inbox_waiting = inbox_waiting  # inbox key -> receivers waiting here
        self._gates = gates  # inbox key -> hand-overs under way (see _handover)
        self._unpopped = unpopped

    def buffer_for(self, channel: str) -> ChannelBuffer | None:
        """The buffer a send to ``channel`` goes to without Redis, or None to go through it.

        A channel without a buffer here has no receiver here yet: through Redis, the reader
        makes its buffer if this loop still receives the inbox when it pops. Only this
        process's channels wait in ``_inbox_waiting`` (receive() refuses the others)."""
        buffer = self._buffers.get(channel)
        if buffer is None:
            return None
        key = buffer.waiting_key
        if key not in self._inbox_waiting or key in self._gates:
            return None  # not receiving here, or what another loop hands back comes first
        if self._unpopped.any_left(key):
            return None
        return buffer
