"""Redis Cluster: every request to the master that owns its slot, through failures and moves.

The router keeps a slot map (``CLUSTER SLOTS``) and one pipelined :class:`CommandLink` per
master. A link cannot always serve what it was given: its node died, or answered ``MOVED``
(the slot moved for good), ``ASK`` (this key is mid-migration), ``TRYAGAIN`` or
``CLUSTERDOWN``. It then hands the requests back, in order, and the router sends them on.

A router starts from the map another event loop of the process read last, if any: a sync
call's session (``async_to_sync``) would otherwise ask every node for it, at every call. A
stale map is corrected the way any is, by the nodes' redirections, by connections that fail
or find a replica (``ROLE``), and by the map reads these cause; a router that finds it
stale makes the next event loop read its own. A node named only by that map gets
``HINT_PATIENCE_S`` to connect and answer: a master frozen and replaced meanwhile accepts
connections and would hold the handshake for ``reply_timeout``. Then the router reads the
map, and waits as long as ever for a node the map names again (slow, not replaced).

Order within a slot is kept as on a single node, see ``_held_slots``; the slot map is read
as ``_slots`` says, and the links kept as ``_node_links`` does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Container, Iterable, Sequence

from ._backoff import Backoff
from ._constants import HINT_PATIENCE_S
from ._held_slots import HeldSlots
from ._hints import SlotMap
from ._link import CommandLink, Request
from ._node_links import NodeLinks
from ._resp import Arg, Endpoint, pack
from ._scripts import Script
from ._server import FixedLocator, ServerInfo, ServerSettings, give_up
from ._slots import (
    SLOTS,
    Owners,
    Replicas,
    node_address,
    read_owners,
    redirect_target,
    slot_of,
)
from ._stats import ShardStats
from .exceptions import ConnectionLost, LayerClosed, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.cluster")

_DROP = -2  # slot of internal requests (ASKING) that are not re-routed
_TRYAGAIN_DELAY_S = 0.05
_MAX_REFRESHES_AFTER_MOVED = 3  # map reads in a row while MOVEDs name new masters
_MAX_CLOSE_ROUNDS = 100  # bounds close()'s loop over requests
# A MOVED to a known master (a reshard) corrects that slot only; the whole map is read this
# long after, once for every MOVED meanwhile: a master the reshard emptied then loses its
# link, and each master's first slot (where its epoch key lives) is known again.
_MAP_READ_AFTER_MIGRATION_S = 10.0
# While requests wait for a slot's new owner, the slot map is read at least this often.
SLOT_MAP_POLL_MAX_S = 0.15


class ClusterRouter:
    """The command "link" of a Cluster: same interface as :class:`CommandLink`."""

    def __init__(
        self,
        startup: Sequence[Endpoint],
        settings: ServerSettings,
        stats: ShardStats,
        on_server: Callable[[ServerInfo], None],
        on_topology: Callable[[], None],
    ) -> None:
        self._startup = list(startup)
        self._template = startup[0]
        self._settings = settings
        self._stats = stats
        self._on_server = on_server
        self._on_topology = on_topology
        self._owners: Owners = [None] * SLOTS
        self._first_slots: dict[str, int] = {}  # master -> the first slot it owns
        self._masters: set[str] = set()  # the masters of the last map, and those MOVED named
        self._replicas: Replicas = {}  # each master's replicas, as the last map named them
        self._last_error = "slot map unknown"  # what held requests wait out, for give_up()
        self._nodes = NodeLinks(self._make_link, lambda: self._masters, settings.reply_timeout_s)
        self._read_timer: asyncio.TimerHandle | None = None  # see _read_map_later
        self._held = HeldSlots(self._one_settled)
        self._dispatching: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None  # see _refresh_soon
        self._refresh_again = False
        # Held requests wait for the cluster to promote a replica, which nothing announces:
        # the slot map is polled, and a short cap shortens the wait after the promotion.
        self._backoff = Backoff(SLOT_MAP_POLL_MAX_S)
        self._closed = False
        self._mapped = False  # a map read by this router (not another event loop's)
        self._hinted: frozenset[str] = frozenset()  # masters named by that map only
        self.server: ServerInfo | None = None  # unused: a cluster has many servers
        self._map_hint = settings.hints.slot_map
        known = self._map_hint.get()
        if known is not None:
            self._take_map(known)
            self._hinted = known.masters

    # -- the CommandLink interface ---------------------------------------------------------------

    def submit(
        self, *args: Arg, key: str | None = None, patience_s: float = 0.0
    ) -> asyncio.Future[object]:
        return self.submit_packed(pack(*args), key, patience_s)

    def submit_packed(
        self, packed: bytes, key: str | None = None, patience_s: float = 0.0
    ) -> asyncio.Future[object]:
        if self._closed:
            raise LayerClosed()
        if key is None:
            raise ValueError("on Redis Cluster every command needs the key it routes by")
        request = Request(packed, self._settings.failover_timeout_s, slot_of(key), patience_s)
        self._route(request)
        return request.future

    def submit_script(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg]
    ) -> asyncio.Future[object]:
        return self.submit_packed(pack("EVALSHA", script.sha, len(keys), *keys, *args), keys[0])

    def connection_of(self, key: str) -> object:
        """Which connection requests about ``key`` go to now (its master's link, as of now)."""
        owner = self._owners[slot_of(key)]
        if owner is None:
            return None
        link = self._nodes.get(owner)  # the link itself: a retired one's successor counts anew
        return link, link.generation

    def nudge(self) -> None:
        self._backoff.nudge()

    def hold(self, limit_s: float) -> None:
        """Sentinel announcements do not exist on Cluster; nothing to hold."""

    def release(self) -> None:
        """See :meth:`hold`."""

    def drop_connection(self, reason: str) -> None:
        for _, link in self._nodes.items():
            link.drop_connection(reason)

    # -- per node --------------------------------------------------------------------------------

    async def reread_map(self) -> None:
        """Reads the slot map now (a caller saw a node stop answering as a master)."""
        await self._try_refresh()

    @property
    def mapped(self) -> bool:
        """Whether this router read the slot map itself: one taken from another event loop
        may lack a master added since."""
        return self._mapped

    def link_to(self, address: str) -> CommandLink:
        """The open link to the node at ``address`` (``host:port``), made if need be."""
        return self._nodes.get(address)

    def link_at(self, endpoint: Endpoint) -> CommandLink:
        return self.link_to(node_address(endpoint.host, endpoint.port))

    def owner_endpoint(self, slot: int) -> Endpoint | None:
        owner = self._owners[slot]
        return None if owner is None else self._endpoint(owner)

    async def locate(self, slot: int) -> Endpoint:
        """The master of ``slot`` per a fresh slot map (a reader reconnecting asks this)."""
        await self._refresh_map()
        endpoint = self.owner_endpoint(slot)
        if endpoint is None:
            raise ConnectionLost(f"no master serves slot {slot}")
        return endpoint

    def owner_of(self, slot: int) -> str | None:
        """The master that owns ``slot`` as far as this router knows (``host:port``)."""
        return self._owners[slot]

    def first_slot_at(self, address: str) -> int | None:
        """A slot the master at ``address`` (``host:port``) owns, if any."""
        return self._first_slots.get(address)

    def describe(self) -> str:
        nodes = ", ".join(e.describe() for e in self._startup)
        return f"cluster via {nodes}"

    # -- routing ---------------------------------------------------------------------------------

    def _route(self, request: Request) -> None:
        held = self._held.get(request.slot)
        if held is not None:
            held.newer.append(request)
            self._schedule()
            return
        owner = self._owners[request.slot]
        if owner is None:
            self._held.hold_new(request)
            self._schedule()
            return
        self._nodes.get(owner).submit_request(request)

    def _handed_back(self, link: CommandLink, requests: list[Request], reason: str) -> None:
        """A link gives back what it could not serve; route it on, keeping slot order."""
        if not reason.startswith(("MOVED ", "ASK ")):  # redirections are not failures
            self._last_error = reason
        for request in requests:
            if request.future.done():
                continue
            if self._closed:  # a link draining at close(): nothing routes it on any more
                request.future.set_exception(LayerClosed())
            elif request.slot < 0:  # ASKING (internal) or a node's own command (SCAN, UNBLOCK)
                request.future.set_exception(RedisUnavailable(f"{reason} on a cluster node"))
            elif reason.startswith("ASK ") and request.slot not in self._held:
                self._ask(request, redirect_target(reason))
            else:  # ASK behind held requests of its slot waits for them (then meets ASK again)
                self._hold(link, request, reason)
        self._schedule()

    def _ask(self, request: Request, target: str) -> None:
        """Sends a request once to the node that imports its slot; that node's link counts
        as in use for ``_ASK_TARGET_KEEP_S`` even though it may own no slot yet."""
        self._nodes.note_ask(target)
        self._nodes.get(target).submit_request(request, asking=True)
        self._nodes.retire_later()

    def _hold(self, link: CommandLink, request: Request, reason: str) -> None:
        held = self._held.hand_back(link, request)
        if reason.startswith("MOVED "):
            self._moved(request.slot, redirect_target(reason))
        elif reason.startswith("TRYAGAIN"):
            held.not_before = time.monotonic() + _TRYAGAIN_DELAY_S
        else:  # node gone, CLUSTERDOWN: the map is stale
            self._owners[request.slot] = None
            self._map_hint.forget()

    def _moved(self, slot: int, target: str) -> None:
        if self._owners[slot] != target:
            self._map_hint.forget()  # the next event loop reads the map afresh
            self._owners[slot] = target
            self._hold_behind_old_links({slot})
            if target not in self._masters:  # a promoted replica (else a slot migrated)
                self._masters.add(target)
                self._refresh_soon()
                self._on_topology()
            else:
                self._read_map_later()

    def _read_map_later(self) -> None:
        """Reads the whole map ``_MAP_READ_AFTER_MIGRATION_S`` from now, or sooner if a read
        is due already: a reshard's MOVEDs name masters the router knows, and without a read
        the link to a master it emptied stayed open until something else read the map (a
        failover; maybe never)."""
        if self._read_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._read_timer = loop.call_later(_MAP_READ_AFTER_MIGRATION_S, self._read_map_now)

    def _read_map_now(self) -> None:
        self._read_timer = None
        self._refresh_soon()

    def _refresh_soon(self) -> None:
        """Reads the whole map after a MOVED named a new master (the one it replaced must
        leave the known masters, or its coming back later would not count as new), or a
        while after a reshard's (see _read_map_later). A read already under way may predate
        the MOVED: then one more follows it."""
        if self._closed:
            return
        if self._refreshing is not None:
            self._refresh_again = True
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh_after_moved())

    async def _refresh_after_moved(self) -> None:
        try:
            for _ in range(_MAX_REFRESHES_AFTER_MOVED):
                self._refresh_again = False
                await self._try_refresh()
                if not self._refresh_again:
                    break
        finally:
            self._refreshing = None

    def _hold_behind_old_links(self, slots: Container[int] | None = None) -> None:
        """Holds each slot that still has requests on a link other than its owner's (queued
        there while it reconnects, or awaiting replies): newer requests of the slot wait until
        those are answered, or handed back and written first. Otherwise a slot that changed
        owner meanwhile would take its new requests ahead of its old ones."""
        for node, link in self._nodes.items():
            for request in link.pending_requests():
                slot = request.slot
                if slot < 0 or request.future.done():
                    continue
                if slots is not None and slot not in slots:  # (one MOVED: one slot to check)
                    continue
                # No owner: the slot is held anyway until a map names one, and this runs
                # again then. The same owner: newer requests queue behind these on its link.
                if self._owners[slot] in (None, node):
                    continue
                self._held.expect(request)
        self._schedule()

    def _one_settled(self) -> None:
        """A request a held slot waited for completed on its old link."""
        self._backoff.nudge()
        self._schedule()

    def _connected(self, info: ServerInfo) -> None:
        self._backoff.reset()
        self._on_server(info)

    def _schedule(self) -> None:
        if self._dispatching is None and self._held and not self._closed:
            self._dispatching = asyncio.get_running_loop().create_task(self._dispatch_held())

    async def _dispatch_held(self) -> None:
        first = True
        try:
            while self._held and not self._closed:
                self._held.release_ready(self._owners, self._nodes.get)
                self._held.fail_overdue(self._give_up)
                if not self._held:
                    return
                if not first or self._mapped:
                    # Pace the attempts; a successful connection resets the backoff and a
                    # request settling elsewhere cuts the wait short.
                    await self._backoff.wait()
                first = False
                if any(self._owners[slot] is None for slot in self._held):
                    await self._try_refresh()
        finally:
            self._dispatching = None

    def _give_up(self, overdue_s: float) -> RedisUnavailable:
        waited = overdue_s + self._settings.failover_timeout_s
        return give_up(self.describe(), self._settings, waited, self._last_error)

    async def _try_refresh(self) -> None:
        try:
            await self._refresh_map()
        except (ConnectionLost, RedisCommandError) as err:
            logger.info("Waiting for the cluster's slot map: %s", err)
            self._last_error = str(err)

    async def _still_owner(self, link: CommandLink) -> bool:
        """Asks the other nodes whether ``link``'s node still owns what it was sent: those
        a map read asks, and every master of the last map and the node's replicas, which a
        router given one startup node, and using no other master, would not ask. With no
        other node at all (a one-master cluster without replicas) it is believed, as a
        single node is: dropping its connection would only write the same requests to it
        again (seen: a 0.7 s command run 9 times, never answered)."""
        node = self._nodes.address_of(link)
        if node is None:  # retired: it owns no slot
            return False
        others = sorted({*self._masters, *self._replicas.get(node, ())})
        candidates = self._candidates(also=others, exclude=node)
        if not candidates:
            return True
        self._apply_map(*await read_owners(candidates, self._settings))
        return all(self._owners[slot] == node for slot in link.inflight_slots())

    # -- the slot map ----------------------------------------------------------------------------

    async def _refresh_map(self) -> None:
        """Reads the slot map from every reachable node and keeps what most of them say."""
        self._apply_map(*await read_owners(self._candidates(), self._settings))

    def _candidates(self, also: Iterable[str] = (), exclude: str | None = None) -> list[Endpoint]:
        """The nodes a map read asks: those with links, those whose links were retired, the
        startup nodes, and ``also``; not ``exclude``."""
        nodes = dict.fromkeys([*self._nodes.known(), *also])
        startup = [e for e in self._startup if node_address(e.host, e.port) not in nodes]
        asked = [self._endpoint(node) for node in nodes] + startup
        return [e for e in asked if node_address(e.host, e.port) != exclude]

    def _apply_map(
        self, owners: Owners, quorum_s: float | None, replicas: Replicas | None = None
    ) -> None:
        """Takes a new map; tells the layer only when a master appeared (a promoted replica,
        or a node added), which may lack the last writes. Slots migrated between masters
        lose nothing: MIGRATE moves each key whole, so re-asserting and writing again would
        only cost (seen: 62 times the last 2 s of writes during one reshard, overflowing
        capacity). A master that left gave its slots to others, which appear or migrated.
        ``replicas`` None keeps those known."""
        slot_map = SlotMap.of(owners, self._replicas if replicas is None else replicas)
        changed = self._mapped and not slot_map.masters <= self._masters
        moved = owners != self._owners
        self._take_map(slot_map)
        self._mapped, self._hinted = True, frozenset()
        self._remember(slot_map, quorum_s)
        if moved:
            self._hold_behind_old_links()
        masters = sorted(slot_map.masters)
        self._stats.master = f"{len(masters)} masters: {', '.join(masters)}"
        self._nodes.retire_soon()
        if changed:
            self._on_topology()

    def _remember(self, slot_map: SlotMap, quorum_s: float | None) -> None:
        """Keeps the map for the next event loop, unless most nodes were slow to give it:
        connections to them would mostly outlast ``HINT_PATIENCE_S``, and each call would
        wait that long before reading the map anyway."""
        if quorum_s is not None and quorum_s < HINT_PATIENCE_S / 2:
            self._map_hint.put(slot_map)
        else:
            self._map_hint.forget()

    def _take_map(self, slot_map: SlotMap) -> None:
        self._owners = list(slot_map.owners)
        self._masters = set(slot_map.masters)
        self._first_slots = dict(slot_map.first_slots)
        self._replicas = slot_map.replicas

    def master_addresses(self) -> list[str]:
        return sorted({o for o in self._owners if o})

    # -- links -----------------------------------------------------------------------------------

    def _make_link(self, node: str) -> CommandLink:
        locator = FixedLocator(self._endpoint(node), kind="cluster node")
        return CommandLink(
            locator,
            self._settings,
            self._connected,
            self._stats,
            hand_back=self._handed_back,
            verify=self._still_owner,
            routed_because=lambda: self._last_error,
            patience=functools.partial(self._patience_for, node),
        )

    def _patience_for(self, address: str) -> float | None:
        """How long a connection to ``address`` may take: ``HINT_PATIENCE_S`` while only
        another event loop's map names it (a master frozen and replaced meanwhile would hold
        the handshake for reply_timeout); then the link hands its requests back, and the
        router reads the map. A node this router's own map names gets the full timeouts."""
        return HINT_PATIENCE_S if address in self._hinted else None

    def _endpoint(self, address: str) -> Endpoint:
        host, _, port = address.rpartition(":")
        template = self._template
        hostname = template.server_hostname if template.server_hostname == host else host
        return Endpoint(host, int(port), ssl_context=template.ssl_context, server_hostname=hostname)

    async def close(self, drain_timeout_s: float) -> None:
        """Lets the requests in flight, or waiting for a slot's owner, finish within
        ``drain_timeout_s`` (routing goes on meanwhile, as a link goes on writing while it
        drains), then closes every link."""
        deadline = time.monotonic() + drain_timeout_s
        for _ in range(_MAX_CLOSE_ROUNDS):
            unsettled = self._unsettled()
            if not unsettled or time.monotonic() >= deadline:
                break
            await asyncio.wait(unsettled, timeout=deadline - time.monotonic())
        self._closed = True
        self._nodes.stop()
        if self._read_timer is not None:
            self._read_timer.cancel()
        for task in (self._dispatching, self._refreshing, self._nodes.retiring):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        self._held.fail_all("the channel layer was closed")
        await self._nodes.close(deadline)

    def _unsettled(self) -> list[asyncio.Future[object]]:
        futures = (*self._held.futures(), *self._nodes.unsettled())
        return [future for future in futures if not future.done()]
