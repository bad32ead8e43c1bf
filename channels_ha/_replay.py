"""The last seconds of acknowledged writes, written again after a failover.

Redis acknowledges a write before its replicas have it, and a master restarted without
persistence forgets what it held. Either way a message whose ``send`` returned can be gone
from the new server run, and its receiver may never have popped it. The sender still has the
request, so after meeting a new server run it writes again what it wrote in the seconds before
the failure. Receivers recognise copies of what they already had (see ``_sequence``), so only
the missing messages come through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ._constants import FAILURE_LOG_INTERVAL_S, REPLAY_WINDOW_S
from ._throttle import LogThrottle

logger = logging.getLogger("channels_ha.layer")

# A request, or how to make it when it is written again (most never are).
Replayable = bytes | Callable[[], bytes]
# A kept write: when it was acknowledged, its routing key, its request, the bytes it counts.
Entry = tuple[float, str, Replayable, int]

# What an entry costs beside its request: its tuple, time and key, the request's object
# (tracemalloc: about 205 bytes for a send's). Counted, so that the byte cap also bounds how
# many tiny writes are kept.
ENTRY_OVERHEAD_BYTES = 256


class RecentPushes:
    """PUSH requests acknowledged recently, oldest first.

    Entries are dropped when a newer one arrives more than ``REPLAY_WINDOW_S`` later, and
    by the process's periodic sweep once the messages they hold have expired (``forget``):
    during an outage (when nothing is acknowledged) the last seconds before it stay for as
    long as writing them again can bring back a message, and no longer. They take at most
    ``max_bytes``: past that the oldest go first, still within their window (a burst of
    large messages), counted in ``dropped`` and logged. With ``max_bytes`` 0 nothing is
    kept, counted or logged: the layer was told not to write anything again.
    One per shard for the whole process: a write made in a short-lived event loop
    (``async_to_sync``) is written again by whichever loop meets the new server run, so the
    event loops' threads share it, behind a lock.
    """

    __slots__ = (
        "_bytes",
        "_entries",
        "_expiry_s",
        "_lock",
        "_logs",
        "_max_bytes",
        "_name",
        "_reported",
        "dropped",
    )

    def __init__(self, expiry_s: float, max_bytes: int, name: str) -> None:
        self._entries: deque[Entry] = deque()
        self._bytes = 0  # the entries' sizes, summed
        self._expiry_s = expiry_s
        self._max_bytes = max_bytes
        self._name = name  # the shard, for the log
        self._lock = threading.Lock()
        self._logs = LogThrottle(FAILURE_LOG_INTERVAL_S)
        self.dropped = 0  # writes dropped within their window to stay within max_bytes
        self._reported = 0  # of which logged

    def add(self, key: str, packed: Replayable, size: int) -> Entry | None:
        """Keeps a write acknowledged now. ``size``: the bytes of the request as written (a
        lazily packed one holds the same messages). Returns the entry, for :meth:`discard`
        (None if not kept)."""
        if not self._max_bytes:
            return None
        now = time.monotonic()
        size += ENTRY_OVERHEAD_BYTES
        entry: Entry | None = None
        with self._lock:
            entries = self._entries
            while entries and entries[0][0] < now - REPLAY_WINDOW_S:
                self._bytes -= entries.popleft()[3]
            if size <= self._max_bytes:  # (one larger would push out every other first)
                entry = (now, key, packed, size)
                entries.append(entry)
                self._bytes += size
                if self._bytes <= self._max_bytes:
                    return entry
            else:
                self.dropped += 1
            dropped = self._drop_over_cap()
        if dropped:
            self._log_dropped(dropped)
        return entry

    def discard(self, entry: Entry) -> None:
        """Forgets ``entry`` (as :meth:`add` returned it), if it is still kept: its write was
        written again, and is kept again as that copy. Looked for from the newest: a copy
        follows within moments."""
        with self._lock:
            entries = self._entries
            for index in range(len(entries) - 1, -1, -1):
                if entries[index] is entry:
                    del entries[index]
                    self._bytes -= entry[3]
                    return

    def _drop_over_cap(self) -> int:
        """Drops the oldest entries until the rest fit (a write larger than the cap on its
        own was not kept, and pushed out nothing); returns how many writes a log line should
        now report."""
        entries = self._entries
        while entries and self._bytes > self._max_bytes:
            self._bytes -= entries.popleft()[3]
            self.dropped += 1
        if not self._logs.due():
            return 0
        unreported, self._reported = self.dropped - self._reported, self.dropped
        return unreported

    def _log_dropped(self, dropped: int) -> None:
        logger.warning(
            "Dropped %d writes of the last %.0f s on %s from those kept for writing again "
            "after a failover: over %s (large messages); a master that loses its data now "
            "loses those its receivers had not taken",
            dropped,
            REPLAY_WINDOW_S,
            self._name,
            _size(self._max_bytes),
            extra={"event": "replay_dropped", "messages": dropped},
        )

    def forget(self) -> None:
        """Drops the writes acknowledged more than ``expiry_s`` ago: their messages expired
        (each carries its expiry, counted from before the write), so writing them again
        would bring back nothing. Without this, the last writes of a process that went
        idle (up to ``max_bytes``) stayed for good."""
        horizon = time.monotonic() - self._expiry_s
        with self._lock:
            entries = self._entries
            while entries and entries[0][0] < horizon:
                self._bytes -= entries.popleft()[3]

    def clear(self) -> None:
        """Forgets everything: after flush(), writing those messages again would bring back
        what the application deleted."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __bool__(self) -> bool:
        """Whether anything written recently could still be worth writing again: a message
        lives for ``expiry_s``, so the epoch check (see Resync.check_epochs) must go on
        that long after the last write, however long that is."""
        with self._lock:
            last = self._entries[-1][0] if self._entries else None
        return last is not None and time.monotonic() - last < self._expiry_s

    def requests(self) -> list[tuple[str, bytes]]:
        """(routing key, request) of every retained write, oldest first."""
        with self._lock:
            entries = list(self._entries)
        return [
            (key, packed if isinstance(packed, bytes) else packed())
            for _, key, packed, _ in entries
        ]


def _size(count: int) -> str:
    """``32 MiB``, ``10.67 MiB``, ``64 KiB``, ``1000 bytes``: a cap as a log line gives it."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.4g} {unit}"
    return f"{count} bytes"
