"""The last seconds of acknowledged writes, written again after a failover.

Redis acknowledges a write before its replicas have it, and a master restarted without
persistence forgets what it held. Either way a message whose ``send`` returned can be gone
from the new server run, and its receiver may never have popped it. The sender still has the
request, so after meeting a new server run it writes again what it wrote in the seconds before
the failure. Receivers recognise copies of what they already had (see ``_sequence``), so only
the missing messages come through.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ._constants import REPLAY_LIMIT, REPLAY_WINDOW_S

# A request, or how to make it when it is written again (most never are).
Replayable = bytes | Callable[[], bytes]

RETAIN_IDLE_S = 60.0  # the default expiry: messages older than that are gone anyway


class RecentPushes:
    """PUSH requests acknowledged recently, oldest first.

    Entries are dropped when a newer one arrives more than ``REPLAY_WINDOW_S`` later, and
    by the process's periodic sweep once the messages they hold have expired (``forget``):
    during an outage (when nothing is acknowledged) the last seconds before it stay for as
    long as writing them again can bring back a message, and no longer.
    One per shard for the whole process: a write made in a short-lived event loop
    (``async_to_sync``) is written again by whichever loop meets the new server run, so the
    event loops' threads share it, behind a lock.
    """

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._entries: deque[tuple[float, str, Replayable]] = deque(maxlen=REPLAY_LIMIT)
        self._lock = threading.Lock()

    def add(self, key: str, packed: Replayable) -> None:
        now = time.monotonic()
        with self._lock:
            entries = self._entries
            while entries and entries[0][0] < now - REPLAY_WINDOW_S:
                entries.popleft()
            entries.append((now, key, packed))

    def forget(self, expiry_s: float) -> None:
        """Drops the writes acknowledged more than ``expiry_s`` ago: their messages expired
        (each carries its expiry, counted from before the write), so writing them again
        would bring back nothing. Without this, the last writes of a process that went
        idle (up to ``REPLAY_LIMIT`` requests, a group_send one copy per member) stayed for
        good."""
        horizon = time.monotonic() - expiry_s
        with self._lock:
            entries = self._entries
            while entries and entries[0][0] < horizon:
                entries.popleft()

    def clear(self) -> None:
        """Forgets everything: after flush(), writing those messages again would bring back
        what the application deleted."""
        with self._lock:
            self._entries.clear()

    def __bool__(self) -> bool:
        """Whether anything written recently could still be worth writing again (older
        messages have expired anyway)."""
        with self._lock:
            last = self._entries[-1][0] if self._entries else None
        return last is not None and time.monotonic() - last < RETAIN_IDLE_S

    def requests(self) -> list[tuple[str, bytes]]:
        """(routing key, request) of every retained write, oldest first."""
        with self._lock:
            entries = list(self._entries)
        return [
            (key, packed if isinstance(packed, bytes) else packed()) for _, key, packed in entries
        ]
