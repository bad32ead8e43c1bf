"""What this process knows about group membership, so it can put it back.

Redis holds the truth, but Redis can lose it: a master restarted empty, or a failover to a
replica that missed the last writes. Each process therefore remembers which groups it added
which channels to (those it may receive on: not another process's specific channels, see
``GroupMembers._joining``), and re-asserts those of its live channels when it meets a new server
run, and periodically, so that a connection that stays open longer than ``group_expiry``
does not silently fall out of its groups. What another process ended (a ``group_discard`` of
one of these channels, a ``flush()``) must not come back that way: the re-assertion learns
of it from Redis and the process forgets the membership (see ``_recovery.reassert``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
        # channel -> group -> when (monotonic) this process last joined it there.
        self._groups_of: dict[str, dict[str, float]] = {}
        # (group, channel) -> group_add calls under way (see joining()).
        self._joins: Counter[tuple[str, str]] = Counter()
        # channel -> group -> the discard record (its score, as Redis replied it) that this
        # process's last group_add there cleared (see cleared_record()).
        self._cleared: dict[str, dict[str, str]] = {}
        # Whether a receive() on a channel is waiting now: asked of the layer's sessions
        # when needed, so that receive() itself counts nothing.
        self.waiting: Callable[[str], bool] = _nobody
        # Channel -> when its last receive() ended; written by receive() itself, per message.
        self.last_active: dict[str, float] = {}

    def added(self, group: str, channel: str) -> None:
        with self._lock:
            self._groups_of.setdefault(channel, {})[group] = time.monotonic()

    @contextmanager
    def joining(self, group: str, channel: str) -> Iterator[None]:
        """Around a ``group_add``: recorded before it is sent (a failover meanwhile re-asserts
        it), and stamped again once it ended. A re-assertion that reports the channel
        discarded applies only to a join older than itself: this one may have reached Redis
        after the re-assertion, on another event loop's connection."""
        key = (group, channel)
        with self._lock:
            self._groups_of.setdefault(channel, {})[group] = time.monotonic()
            self._joins[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._joins[key] -= 1
                if self._joins[key] <= 0:
                    del self._joins[key]
                groups = self._groups_of.get(channel)
                if groups is not None and group in groups:
                    groups[group] = time.monotonic()

    def cleared_record(self, group: str, channel: str, record: str) -> None:
        """A ``group_add`` of this process cleared a discard record of the channel: should
        Redis lose that join (a failover to a replica that missed it), the record is back,
        and the re-assertion tells Redis that this one was superseded (no clock can: the
        record and the join come from different hosts' clocks)."""
        with self._lock:
            if group in self._groups_of.get(channel, {}):  # (not discarded meanwhile)
                self._cleared.setdefault(channel, {})[group] = record

    def discarded(self, group: str, channel: str) -> None:
        with self._lock:
            self._drop(group, channel)

    def forget(self, group: str, channel: str, before: float) -> bool:
        """Drops a membership that Redis says ended (another process discarded the channel,
        or flushed), unless this process joined it again at ``before`` (monotonic) or later,
        or is joining it now; True if dropped."""
        with self._lock:
            joined = self._groups_of.get(channel, {}).get(group)
            if joined is None or joined >= before or (group, channel) in self._joins:
                return False
            self._drop(group, channel)
            return True

    def _drop(self, group: str, channel: str) -> None:
        groups = self._groups_of.get(channel)
        if groups is not None:
            groups.pop(group, None)
            if not groups:
                del self._groups_of[channel]
        cleared = self._cleared.get(channel)
        if cleared is not None:
            cleared.pop(group, None)
            if not cleared:
                del self._cleared[channel]

    def touch(self, channel: str) -> None:
        """A receive() ended (however): the channel is alive."""
        self.last_active[channel] = time.monotonic()

    def is_live(self, channel: str, now: float) -> bool:
        last = self.last_active.get(channel)
        return (last is not None and now - last < self._liveness_s) or self.waiting(channel)

    def live(self) -> dict[str, dict[str, str]]:
        """Group name -> live member channel -> the discard record its last join cleared
        (``""`` if none), for re-assertion."""
        now = time.monotonic()
        with self._lock:
            joined = [
                (channel, tuple(groups), dict(self._cleared.get(channel, {})))
                for channel, groups in self._groups_of.items()
            ]
        result: dict[str, dict[str, str]] = {}
        for channel, groups, cleared in joined:
            if self.is_live(channel, now):
                for group in groups:
                    result.setdefault(group, {})[channel] = cleared.get(group, "")
        return result

    def live_groups(self) -> dict[str, list[str]]:
        """Group name -> live member channels."""
        return {group: list(channels) for group, channels in self.live().items()}

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
                added = max(self._groups_of.get(channel, {}).values(), default=0.0)
                last = max(self.last_active.get(channel, 0.0), added)
                if now - last > horizon_s:
                    self._groups_of.pop(channel, None)
                    self._cleared.pop(channel, None)
        # A copy made in C, in one step: receive() in other threads stores meanwhile.
        for channel, last in dict(self.last_active).items():
            kept_s = horizon_s if channel in members else self._liveness_s
            if now - last > kept_s and not self.waiting(channel):
                self.last_active.pop(channel, None)

    def remembered(self) -> int:
        """Channels this process keeps any record of (for tests and leak hunts)."""
        with self._lock:
            return len(self._groups_of.keys() | self.last_active.keys())

    def clear(self) -> None:
        with self._lock:
            self._groups_of.clear()
            self._cleared.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(groups) for groups in self._groups_of.values())
