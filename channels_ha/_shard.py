"""One Redis deployment of a layer (a single node, a Sentinel master, or a Cluster) and this
event loop's connections to it.

A shard holds few connections per event loop, whatever the number of consumers: the
pipelined command link (on Cluster, one per master), a reader for the process inboxes, a
reader for normal channels (only while somebody receives on one) and, under Sentinel, a
subscription to failover announcements and a periodic question to the sentinels.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._cluster import ClusterRouter
from ._constants import FAILOVER_HOLD_MAX_S, INBOX_BATCH_SIZE, SENTINEL_WATCH_DELAY_S
from ._in_flight import InFlight
from ._inbox_reader import InboxReader
from ._keys import KeyLayout
from ._link import CommandLink
from ._normal_reader import NormalReader
from ._reader import BlockingReader, DeliverFn, FailFn, KeysFn
from ._recheck import MasterRecheck
from ._resp import Endpoint
from ._server import (
    Announcements,
    Credentials,
    Locator,
    SentinelLocator,
    ServerInfo,
    ServerSettings,
)
from ._slots import slot_of, tag_for_slot
from ._stats import ShardStats
from ._watch import FailoverEvents, SentinelWatch

logger = logging.getLogger("channels_ha.layer")


@dataclass(frozen=True)
class SentinelWatchSpec:
    sentinels: tuple[Endpoint, ...]
    master_name: str
    credentials: Credentials
    connect_timeout_s: float  # the sentinels' (sentinel_kwargs), else the data nodes'
    reply_timeout_s: float  # likewise, as SentinelLocator asks them


@dataclass(frozen=True)
class ShardSpec:
    """How to reach one deployment; shared by every event loop of the layer."""

    index: int
    locator: Locator
    settings: ServerSettings
    watch: SentinelWatchSpec | None = None
    cluster: tuple[Endpoint, ...] | None = None  # startup nodes of a Redis Cluster


@dataclass
class _SlotLocator:
    """A reader's master on Cluster: whichever node owns the slot of its keys now."""

    router: ClusterRouter
    slot: int

    async def locate(self) -> Endpoint:
        return await self.router.locate(self.slot)

    def describe(self) -> str:
        return f"slot {self.slot} of the {self.router.describe()}"


class ShardConnections:
    """This event loop's connections to one shard."""

    def __init__(
        self,
        spec: ShardSpec,
        stats: ShardStats,
        on_server: Callable[[ShardConnections, ServerInfo], None],
        on_topology: Callable[[ShardConnections], None],
    ) -> None:
        self.spec = spec
        self.stats = stats
        self._on_server = on_server
        self.router: ClusterRouter | None = None
        self.announcements = Announcements()
        self.link: CommandLink | ClusterRouter
        if spec.cluster:
            self.router = ClusterRouter(
                spec.cluster, spec.settings, stats, self._server_seen, lambda: on_topology(self)
            )
            self.link = self.router
        else:
            verify = self._still_master if spec.watch else None
            self.link = CommandLink(
                spec.locator,
                spec.settings,
                self._server_seen,
                stats,
                verify=verify,
                announcements=self.announcements,
            )
        # Epoch checks not yet compared, one per server run met (on Cluster, several nodes'
        # at once): group_send waits for all of them, not only for the last one started.
        self.epoch_checks: set[asyncio.Future[Any]] = set()
        self.inbox_reader: BlockingReader | None = None
        self.normal_reader: BlockingReader | None = None
        self._watch: SentinelWatch | None = None
        self._recheck: MasterRecheck | None = None
        # The server run a re-point moved the connections off, until one reaches another.
        self._left: ServerInfo | None = None
        self._watch_due: asyncio.TimerHandle | None = None
        self._watch_begun = asyncio.Event()
        self._announced = ""  # the last new master the sentinels announced
        self._closing = False

    def add_epoch_check(self, check: asyncio.Future[Any] | None) -> None:
        if check is not None and not check.done():
            self.epoch_checks.add(check)
            check.add_done_callback(self.epoch_checks.discard)

    def _server_seen(self, info: ServerInfo) -> None:
        self._start_watch()
        self._on_server(self, info)

    async def _still_master(self, link: CommandLink) -> bool:
        """Asks the sentinels whether ``link``'s server is still the master (in case their
        +switch-master announcement did not reach us)."""
        endpoint = await self.spec.locator.locate()
        return link.server is None or _is_at(link.server, endpoint.address)

    def node_of(self, info: ServerInfo) -> str:
        """Which master a server run belongs to: the one master, or a Cluster node."""
        return _address(info) if self.router else ""

    def epoch_keys(self, keys: KeyLayout) -> list[tuple[str, str]]:
        """(master, epoch key) for every master of this shard."""
        if self.router is None:
            return [("", keys.epoch())]
        found = [(a, self._epoch_key_at(keys, a)) for a in self.router.master_addresses()]
        return [(address, key) for address, key in found if key is not None]

    def epoch_key_beside(self, keys: KeyLayout, key: str) -> tuple[str, str] | None:
        """(master, epoch key) of the master holding ``key``, if known."""
        if self.router is None:
            return "", keys.epoch()
        owner = self.router.owner_of(slot_of(key))
        epoch = None if owner is None else self._epoch_key_at(keys, owner)
        return None if owner is None or epoch is None else (owner, epoch)

    def epoch_key(self, keys: KeyLayout, info: ServerInfo) -> str | None:
        """The epoch key of the server ``info`` describes (on Cluster, in a slot it owns)."""
        if self.router is None:
            return keys.epoch()
        return self._epoch_key_at(keys, _address(info))

    def _epoch_key_at(self, keys: KeyLayout, address: str) -> str | None:
        """A Cluster master's epoch key: in the first slot it owns, if it owns any."""
        assert self.router is not None
        slot = self.router.first_slot_at(address)
        return None if slot is None else keys.epoch(tag_for_slot(slot))

    def scan_nodes(self) -> list[tuple[str, Callable[[], CommandLink]]]:
        """Every master (its address, and how to reach it), for commands that run per node
        (SCAN). The link is asked for anew for each command: on Cluster the link to a node
        that stops being a master closes."""
        router = self.router
        if router is not None:
            addresses = router.master_addresses()
            return [(a, functools.partial(router.link_to, a)) for a in addresses]
        link = self.link
        assert isinstance(link, CommandLink)
        return [("", lambda: link)]

    # -- readers ---------------------------------------------------------------------------------

    def reader(
        self,
        keys: KeysFn,
        deliver: DeliverFn,
        fail: FailFn,
        slot: int,
        in_flight: InFlight | None = None,
    ) -> BlockingReader:
        """The inbox reader, or with ``in_flight`` the normal-channel reader, started on
        first use."""
        current = self.inbox_reader if in_flight is None else self.normal_reader
        if current is not None:
            return current
        locator = self.spec.locator if self.router is None else _SlotLocator(self.router, slot)
        options: dict[str, Any] = {
            "locator": locator,
            "settings": self.spec.settings,
            "unblock": self._unblock,
            "on_server": self._server_seen,
            "keys": keys,
            "deliver": deliver,
            "fail": fail,
            "stats": self.stats,
            "announcements": self.announcements,
        }
        reader: BlockingReader
        if in_flight is None:
            reader = self.inbox_reader = InboxReader(count=INBOX_BATCH_SIZE, **options)
        else:
            reader = self.normal_reader = NormalReader(
                count=1, in_flight=in_flight.key, in_flight_ttl_ms=in_flight.ttl_ms, **options
            )
        reader.start()
        return reader

    def _unblock(self, server: ServerInfo) -> asyncio.Future[object] | None:
        """Ends a reader's blocking pop early, through the command link to its server."""
        if self.router is not None:
            link = self.router.link_at(server.endpoint)
        else:
            assert isinstance(self.link, CommandLink)
            link = self.link
            if link.server is not None and link.server.run_id != server.run_id:
                return None  # the link is on another server; the pop times out by itself
        return link.submit("CLIENT", "UNBLOCK", server.client_id)

    def readers(self) -> list[BlockingReader]:
        return [r for r in (self.inbox_reader, self.normal_reader) if r is not None]

    # -- failover --------------------------------------------------------------------------------

    def drop_stale(self, info: ServerInfo, reason: str) -> None:
        """Moves every connection still on another run of this master over to the new one."""
        node = self.node_of(info)
        if isinstance(self.link, CommandLink) and _stale(self.link.server, info, node, self):
            self.link.drop_connection(reason)
        for reader in self.readers():
            if _stale(reader.connected_to, info, node, self):
                reader.drop_connection(reason)

    def failover_started(self) -> None:
        logger.warning(
            "A failover of %s has started; new writes wait for the new master",
            self.spec.locator.describe(),
            extra={"event": "failover_started"},
        )
        hold_s = min(FAILOVER_HOLD_MAX_S, self.spec.settings.failover_timeout_s / 2)
        self.link.hold(hold_s)

    def failover_aborted(self) -> None:
        logger.warning(
            "The failover of %s was abandoned; the writes held for it are released",
            self.spec.locator.describe(),
            extra={"event": "failover_aborted"},
        )
        self.link.release()

    def switch_announced(self, address: str) -> None:
        reason = f"sentinels announced a new master at {address}"
        if address != self._announced:  # each sentinel announces it: one line is enough
            self._announced = address
            logger.warning(
                "Failover detected on %s: %s",
                self.spec.locator.describe(),
                reason,
                extra={"event": "failover_detected", "new_master": address},
            )
        self._move_to(address, reason)

    def repointed(self, address: str) -> None:
        """The sentinels consistently name another master than the one the connections are
        on, with no failover announced (see ``_recheck``): they move as after one."""
        reason = f"the sentinels name another master, {address}, with no failover announced"
        logger.warning(
            "Sentinels pointed elsewhere on %s: %s; moving the connections there",
            self.spec.locator.describe(),
            reason,
            extra={"event": "master_repointed", "new_master": address},
        )
        self._left = next((s for s in self.live_servers() if not _is_at(s, address)), None)
        self._move_to(address, reason)

    def arrived(self, info: ServerInfo) -> ServerInfo | None:
        """The server run a re-point moved the connections off, the first time one of them
        reaches another (then None again): another event loop of the process may have got
        there long before, and what this one wrote meanwhile went to the old master."""
        left = self._left
        if left is None or left.run_id == info.run_id:
            return None
        self._left = None
        return left

    def connected_to(self) -> ServerInfo | None:
        """The server the open connections are on: the command link's, else a reader's
        (one being made asks the sentinels itself)."""
        return next(iter(self.live_servers()), None)

    def live_servers(self) -> list[ServerInfo]:
        """The server of each open connection: the command link's, then the readers'."""
        link = self.link
        servers = [link.live_server] if isinstance(link, CommandLink) else []
        servers += [reader.live_server for reader in self.readers()]
        return [server for server in servers if server is not None]

    def _move_to(self, address: str, reason: str) -> None:
        """Moves every connection not at ``address`` (``host:port``) there."""
        self.announcements.switches += 1  # connections being made now must look again
        self.spec.settings.hints.master.forget()  # and those of the process's other loops
        if isinstance(self.link, CommandLink) and not _is_at(self.link.server, address):
            self.link.drop_connection(reason)
        self.link.release()
        self.link.nudge()
        for reader in self.readers():
            if not _is_at(reader.connected_to, address):
                reader.drop_connection(reason)
            reader.nudge()

    def _start_watch(self) -> None:
        """Schedules the watch at the first server seen (see SENTINEL_WATCH_DELAY_S)."""
        if self.spec.watch is not None and self._watch_due is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._watch_due = loop.call_later(SENTINEL_WATCH_DELAY_S, self._begin_watch)

    def _begin_watch(self) -> None:
        spec = self.spec.watch
        if spec is None or self._watch is not None or self._closing:
            return
        events = FailoverEvents(self.failover_started, self.failover_aborted, self.switch_announced)
        self._watch = SentinelWatch(
            spec.sentinels,
            spec.master_name,
            spec.credentials,
            spec.connect_timeout_s,
            spec.reply_timeout_s,
            events,
            client_name=f"{self.spec.settings.client_name}:sentinel-watch",
        )
        self._watch.start()
        self._watch_begun.set()
        locator = self.spec.locator
        if isinstance(locator, SentinelLocator):
            self._recheck = MasterRecheck(
                locator, self.spec.settings, self.announcements, self.live_servers, self.repointed
            )
            self._recheck.start()

    async def watch_subscribed(self) -> None:
        """Waits until the sentinel watch listens on every sentinel (Sentinel only; it
        begins SENTINEL_WATCH_DELAY_S after the first connection)."""
        await self._watch_begun.wait()
        assert self._watch is not None
        await self._watch.subscribed()

    # -- closing ---------------------------------------------------------------------------------

    async def close_readers(self) -> None:
        """At once: each may wait for a master to recover a lost reply (see NormalReader)."""
        await asyncio.gather(*(reader.close() for reader in self.readers()))

    async def close(self, drain_timeout_s: float) -> None:
        # A connection made while the link drains must not start a watch nobody closes.
        self._closing = True
        if self._watch_due is not None:
            self._watch_due.cancel()
        if self._recheck is not None:  # first: it would move connections being closed
            await self._recheck.close()
        await self.close_readers()
        await self.link.close(drain_timeout_s)
        if self._watch is not None:
            await self._watch.close()


def _address(info: ServerInfo) -> str:
    return info.endpoint.address


def _is_at(server: ServerInfo | None, address: str) -> bool:
    return server is not None and _address(server) == address


def _stale(server: ServerInfo | None, info: ServerInfo, node: str, shard: ShardConnections) -> bool:
    """``server`` is an older run of the same master as ``info``."""
    if server is None or server.run_id == info.run_id:
        return False
    return shard.node_of(server) == node
