"""What every event loop's session of one layer shares: options, shards, memberships, inbox
limits, stats."""

from __future__ import annotations

import binascii
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._codec import MessageCodec
from ._constants import (
    BUFFER_SWEEP_INTERVAL_S,
    CHANNEL_LIVENESS_S,
    DEDUPE_MEMORY_MIN_S,
    GROUP_REFRESH_INTERVAL_S,
    REPLAY_MAX_BYTES,
)
from ._epochs import ProcessEpochs
from ._fanout import FanoutPlans
from ._groups import Memberships
from ._inbox_totals import InboxTotals
from ._keys import KeyLayout
from ._local_path import Unpopped
from ._replay import RecentPushes
from ._sequence import DeliveryMarks
from ._shard import ShardSpec
from ._stats import ShardStats


@dataclass
class Counters:
    """Cumulative counts since the layer was created (all event loops)."""

    sent: int = 0
    group_sends: int = 0
    group_member_reads: int = 0
    received: int = 0
    duplicates_dropped: int = 0
    expired: int = 0
    malformed_dropped: int = 0
    replica_ack_shortfalls: int = 0


@dataclass
class LayerCore:
    """The parts of a layer that do not belong to any one event loop."""

    shards: Sequence[ShardSpec]
    keys: KeyLayout
    codec: MessageCodec
    expiry_s: float
    group_expiry_s: int
    capacity_of: Callable[[str], int]
    replica_acks: int = 0
    replica_ack_timeout_s: float = 1.0
    # What the process keeps of its recent writes, for all hosts together (see _replay).
    replay_max_bytes: int = REPLAY_MAX_BYTES
    memberships: Memberships = field(default_factory=lambda: Memberships(CHANNEL_LIVENESS_S))
    # Marks of delivered messages, for the whole process: a retried copy may reach this
    # process through another event loop than the original (async_to_sync calls).
    marks: DeliveryMarks = field(default_factory=DeliveryMarks)
    stats: Counters = field(default_factory=Counters)
    shard_stats: list[ShardStats] = field(default_factory=list)
    # Per shard, the writes of the last seconds, of every event loop (see _replay).
    recent: list[RecentPushes] = field(default_factory=list)
    # Group -> when (time.time()) some event loop of this process last knew it had members:
    # one that reads empty makes group_send look whether the data began again since
    # (GroupMembers.read). Oldest first, bounded.
    groups_with_members: dict[str, float] = field(default_factory=dict)
    # Per group, the copies of a group_send and the membership token they stand for, planned
    # by any event loop: a sync call (an event loop of its own) need not read the members.
    fanout: FanoutPlans = field(default_factory=FanoutPlans)
    # This process's messages still in its own inboxes in Redis, which a send that skips
    # Redis must not overtake (see _local_path).
    unpopped: Unpopped = field(default_factory=Unpopped)
    # Inbox key -> the session that took it over last from the others (see _handover).
    inbox_takers: dict[str, weakref.ref[Any]] = field(default_factory=dict)
    # Each master's epoch as some event loop last read it: a session's first comparison.
    epochs: ProcessEpochs = field(default_factory=ProcessEpochs)
    # Per inbox, the capacity of every event loop's channels, and the limit published last:
    # the event loops of the process share its inboxes.
    inbox_totals: InboxTotals = field(default_factory=InboxTotals)
    # How often the process forgets what expired (see sweep()).
    sweep_interval_s: float = BUFFER_SWEEP_INTERVAL_S
    _last_refresh: float = field(default_factory=time.monotonic)
    _swept_at: float = field(default_factory=time.monotonic)
    _sweep_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.shard_stats = [ShardStats() for _ in self.shards]
        replay_bytes = self.replay_max_bytes // len(self.shards)  # a bound for the process
        self.recent = [
            RecentPushes(self.expiry_s, replay_bytes, spec.locator.describe())
            for spec in self.shards
        ]
        self.expiry_ms = int(self.expiry_s * 1000)
        self.failover_timeout_s = max(spec.settings.failover_timeout_s for spec in self.shards)
        # A retry lands within the failover timeout of the first attempt.
        self.dedupe_memory_s = max(DEDUPE_MEMORY_MIN_S, 2 * self.failover_timeout_s + self.expiry_s)
        self.dedupe_ttl_ms = int(self.dedupe_memory_s * 1000)
        self.refresh_interval_s = min(GROUP_REFRESH_INTERVAL_S, self.group_expiry_s / 3)

    def shard_index(self, name: str) -> int:
        """The shard of a channel, inbox or group name, as channels_redis picks hosts."""
        count = len(self.shards)
        if count == 1:
            return 0
        return int((binascii.crc32(name.encode()) & 0xFFF) / (4096 / count))

    def refresh_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_interval_s:
            return False
        self._last_refresh = now
        return True

    def sweep_due(self) -> bool:
        """True at most once per ``sweep_interval_s`` for the whole process, to the one
        caller that is to sweep (several event loops' threads ask)."""
        now = time.monotonic()
        if now - self._swept_at < self.sweep_interval_s:  # the usual case, without the lock
            return False
        with self._sweep_lock:
            if now - self._swept_at < self.sweep_interval_s:
                return False
            self._swept_at = now
            return True

    def sweep(self) -> None:
        """Forgets what no event loop of the process can need any more: memberships Redis
        expired, marks older than any retry, writes whose messages expired. Whichever event
        loop is due runs it (see Upkeep.sweep_process): in a process without a long-lived
        one (WSGI, Celery, a management command) every call is a session of milliseconds."""
        self.memberships.forget_dead(self.group_expiry_s)
        self.marks.forget_idle(self.dedupe_memory_s)
        for recent in self.recent:
            recent.forget()
