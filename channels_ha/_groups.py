"""What this process knows about group membership, so it can put it back.

Redis holds the truth, but Redis can lose it: a master restarted empty, or a failover to a
replica that missed the last writes. Each process therefore remembers which groups it added
which channels to, and re-asserts those of its live channels when it meets a new server run,
and periodically, so that a connection that stays open longer than ``group_expiry`` does not
silently fall out of its groups.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable


def _nobody(channel: str) -> bool:
    return False


class Memberships:
    """Groups joined through this layer, and which of their channels are still alive.

    A channel is alive while somebody receives on it, and for ``liveness_s`` after that (a
    consumer between two ``receive()`` calls is busy, not gone).
    """

    def __init__(self, liveness_s: float) -> None:
        self._liveness_s = liveness_s
        # Every event loop of the process (async_to_sync calls run in their own) joins and
        # leaves groups here, from its own thread: changes to the groups, and reading them
        # all, take the lock. touch() does not: it is one dict store per receive().
        self._lock = threading.Lock()
        self._groups_of: defaultdict[str, set[str]] = defaultdict(set)
        # Whether a receive() on a channel is waiting now: asked of the layer's sessions
        # when needed, so that receive() itself counts nothing.
        self.waiting: Callable[[str], bool] = _nobody
        self._last_active: dict[str, float] = {}  # last receive() that ended
        self._last_added: dict[str, float] = {}

    def added(self, group: str, channel: str) -> None:
        with self._lock:
            self._groups_of[channel].add(group)
            self._last_added[channel] = time.monotonic()

    def discarded(self, group: str, channel: str) -> None:
        with self._lock:
            groups = self._groups_of.get(channel)
            if groups is not None:
                groups.discard(group)
                if not groups:
                    del self._groups_of[channel]
                    self._last_added.pop(channel, None)

    def touch(self, channel: str) -> None:
        """A receive() ended (however): the channel is alive."""
        self._last_active[channel] = time.monotonic()

    def is_live(self, channel: str, now: float) -> bool:
        last = self._last_active.get(channel)
        return (last is not None and now - last < self._liveness_s) or self.waiting(channel)

    def live_groups(self) -> dict[str, list[str]]:
        """Group name -> live member channels, for re-assertion."""
        now = time.monotonic()
        with self._lock:
            joined = [(channel, tuple(groups)) for channel, groups in self._groups_of.items()]
        result: defaultdict[str, list[str]] = defaultdict(list)
        for channel, groups in joined:
            if self.is_live(channel, now):
                for group in groups:
                    result[group].append(channel)
        return dict(result)

    def forget_dead(self, horizon_s: float) -> None:
        """Drops channels idle (not received on, not added) for longer than ``horizon_s``.

        Redis expired their memberships by then (``horizon_s`` is the group expiry). A
        channel in no group is forgotten once it is no longer live: only members are ever
        asked about, and joining stamps the channel anew (seen otherwise: every WebSocket
        channel of the last day kept, ~220 bytes each, and scanned every sweep).
        """
        now = time.monotonic()
        with self._lock:
            channels = list(self._groups_of)
        members = set(channels)
        for channel in channels:
            if self.waiting(channel):
                continue
            with self._lock:
                last = max(self._last_active.get(channel, 0.0), self._last_added.get(channel, 0.0))
                if now - last > horizon_s:
                    self._groups_of.pop(channel, None)
                    self._last_added.pop(channel, None)
        # A copy made in C, in one step: receive() in other threads stores meanwhile.
        for channel, last in dict(self._last_active).items():
            kept_s = horizon_s if channel in members else self._liveness_s
            if now - last > kept_s and not self.waiting(channel):
                self._last_active.pop(channel, None)

    def remembered(self) -> int:
        """Channels this process keeps any record of (for tests and leak hunts)."""
        with self._lock:
            return len(self._groups_of.keys() | self._last_active.keys() | self._last_added.keys())

    def clear(self) -> None:
        with self._lock:
            self._groups_of.clear()
            self._last_added.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(groups) for groups in self._groups_of.values())
