"""A snapshot of what a layer has done and where it is connected (trio-style statistics)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import LayerCore
    from ._server import ServerInfo
    from ._session import Session


@dataclass
class ShardStats:
    """What a shard has been through, across every event loop (for health and metrics)."""

    run_id: str | None = None  # the last run seen
    run_ids: dict[str, str] = field(default_factory=dict)  # master -> run id
    master: str | None = None
    server_changes: int = 0
    reconnects: int = 0
    retries: int = 0  # requests written again after a lost reply or to a new master
    master_wait_s: float = 0.0  # time spent (re)connecting, summed over connections
    delivery_failures: int = 0  # popped batches lost to a bug in handing them over
    inbox_batches_lost: int = 0  # inbox pops whose reply was cut after Redis answered
    last_server_change: float | None = None  # time.time()
    # Until then (time.time()), group_send waits for processes to re-assert memberships
    # that a master restarted empty lost.
    recovering_until: float = 0.0

    def observe(self, info: ServerInfo, node: str = "") -> str:
        """Records the server a connection reached: "same", "first" or "new" server run.

        ``node`` names the master the run belongs to: "" for the one master of a single node
        or Sentinel deployment (a promoted replica is a new run of it), a Cluster node's
        address otherwise.
        """
        if not node:
            self.master = info.endpoint.describe()
        previous = self.run_ids.get(node)
        if info.run_id == previous:
            return "same"
        self.run_ids[node] = info.run_id
        self.run_id = info.run_id
        if previous is None:
            return "first"
        self.note_change()
        return "new"

    def note_change(self) -> None:
        self.server_changes += 1
        self.last_server_change = time.time()


@dataclass(frozen=True)
class ShardStatistics:
    """One master: where it is, and what this process saw of it."""

    topology: str
    master: str | None
    run_id: str | None
    server_changes: int  # new server runs seen: failovers and restarts
    reconnects: int
    retries: int  # requests written again after a lost reply or to a new master
    master_wait_s: float  # time spent (re)connecting, summed over connections
    delivery_failures: int  # popped batches lost to a bug in handing them over
    # writes of the last 2 s not kept for writing again after a failover: over the byte cap
    replay_dropped: int
    # inbox pops whose reply was cut after part of it arrived: their batch (up to 512
    # messages, which Redis had removed) lost, unless a failover brings it back
    inbox_batches_lost: int
    last_server_change: float | None  # time.time() of the last new server run seen


@dataclass(frozen=True)
class LayerStatistics:
    """Cumulative counters since the layer was created, and each shard's state."""

    sent: int
    group_sends: int
    # group_sends that read the member list: all on Cluster (and for groups whose members
    # live on other hosts); elsewhere the first to a group and those after it changed
    group_member_reads: int
    received: int
    duplicates_dropped: int
    expired: int
    malformed_dropped: int  # list elements that were not channels-ha messages
    replica_ack_shortfalls: int
    sessions: int  # event loops with open connections
    buffered: int  # messages in this process waiting for their receiver
    shards: tuple[ShardStatistics, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def statistics_of(core: LayerCore, sessions: Iterable[Session]) -> LayerStatistics:
    live = [session for session in sessions if not session.closed]
    shards = tuple(
        ShardStatistics(
            topology=spec.locator.describe(),
            master=stats.master,
            run_id=stats.run_id,
            server_changes=stats.server_changes,
            reconnects=stats.reconnects,
            retries=stats.retries,
            master_wait_s=stats.master_wait_s,
            delivery_failures=stats.delivery_failures,
            replay_dropped=recent.dropped,
            inbox_batches_lost=stats.inbox_batches_lost,
            last_server_change=stats.last_server_change,
        )
        for spec, stats, recent in zip(core.shards, core.shard_stats, core.recent, strict=True)
    )
    counters = asdict(core.stats)
    buffered = sum(session.buffered() for session in live)
    return LayerStatistics(**counters, sessions=len(live), buffered=buffered, shards=shards)
