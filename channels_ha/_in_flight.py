"""A normal-channel reader's in-flight list, and its memory of what it handed over.

The list keeps the reader's last popped batch until its next pop (see ``_normal_reader``);
what a recovery brings back is handed over minus what the reader remembers handing over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._constants import HANDED_OVER_REMEMBERED, HANDED_OVER_REMEMBERED_BYTES


@dataclass(frozen=True)
class InFlight:
    """A normal-channel reader's in-flight list, and how long it outlives the last pop."""

    key: str
    ttl_ms: int


class HandedOver:
    """The elements handed over last: a bounded number, and bytes (the newest batch is kept
    whatever its size). Elements are unique: they carry their sender and sequence number."""

    def __init__(self) -> None:
        self._elements: deque[bytes] = deque()
        self._bytes = 0

    def remember(self, elements: list[bytes]) -> None:
        for element in elements:
            self._elements.append(element)
            self._bytes += len(element)
        kept = self._elements
        while len(kept) > max(HANDED_OVER_REMEMBERED, len(elements)) or (
            self._bytes > HANDED_OVER_REMEMBERED_BYTES and len(kept) > len(elements)
        ):
            self._bytes -= len(kept.popleft())

    def unseen(self, elements: list[bytes]) -> list[bytes]:
        return [element for element in elements if element not in self._elements]
