"""The epoch marks a process has read: when each master's data began (see ``_recovery``).

A loss shows as an epoch other than the one seen before. Sync code (``async_to_sync``) makes
an event loop, and so a session, per call: a session that remembered only its own reads would
have nothing to compare with, and a master restarted empty would pass for an ordinary server.
So what any event loop read is kept for the whole process too, behind a lock (the loops run
in different threads). Each session still keeps its own: a long-lived loop then notices a
loss itself even when a short-lived one read the new epoch first, and re-asserts the
memberships, which that one's closing may have cut short.
"""

from __future__ import annotations

import threading
from typing import overload

Mark = tuple[int, str]  # (shard, master)
# The epoch key read, and its value. On Cluster a master's epoch key lives in the first slot
# it owns; a reshard that moves that slot changes the key (or brings another master's value
# along), which says nothing about the data: only a different value under the same key does.
Seen = tuple[str, object]


class ProcessEpochs:
    """The epoch each master had when some event loop of the process last read it."""

    __slots__ = ("_lock", "_seen")

    def __init__(self) -> None:
        self._seen: dict[Mark, Seen] = {}
        self._lock = threading.Lock()

    def get(self, mark: Mark) -> Seen | None:
        with self._lock:
            return self._seen.get(mark)

    def put(self, mark: Mark, seen: Seen) -> None:
        with self._lock:
            self._seen[mark] = seen


class Epochs:
    """One session's epochs: its own reads, else the process's (a session's first look)."""

    __slots__ = ("_own", "_process")

    def __init__(self, process: ProcessEpochs) -> None:
        self._own: dict[Mark, Seen] = {}
        self._process = process

    @overload
    def get(self, mark: Mark) -> Seen | None: ...
    @overload
    def get(self, mark: Mark, default: tuple[None, None]) -> Seen | tuple[None, None]: ...
    def get(self, mark: Mark, default: tuple[None, None] | None = None) -> object:
        seen = self._own.get(mark)
        if seen is None:
            seen = self._process.get(mark)
        return default if seen is None else seen

    def __setitem__(self, mark: Mark, seen: Seen) -> None:
        self._own[mark] = seen
        self._process.put(mark, seen)
