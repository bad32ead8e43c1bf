"""Asking the sentinels now and then which master they name, for connections that never ask.

A connection asks the sentinels where the master is only when it is made. Sentinels pointed
at another master without a failover (``SENTINEL REMOVE`` and ``MONITOR`` on each: Redis
moved to new nodes) announce nothing, and the old master keeps its role, its server run and
its replicas: a long-lived event loop's connections would write to it, and read from it, for
good, while every connection made since goes to the new one. Each such loop asks every
``MASTER_RECHECK_INTERVAL_S``.

It must never move connections in the middle of a failover, which the announcements and the
connections' own checks handle. So it moves them only when most sentinels answer, all name
the same master, none flags a failover in progress or the master down, and that master
answers ``ROLE`` master; any doubt, or a failed lookup, leaves things as they are until the
next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ._connection import answers_as_master
from ._constants import FAILURE_LOG_INTERVAL_S, MASTER_RECHECK_INTERVAL_S
from ._server import Announcements, SentinelLocator, ServerInfo, ServerSettings
from ._upkeep_steps import UpkeepSteps
from .exceptions import ConnectionLost, RedisCommandError

logger = logging.getLogger("channels_ha.layer")


class MasterRecheck:
    """One shard's periodic question to its sentinels, on one event loop."""

    def __init__(
        self,
        locator: SentinelLocator,
        settings: ServerSettings,
        announcements: Announcements,
        servers: Callable[[], list[ServerInfo]],
        move: Callable[[str], None],
    ) -> None:
        self._locator = locator
        self._settings = settings
        self._announcements = announcements
        self._servers = servers  # those the open connections are on, each one's
        self._move = move  # moves them to the master at "host:port"
        self._task: asyncio.Task[None] | None = None
        # A failing round is logged as the upkeep's steps are: once a minute, with a count.
        self._failures = UpkeepSteps(FAILURE_LOG_INTERVAL_S)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(MASTER_RECHECK_INTERVAL_S)
            with self._failures.step("master recheck"):  # a bug: reported, throttled
                await self.check()

    async def check(self) -> None:
        """One round: moves the connections if the sentinels consistently name a master
        other than one of theirs, which answers as a master. Each connection counts: the
        command link may have reconnected to the named master on its own while a reader
        stayed on the old one (nothing tells it when the process met the new server run
        first, in a sync call)."""
        servers = self._servers()
        if not servers:
            return  # nothing to move: a connection being made asks the sentinels itself
        switches = self._announcements.switches
        try:
            named = await self._locator.agreed()
            address = named.address
            if all(server.endpoint.address == address for server in servers):
                return
            await answers_as_master(named, self._settings)
        except (ConnectionLost, RedisCommandError) as err:
            logger.debug("Connections stay where they are this round: %s", err)
            return
        if self._announcements.switches != switches or self._servers() != servers:
            return  # a failover was announced, or the connections moved: the next round sees
        self._move(address)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
