"""A snapshot of what a layer has done and where it is connected (trio-style statistics)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import LayerCore
    from ._session import Session


@dataclass(frozen=True)
class ShardStatistics:
    """One master: where it is, and what this process saw of it."""

    topology: str
    master: str | None
    run_id: str | None
    server_changes: int
    reconnects: int
    last_server_change: float | None  # time.time() of the last new server run seen


@dataclass(frozen=True)
class LayerStatistics:
    """Cumulative counters since the layer was created, and each shard's state."""

    sent: int
    group_sends: int
    received: int
    duplicates_dropped: int
    expired: int
    replica_ack_shortfalls: int
    sessions: int
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
            reconnects=sum(session.reconnects(spec.index) for session in live),
            last_server_change=stats.last_server_change,
        )
        for spec, stats in zip(core.shards, core.shard_stats, strict=True)
    )
    counters = asdict(core.stats)
    return LayerStatistics(**counters, sessions=len(live), shards=shards)
