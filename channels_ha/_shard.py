"""One Redis master (single node or Sentinel-managed) and this event loop's connections to it.

A shard holds at most four connections per event loop, whatever the number of consumers:
the pipelined command link, a reader for the process inboxes, a reader for normal channels
(only while somebody receives on one) and, under Sentinel, a subscription to failover
announcements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._constants import INBOX_BATCH_SIZE
from ._link import CommandLink
from ._reader import BlockingReader, DeliverFn, FailFn, KeysFn
from ._resp import Endpoint
from ._server import Credentials, Locator, ServerInfo, ServerSettings
from ._stats import ShardStats
from ._watch import SwitchMasterWatch

logger = logging.getLogger("channels_ha.layer")


@dataclass(frozen=True)
class SentinelWatchSpec:
    sentinels: tuple[Endpoint, ...]
    master_name: str
    credentials: Credentials


@dataclass(frozen=True)
class ShardSpec:
    """How to reach one master; shared by every event loop of the layer."""

    index: int
    locator: Locator
    settings: ServerSettings
    watch: SentinelWatchSpec | None = None


class ShardConnections:
    """This event loop's connections to one shard."""

    def __init__(
        self,
        spec: ShardSpec,
        stats: ShardStats,
        on_server: Callable[[ShardConnections, ServerInfo], None],
    ) -> None:
        self.spec = spec
        self.stats = stats
        self._on_server = on_server
        self.link = CommandLink(spec.locator, spec.settings, self._server_seen, stats)
        self.epoch_check: asyncio.Future[Any] | None = None
        self.inbox_reader: BlockingReader | None = None
        self.normal_reader: BlockingReader | None = None
        self._watch: SwitchMasterWatch | None = None

    def _server_seen(self, info: ServerInfo) -> None:
        self._start_watch()
        self._on_server(self, info)

    def reader(self, kind: str, keys: KeysFn, deliver: DeliverFn, fail: FailFn) -> BlockingReader:
        """The inbox or normal-channel reader, started on first use."""
        current = self.inbox_reader if kind == "inbox" else self.normal_reader
        if current is not None:
            return current
        reader = BlockingReader(
            locator=self.spec.locator,
            settings=self.spec.settings,
            link=self.link,
            on_server=self._server_seen,
            keys=keys,
            count=INBOX_BATCH_SIZE if kind == "inbox" else 1,
            deliver=deliver,
            fail=fail,
            stats=self.stats,
        )
        if kind == "inbox":
            self.inbox_reader = reader
        else:
            self.normal_reader = reader
        reader.start()
        return reader

    def readers(self) -> list[BlockingReader]:
        return [r for r in (self.inbox_reader, self.normal_reader) if r is not None]

    def drop_stale(self, info: ServerInfo, reason: str) -> None:
        """Moves every connection still on another server run over to the new one."""
        if self.link.server is not None and self.link.server.run_id != info.run_id:
            self.link.drop_connection(reason)
        for reader in self.readers():
            server = reader.connected_to
            if server is not None and server.run_id != info.run_id:
                reader.drop_connection(reason)

    def switch_announced(self, address: str) -> None:
        reason = f"sentinels announced a new master at {address}"
        logger.warning(
            "Failover detected on %s: %s",
            self.spec.locator.describe(),
            reason,
            extra={"event": "failover_detected", "new_master": address},
        )
        if not _is_at(self.link.server, address):
            self.link.drop_connection(reason)
        self.link.nudge()
        for reader in self.readers():
            if not _is_at(reader.connected_to, address):
                reader.drop_connection(reason)
            reader.nudge()

    def _start_watch(self) -> None:
        spec = self.spec.watch
        if spec is None or self._watch is not None:
            return
        self._watch = SwitchMasterWatch(
            spec.sentinels,
            spec.master_name,
            spec.credentials,
            self.spec.settings.connect_timeout_s,
            self.switch_announced,
        )
        self._watch.start()

    async def close_readers(self) -> None:
        for reader in self.readers():
            await reader.close()

    async def close(self, drain_timeout_s: float) -> None:
        await self.close_readers()
        if self._watch is not None:
            await self._watch.close()
        await self.link.close(drain_timeout_s)


def _is_at(server: ServerInfo | None, address: str) -> bool:
    return server is not None and f"{server.endpoint.host}:{server.endpoint.port}" == address
