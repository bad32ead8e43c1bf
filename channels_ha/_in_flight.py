"""A normal-channel reader's in-flight list, and its memory of what it handed over.

The list keeps the reader's last popped batch until its next pop (see ``_normal_reader``);
what a recovery brings back is handed over minus what the reader remembers handing over.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from ._constants import HANDED_OVER_REMEMBERED, HANDED_OVER_REMEMBERED_BYTES

logger = logging.getLogger("channels_ha.reader")

_UNSURE = (  # in_flight_lost, OVERDUE's reply lost: the list may have outlived the window
    ", unless the list still held it for the last recovery, whose reply was lost too "
    "(a later recovery may then bring it back)"
)


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


def log_expired(in_flight: str, last_error: Exception | None, unsure: bool) -> None:
    """in_flight_lost: the list expired with a batch whose reply was lost; ``unsure``,
    unless the last recovery, its reply lost too, still found it."""
    last = f"; last error: {last_error}" if last_error else ""
    logger.error(
        "A batch popped from a normal channel whose reply was lost could not be "
        "recovered before its in-flight list %s expired%s; it is lost%s",
        in_flight,
        last,
        _UNSURE if unsure else "",
        extra={"event": "in_flight_lost"},
    )


def log_not_released(in_flight: str, reason: str, owed: bool) -> None:
    """At close, the list could not be emptied: in_flight_lost if a batch was ``owed``
    (its reply lost); otherwise all of it was handed over, and it expires by itself."""
    if not owed:
        logger.info("Could not delete %s at close (%s)", in_flight, reason)
        return
    logger.error(
        "A batch popped from a normal channel whose reply was lost could not be "
        "recovered before close() (%s); it stays in %s until it expires, and is lost",
        reason,
        in_flight,
        extra={"event": "in_flight_lost"},
    )
