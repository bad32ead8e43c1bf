"""What a session does when a shard may have lost data: it re-asserts the group memberships
it keeps there and writes again what it wrote there last.

A shard may have lost data when a connection meets a new server run (a failover or a
restart), when the Cluster slot map names a new master, or when the epoch mark of a master
is gone or changed (a ``FLUSHALL``, or a restart noticed by no connection). The decisions
are ``_recovery``'s; this is the session's side: its epochs, and the re-assertions it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ._core import LayerCore
from ._epoch_reads import EpochReads
from ._epochs import Epochs
from ._recovery import (
    Reassertion,
    check_epoch,
    forget_ended,
    log_failure,
    reassert,
)
from ._server import ServerInfo
from ._shard import ShardConnections
from ._upkeep_steps import UpkeepSteps

logger = logging.getLogger("channels_ha.layer")


class Resync:
    """Re-assertions and replays of one session, and the epochs it has seen."""

    def __init__(
        self,
        core: LayerCore,
        loop: asyncio.AbstractEventLoop,
        steps: UpkeepSteps,
        closing: Callable[[], bool],
    ) -> None:
        self.core = core
        self._loop = loop
        self._steps = steps
        self._closing = closing
        self.epochs = Epochs(core.epochs)  # (shard, master) -> (epoch key, value) seen last
        # Re-assertions under way: cancelled first at close, which need not wait for them.
        self.reassertions: set[asyncio.Task[None]] = set()
        # Publishes the inbox limits of a shard again (``InboxLimits.republish``), set by the
        # session: they need the connections, which need this.
        self.republish_limits: Callable[[ShardConnections], None] = _nothing
        self.epoch_reads = EpochReads(core, self.epochs, steps, self.after_loss)

    def server_seen(self, shard: ShardConnections, info: ServerInfo) -> None:
        stats = shard.stats
        previous = stats.master
        run = stats.observe(info, shard.node_of(info))
        left = shard.arrived(info)
        if left is not None and run == "same":
            # Re-pointed sentinels: another event loop of the process (a sync call) reached
            # this server run first, but what this one added or wrote since went to the old.
            run, previous = "new", left.endpoint.describe()
        if run == "same":
            return
        changed = run == "new"
        shard.add_epoch_check(check_epoch(self.core, shard, info, changed, self.epochs))
        if run == "first":
            return
        logger.warning(
            "New Redis server run on %s: %s (was %s); re-asserting group memberships",
            shard.spec.locator.describe(),
            info.endpoint.describe(),
            previous,
            extra={"event": "new_master", "master": info.endpoint.describe()},
        )
        shard.drop_stale(info, "another connection found a new server run")
        self.after_loss(shard)

    def topology_changed(self, shard: ShardConnections) -> None:
        """Cluster slots changed owner: memberships may have been on a node that failed."""
        shard.stats.note_change()
        logger.warning(
            "The slot map of %s changed; re-asserting group memberships",
            shard.spec.locator.describe(),
            extra={"event": "new_master"},
        )
        self.after_loss(shard)

    def after_loss(self, shard: ShardConnections) -> None:
        # The inbox limits first: senders go by them, the replay's pushes too. A limit
        # trusted for seconds more may be gone (a restart empty): 95 of 100 sends below
        # capacity were refused until the next refresh.
        self.republish_limits(shard)
        self.reassert(shard)
        self.replay(shard)

    def reassert(self, shard: ShardConnections) -> None:
        """Re-asserts the memberships kept on ``shard``: submitted now, their replies awaited
        in the background (see reassert); not once closing: its connections are going."""
        if self._closing():
            return
        # A bug in it would otherwise go unreported, and memberships lapse at group_expiry.
        step = f"membership refresh of shard {shard.spec.index}"
        with self._steps.step(step):
            submitted = reassert(self.core, shard)
            if submitted.batches:
                task = self._loop.create_task(self._forget_ended(step, shard, submitted))
                self.reassertions.add(task)
                task.add_done_callback(self.reassertions.discard)

    async def _forget_ended(self, step: str, shard: ShardConnections, done: Reassertion) -> None:
        with self._steps.step(step):
            await forget_ended(self.core, shard, done)

    def replay(self, shard: ShardConnections) -> None:
        """Writes again what this process wrote just before the failure (see ``_replay``)."""
        requests = self.core.recent[shard.spec.index].requests()
        for key, packed in requests:
            shard.link.submit_packed(packed, key).add_done_callback(log_failure)
        if requests:
            logger.info(
                "Wrote again %d recent messages on %s; receivers drop the copies they "
                "already had, except on normal channels read by several processes (see "
                "docs/failover.md)",
                len(requests),
                shard.spec.locator.describe(),
                extra={"event": "replayed", "messages": len(requests)},
            )

    def check_epochs(self, shards: list[ShardConnections]) -> None:
        """The upkeep's epoch check: a loss no connection noticed (a FLUSHALL, say). Started
        here, read in the background, one read per master (see ``_epoch_reads``)."""
        self.epoch_reads.start(shards)

    async def cancel(self) -> None:
        """Cancels the epoch reads and the re-assertions under way (at close)."""
        await self.epoch_reads.cancel()
        reassertions = set(self.reassertions)
        for task in reassertions:
            task.cancel()  # what they submitted is settled (or failed) by the links' close
        if reassertions:
            await asyncio.wait(reassertions)


def _nothing(shard: ShardConnections) -> None:
    pass
