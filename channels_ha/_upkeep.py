"""A session's periodic upkeep, one tick every second or so.

Each tick checks the epochs (a loss no connection noticed), lowers and refreshes the inbox
limits (raising one does not wait for it, see ``_inbox_limits``), refreshes the memberships
when due, and sweeps: this event loop's buffers and give-backs, and the process-wide
records, which any event loop's session sweeps when due.

A tick waits for no reply: each step submits its requests and returns, and what needs the
replies (the epoch reads, a re-assertion's) goes on in the background. So no step holds
another past its period, whatever a master does: the inbox limits live 10 s, and a tick that
waited for a frozen master's epoch let them lapse (senders refused far below capacity).
"""

from __future__ import annotations

import time

from ._constants import BUFFER_SWEEP_INTERVAL_S
from ._core import LayerCore
from ._delivery import Deliveries
from ._give_back import GiveBack
from ._inbox_limits import InboxLimits
from ._resync import Resync
from ._sequence import SendSequences
from ._shard import ShardConnections
from ._upkeep_steps import UpkeepSteps


class Upkeep:
    """The steps of one tick; the session runs the ticks."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        deliveries: Deliveries,
        limits: InboxLimits,
        seqs: SendSequences,
        resync: Resync,
        give_back: GiveBack,
        steps: UpkeepSteps,
    ) -> None:
        self.core = core
        self._shards = shards
        self._deliveries = deliveries
        self._limits = limits
        self._seqs = seqs
        self._resync = resync
        self._give_back = give_back
        self._steps = steps
        self._swept_at = time.monotonic()

    def tick(self) -> None:
        """One tick, which waits for nothing. Each step is guarded on its own: a bug in one
        must not stop the others (memberships would lapse at group_expiry, buffers would
        never be swept)."""
        step = self._steps.step
        with step("epoch check"):
            self._resync.check_epochs(self._shards)
        with step("inbox limits"):
            self.publish_inbox_limits()
        if self.core.refresh_due():
            for shard in self._shards:
                self._resync.reassert(shard)
        if time.monotonic() - self._swept_at >= BUFFER_SWEEP_INTERVAL_S:
            self._swept_at = time.monotonic()
            with step("sweep"):
                self.sweep()
        self.sweep_process()

    def sweep(self) -> None:
        """This event loop's part of the sweep (the process's is ``sweep_process``)."""
        self._give_back.retry()
        self._give_back.return_stranded(self._deliveries.sweep())
        self._seqs.forget_idle()

    def sweep_process(self) -> None:
        if self.core.sweep_due():
            with self._steps.step("process sweep"):
                self.core.sweep()

    def publish_inbox_limits(self) -> None:
        """Lowers the inbox limits of channels gone, and refreshes them (see InboxLimits)."""
        self._limits.refresh()
