"""Message identities: a sender and a sequence number per list, and the marks that use them.

A retry (the link writes a request again after a lost reply) can store a message twice.
Every message therefore names its sender (a random id per event loop) and a sequence number
counted separately for each list it goes to, so that a list receives 1, 2, 3... from each
sender. A receiver remembers, per list and sender, the highest number it delivered and which
lower numbers it has not seen yet (gaps): a number at or below the highest that is not a gap
is a copy. Gaps make the marks tolerant of reordering: a message that reaches the list after
a later one (a request retried after its successor already landed) fills its gap and is
delivered once, instead of being taken for a copy.
"""

from __future__ import annotations

import time

# How many missing numbers one mark keeps; older gaps are forgotten (those messages are
# either lost for good or expired long ago).
MAX_GAPS = 4096


class SendSequences:
    """The next sequence number for each list this event loop sends to."""

    __slots__ = ("_numbers",)

    def __init__(self) -> None:
        self._numbers: dict[str, list[float]] = {}  # key -> [last number, last used]

    def next(self, key: str) -> int:
        entry = self._numbers.get(key)
        if entry is None:
            entry = self._numbers[key] = [0, 0.0]
        entry[0] += 1
        entry[1] = time.monotonic()
        return int(entry[0])

    def forget_idle(self, idle_s: float) -> None:
        """Drops counters unused for ``idle_s``: receivers forgot their marks by then, so
        starting such a list over at 1 is not mistaken for copies."""
        horizon = time.monotonic() - idle_s
        for key in [key for key, (_, used) in self._numbers.items() if used < horizon]:
            del self._numbers[key]


class _Mark:
    __slots__ = ("gaps", "highest", "seen_at")

    def __init__(self, highest: int) -> None:
        self.highest = highest
        self.gaps: set[int] = set()
        self.seen_at = time.monotonic()


class DeliveryMarks:
    """What this process delivered, per (list, sender): the highest number and the gaps."""

    def __init__(self) -> None:
        self._marks: dict[tuple[str, str], _Mark] = {}

    def is_copy(self, key: str, sender: str, seq: int) -> bool:
        """True for a message already delivered; records it as delivered otherwise."""
        mark = self._marks.get((key, sender))
        if mark is None:
            # Numbers below the first one seen may still come (reordered): they are gaps.
            mark = self._marks[(key, sender)] = _Mark(0)
        mark.seen_at = time.monotonic()
        if seq == mark.highest + 1:  # the usual case: the next one
            mark.highest = seq
            return False
        if seq > mark.highest:
            mark.gaps.update(range(max(mark.highest + 1, seq - MAX_GAPS), seq))
            mark.highest = seq
            _trim(mark.gaps)
            return False
        if seq in mark.gaps:
            mark.gaps.discard(seq)
            return False
        return True

    def forget_idle(self, idle_s: float) -> None:
        horizon = time.monotonic() - idle_s
        # A copy made in C, in one step: another event loop's reader may add marks meanwhile.
        for mark, value in dict(self._marks).items():
            if value.seen_at < horizon:
                self._marks.pop(mark, None)

    def clear(self) -> None:
        self._marks.clear()


def _trim(gaps: set[int]) -> None:
    if len(gaps) > MAX_GAPS:
        for old in sorted(gaps)[: len(gaps) - MAX_GAPS]:
            gaps.discard(old)
