"""Message identities: a sender and a sequence number per list, and the marks that use them.

A retry (the link writes a request again after a lost reply) can store a message twice.
Every message therefore names its sender (a random id per event loop, renewed for a list
after a pause: see SendSequences) and a sequence number counted separately for each list it
goes to, so that a list receives 1, 2, 3... from each sender. A receiver remembers, per
list and sender, the highest number it delivered and which of the lower numbers it
delivered too: one bit each for the last ``MAX_GAPS`` numbers. A
number it has not seen yet (a gap) is delivered when it comes, so the marks tolerate
reordering: a message that reaches the list after a later one (a request retried after its
successor already landed, a message another process gave back) is delivered once instead of
being taken for a copy. A number further back than that is taken for a copy.

Bits, not a set of the missing numbers: where processes compete for a normal channel, each
receives only some of a sender's numbers, and every number another one took is a gap here
for good. A set of 4,096 of them cost ~650 KB per (list, sender) and a sort per delivery;
the bits cost 512 bytes and a shift.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# How many missing numbers one mark keeps; older gaps are forgotten (those messages are
# either lost for good or expired long ago).
MAX_GAPS = 4096


class SendSequences:
    """The next sequence number for each list this event loop sends to, and the sender name
    the numbers count under.

    A list left unused for ``restart_idle_s`` starts over at 1 under a new name. Continuing
    the numbers after a pause would meet receivers and a Redis record that forgot the old
    ones: every number up to the new one would be a gap there (4,096 of them: a Redis hash
    of ~260 KB written in one script call that held Redis up for 4 ms, before the record
    became bits, and as many marks in each receiver), while starting over at 1 under the
    same name would be taken for copies by any that still remember. ``restart_idle_s`` is
    below what receivers and Redis remember, so a list that goes on meets its own record.
    """

    __slots__ = ("_numbers", "_restart_idle_s", "_sender", "_streams")

    def __init__(self, sender: str, restart_idle_s: float) -> None:
        self._sender = sender
        self._restart_idle_s = restart_idle_s
        self._numbers: dict[str, list[Any]] = {}  # key -> [last number, last used, name]
        self._streams = 0

    def next(self, key: str) -> tuple[str, int]:
        """(sender name, number) of the next message to ``key``."""
        now = time.monotonic()
        entry = self._numbers.get(key)
        if entry is None or now - entry[1] > self._restart_idle_s:
            self._streams += 1
            entry = self._numbers[key] = [0, now, f"{self._sender}.{self._streams:x}"]
        entry[0] += 1
        entry[1] = now
        return entry[2], entry[0]

    def forget_idle(self) -> None:
        """Drops the lists that would start over anyway."""
        horizon = time.monotonic() - self._restart_idle_s
        for key in [key for key, (_, used, _) in self._numbers.items() if used < horizon]:
            del self._numbers[key]


_WINDOW = (1 << (MAX_GAPS + 1)) - 1  # the highest number and MAX_GAPS below it


class _Mark:
    __slots__ = ("highest", "seen", "seen_at")

    def __init__(self) -> None:
        # Numbers below the first one seen may still come (reordered): they start as gaps.
        self.highest = 0
        self.seen = 0  # bit i: number ``highest - i`` was delivered
        self.seen_at = time.monotonic()


class DeliveryMarks:
    """What this process delivered, per (list, sender): the highest number, and a bit per
    number below it (see the module docstring)."""

    def __init__(self) -> None:
        self._marks: dict[tuple[str, str], _Mark] = {}
        # Event loops in several threads (the server's, async_to_sync calls') share the
        # marks and may pop one list at once. With the GIL a mark's read-shift-write runs
        # without a thread switch (no call inside it); without the GIL (free-threaded
        # builds) two could interleave and lose numbers. Uncontended, ~0.1 us a delivery.
        self._lock = threading.Lock()

    def is_copy(self, key: str, sender: str, seq: int) -> bool:
        """True for a message already delivered; records it as delivered otherwise."""
        with self._lock:
            return self._is_copy(key, sender, seq)

    def _is_copy(self, key: str, sender: str, seq: int) -> bool:
        mark = self._marks.get((key, sender))
        if mark is None:
            mark = self._marks[(key, sender)] = _Mark()
        mark.seen_at = time.monotonic()
        ahead = seq - mark.highest
        if ahead > 0:  # the usual case: the next one (ahead == 1)
            mark.seen = ((mark.seen << ahead) | 1) & _WINDOW if ahead <= MAX_GAPS else 1
            mark.highest = seq
            return False
        if -ahead > MAX_GAPS:  # further back than the marks reach
            return True
        bit = 1 << -ahead
        if mark.seen & bit:
            return True
        mark.seen |= bit
        return False

    def forget_idle(self, idle_s: float) -> None:
        horizon = time.monotonic() - idle_s
        # A copy made in C, in one step: another event loop's reader may add marks meanwhile.
        for mark, value in dict(self._marks).items():
            if value.seen_at < horizon:
                self._marks.pop(mark, None)

    def clear(self) -> None:
        self._marks.clear()
