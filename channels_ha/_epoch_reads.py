"""The upkeep's epoch check: each master's epoch read on its own, in the background.

The tick that starts the reads waits for none of them (see ``_upkeep``). It also writes the
inbox limits, which live 10 s: a tick that waited for a master that does not answer (frozen,
or dead until the cluster fails it over, 15 s with Redis's default cluster-node-timeout) let
them lapse, and senders were refused far below capacity (seen: both limits gone, 58 of 80
sends refused, a master that held neither inbox frozen 10 s). Nor does one master wait for
another: a read still unanswered is not started again until it ends, and the other masters
are read every tick meanwhile.

Which masters: every one of the shard, for a process with group memberships (a group may be
on any) or recent writes there (see ``_replay``); else those that hold the inbox limits the
event loop publishes, which it publishes again after a loss. Reading every master for those
opened a link to each, one connection more per master and per event loop, for nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from ._core import LayerCore
from ._epochs import Epochs, Mark
from ._recovery import watch_epoch
from ._shard import ShardConnections
from ._upkeep_steps import UpkeepSteps
from .exceptions import RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.layer")


class EpochReads:
    """One session's epoch reads under way, at most one per master."""

    def __init__(
        self,
        core: LayerCore,
        epochs: Epochs,
        steps: UpkeepSteps,
        lost: Callable[[ShardConnections], None],
    ) -> None:
        self._core = core
        self._epochs = epochs
        self._steps = steps
        self._lost = lost  # what the session does when a master of the shard lost its data
        self._reads: dict[Mark, asyncio.Task[None]] = {}
        # The limit keys this event loop publishes on a shard (``InboxLimits.keys_on``), set
        # by the session: they need the connections, which need this.
        self.limit_keys: Callable[[ShardConnections], list[str]] = _none

    def start(self, shards: list[ShardConnections]) -> None:
        """Starts a read of each master the session needs that is not being read already."""
        loop = asyncio.get_running_loop()
        for shard in shards:
            for node, key in self._masters(shard):
                mark = (shard.spec.index, node)
                if mark in self._reads:
                    continue  # still waiting for that master: one read at a time
                task = loop.create_task(self._read(shard, node, key))
                self._reads[mark] = task
                task.add_done_callback(functools.partial(self._ended, mark))

    def _ended(self, mark: Mark, task: asyncio.Task[None]) -> None:
        if self._reads.get(mark) is task:
            del self._reads[mark]

    def _masters(self, shard: ShardConnections) -> list[tuple[str, str]]:
        """(master, epoch key) of the masters of ``shard`` whose loss the session would act
        on; none where it has nothing to re-assert, write again or publish again."""
        core = self._core
        if core.memberships or core.recent[shard.spec.index]:
            return shard.epoch_keys(core.keys)
        beside = (shard.epoch_key_beside(core.keys, key) for key in self.limit_keys(shard))
        return sorted({where for where in beside if where is not None})

    async def _read(self, shard: ShardConnections, node: str, key: str) -> None:
        with self._steps.step("epoch check"):
            try:
                lost = await watch_epoch(self._core, shard, self._epochs, node, key)
            except (RedisUnavailable, RedisCommandError) as err:
                logger.debug("Epoch check failed: %s", err)
                return
            if lost:
                self._lost(shard)

    async def cancel(self) -> None:
        """Cancels the reads under way (at close): their replies would find it closing."""
        reads = set(self._reads.values())
        for task in reads:
            task.cancel()
        if reads:
            await asyncio.wait(reads)


def _none(shard: ShardConnections) -> list[str]:
    return []
