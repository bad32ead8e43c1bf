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

Order within a slot is kept as on a single node (receivers rely on it to recognise retried
copies): when a request of a slot comes back, the requests of that slot written after it
on the same link will come back too or complete there, and new requests of the slot wait
until they have, before all of them go to the new owner together.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import cast

from redis.crc import key_slot

from ._backoff import Backoff
from ._constants import HINT_PATIENCE_S
from ._hints import SlotMap
from ._link import CommandLink, Request
from ._resp import Arg, Endpoint, open_client, pack
from ._scripts import Script
from ._server import FixedLocator, ServerInfo, ServerSettings, all_replies, give_up
from ._stats import ShardStats
from .exceptions import ConnectionLost, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.cluster")

SLOTS = 16_384
_DROP = -2  # slot of internal requests (ASKING) that are not re-routed
_TRYAGAIN_DELAY_S = 0.05
# Once most nodes answered (a map among the answers), the others get this long: a frozen
# node (one the layer may not even use) would hold every read for socket_timeout.
_MAP_ANSWER_WINDOW_S = 0.25
_MAX_REFRESHES_AFTER_MOVED = 3  # map reads in a row while MOVEDs name new masters
_MAX_CLOSE_ROUNDS = 100  # bounds close()'s loops over requests and links
# A link to a node that owns no slot is closed once idle; one still busy is looked at again
# this often, for at most this many rounds (the next slot map starts over).
_RETIRE_CHECK_S = 0.5
_MAX_RETIRE_ROUNDS = 100
# A node that owns no slot but takes ASK redirections (a slot migrating onto a master that
# owns none yet) keeps its link until this long after the last one: otherwise every map read
# closed it and the next ASK opened another (seen: a new connection at each map read, about
# one a second through a stalled migration, each loading every script). ASKs further apart
# open at most one connection per this span; idle that long, the link is closed.
_ASK_TARGET_KEEP_S = 10.0
# A MOVED to a known master (a reshard) corrects that slot only; the whole map is read this
# long after, once for every MOVED meanwhile: a master the reshard emptied then loses its
# link, and each master's first slot (where its epoch key lives) is known again.
_MAP_READ_AFTER_MIGRATION_S = 10.0
# Nodes whose links were closed are still asked for the slot map (their vote keeps a
# restarted master from being believed); the oldest are forgotten beyond this many.
_MAX_FORMER_NODES = 16
# While requests wait for a slot's new owner, the slot map is read at least this often.
SLOT_MAP_POLL_MAX_S = 0.15


def slot_of(key: str) -> int:
    slot: int = key_slot(key.encode())
    return slot


@functools.lru_cache(maxsize=1024)
def tag_for_slot(slot: int) -> str:
    """A hash tag whose keys land in ``slot`` (for one key per master, such as the epoch)."""
    for number in range(1_000_000):
        tag = f"s{number}"
        if slot_of(tag) == slot:
            return tag
    raise AssertionError(f"no tag found for slot {slot}")  # pragma: no cover


@dataclass
class _Held:
    """Requests of one slot waiting to be routed again, in order."""

    returned: deque[Request] = field(default_factory=deque)  # came back from a link
    newer: deque[Request] = field(default_factory=deque)  # submitted while held
    expected: set[Request] = field(default_factory=set)  # still due back from the old link
    not_before: float = 0.0  # monotonic; TRYAGAIN asks for a short pause


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
        self._owners: list[str | None] = [None] * SLOTS
        self._first_slots: dict[str, int] = {}  # master -> the first slot it owns
        self._masters: set[str] = set()  # the masters of the last map, and those MOVED named
        self._last_error = "slot map unknown"  # what held requests wait out, for give_up()
        self._links: dict[str, CommandLink] = {}
        self._former: dict[str, None] = {}  # nodes whose links were retired, oldest first
        self._retired: set[CommandLink] = set()  # taken out of _links, not closed yet
        self._retiring: asyncio.Task[None] | None = None  # see _retire_soon
        self._asked: dict[str, float] = {}  # ASK target -> monotonic time of the last ASK
        self._retire_timer: asyncio.TimerHandle | None = None  # when an ASK target rests
        self._read_timer: asyncio.TimerHandle | None = None  # see _read_map_later
        self._held: dict[int, _Held] = {}
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
            raise RedisUnavailable("the channel layer was closed")
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
        link = self._link(owner)  # the link itself: a retired one's successor counts anew
        return link, link.generation

    def nudge(self) -> None:
        self._backoff.nudge()

    def hold(self, limit_s: float) -> None:
        """Sentinel announcements do not exist on Cluster; nothing to hold."""

    def release(self) -> None:
        """See :meth:`hold`."""

    def drop_connection(self, reason: str) -> None:
        for link in self._links.values():
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
        return self._link(address)

    def link_at(self, endpoint: Endpoint) -> CommandLink:
        return self.link_to(_address(endpoint.host, endpoint.port))

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
            self._held[request.slot] = _Held(newer=deque([request]))
            self._schedule()
            return
        self._link(owner).submit_request(request)

    def _handed_back(self, link: CommandLink, requests: list[Request], reason: str) -> None:
        """A link gives back what it could not serve; route it on, keeping slot order."""
        if not reason.startswith(("MOVED ", "ASK ")):  # redirections are not failures
            self._last_error = reason
        for request in requests:
            if request.future.done():
                continue
            if self._closed:  # a link draining at close(): nothing routes it on any more
                request.future.set_exception(RedisUnavailable("the channel layer was closed"))
            elif request.slot < 0:  # ASKING (internal) or a node's own command (SCAN, UNBLOCK)
                request.future.set_exception(RedisUnavailable(f"{reason} on a cluster node"))
            elif reason.startswith("ASK ") and request.slot not in self._held:
                self._ask(request, _redirect_target(reason))
            else:  # ASK behind held requests of its slot waits for them (then meets ASK again)
                self._hold(link, request, reason)
        self._schedule()

    def _ask(self, request: Request, target: str) -> None:
        """Sends a request once to the node that imports its slot; that node's link counts
        as in use for ``_ASK_TARGET_KEEP_S`` even though it may own no slot yet."""
        self._asked[target] = time.monotonic()
        self._link(target).submit_request(request, asking=True)
        self._retire_later()

    def _hold(self, link: CommandLink, request: Request, reason: str) -> None:
        held = self._held.get(request.slot)
        if held is None:
            held = self._held[request.slot] = _Held()
            for later in link.inflight_in_slot(request.slot, after=request):
                held.expected.add(later)
                later.future.add_done_callback(functools.partial(self._settled, later))
        held.expected.discard(request)
        held.returned.append(request)
        if reason.startswith("MOVED "):
            self._moved(request.slot, _redirect_target(reason))
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
        for address, link in self._links.items():
            for request in link.pending_requests():
                slot = request.slot
                if slot < 0 or request.future.done():
                    continue
                if slots is not None and slot not in slots:  # (one MOVED: one slot to check)
                    continue
                # No owner: the slot is held anyway until a map names one, and this runs
                # again then. The same owner: newer requests queue behind these on its link.
                if self._owners[slot] in (None, address):
                    continue
                held = self._held.get(slot)
                if held is None:
                    held = self._held[slot] = _Held()
                if request not in held.expected:  # (one handed back is in no link)
                    held.expected.add(request)
                    request.future.add_done_callback(functools.partial(self._settled, request))
        self._schedule()

    def _settled(self, request: Request, _: object = None) -> None:
        """An expected request completed on its old link: one fewer to wait for."""
        held = self._held.get(request.slot)
        if held is not None and request in held.expected:
            held.expected.discard(request)
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
                self._release_ready()
                self._fail_overdue()
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

    def _release_ready(self) -> None:
        now = time.monotonic()
        for slot, held in list(self._held.items()):
            owner = self._owners[slot]
            if owner is None or held.expected or held.not_before > now:
                continue
            del self._held[slot]
            link = self._link(owner)
            for request in (*held.returned, *held.newer):
                if not request.future.done():
                    link.submit_request(request)

    def _fail_overdue(self) -> None:
        """Fails requests past their deadline and forgets slots left with nothing to send."""
        now = time.monotonic()
        error: RedisUnavailable | None = None
        for slot, held in list(self._held.items()):
            for request in (*held.returned, *held.newer):
                if request.deadline <= now and not request.future.done():
                    waited = now - request.deadline + self._settings.failover_timeout_s
                    error = error or give_up(
                        self.describe(), self._settings, waited, self._last_error
                    )
                    request.future.set_exception(error)
            if all(r.future.done() for r in (*held.returned, *held.newer, *held.expected)):
                del self._held[slot]

    async def _try_refresh(self) -> None:
        try:
            await self._refresh_map()
        except (ConnectionLost, RedisCommandError) as err:
            logger.info("Waiting for the cluster's slot map: %s", err)
            self._last_error = str(err)

    async def _still_owner(self, link: CommandLink) -> bool:
        """Asks the other nodes whether ``link``'s node still owns what it was sent."""
        address = next((a for a, candidate in self._links.items() if candidate is link), None)
        if address is None:  # retired: it owns no slot
            return False
        await self._refresh_map(exclude=address)
        return all(self._owners[slot] == address for slot in link.inflight_slots())

    # -- the slot map ----------------------------------------------------------------------------

    async def _refresh_map(self, exclude: str | None = None) -> None:
        """Reads the slot map from every reachable node and keeps what most of them say.

        Right after a failure nodes disagree for a moment: a master restarted from its old
        configuration still claims slots its replica took over meanwhile, until it learns
        better from its peers. The majority has the current view.
        """
        candidates = [e for e in self._candidates() if _address(e.host, e.port) != exclude]
        answers, quorum_s = await self._ask_all(candidates)
        maps = [
            _parse_slots(endpoint, answer)
            for endpoint, answer in answers.items()
            if isinstance(answer, list)
        ]
        if not maps:
            errors = "; ".join(f"{where.describe()}: {answer}" for where, answer in answers.items())
            raise ConnectionLost(f"no cluster node gave its slot map ({errors})")
        self._apply_map(_majority(maps), quorum_s)

    async def _ask_all(
        self, candidates: list[Endpoint]
    ) -> tuple[dict[Endpoint, object], float | None]:
        """Each candidate's ``CLUSTER SLOTS`` reply or error, and how long it took most of
        them to answer, with a map among the answers (None: they never did); those still
        due ``_MAP_ANSWER_WINDOW_S`` later are left out (their reads cancelled). Not fewer:
        the majority of maps is what outvotes a restarted master still claiming its old
        slots."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        asked = {asyncio.ensure_future(self._ask_slots(node)): node for node in candidates}
        answers: dict[Endpoint, object] = {}
        pending, closes_at = set(asked), None
        try:
            while pending:
                timeout = None if closes_at is None else max(closes_at - loop.time(), 0.0)
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break  # the window closed
                for task in done:
                    error = task.exception()
                    answers[asked[task]] = error if error is not None else task.result()
                mapped = any(not isinstance(answer, BaseException) for answer in answers.values())
                if closes_at is None and mapped and 2 * len(answers) > len(candidates):
                    closes_at = loop.time() + _MAP_ANSWER_WINDOW_S
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                for task in pending:
                    if not task.cancelled():
                        task.exception()  # retrieved: no "never retrieved" log line
        quorum_s = None if closes_at is None else closes_at - _MAP_ANSWER_WINDOW_S - started
        return answers, quorum_s

    def _candidates(self) -> list[Endpoint]:
        known = [*self._links, *(a for a in self._former if a not in self._links)]
        startup = [e for e in self._startup if _address(e.host, e.port) not in known]
        return [self._endpoint(address) for address in known] + startup

    async def _ask_slots(self, endpoint: Endpoint) -> list[list[object]]:
        client = await open_client(endpoint, self._settings.connect_timeout_s)
        try:
            auth = self._settings.credentials.auth_command()
            commands = [*([auth] if auth else []), ("CLUSTER", "SLOTS")]
            timeout_s = self._settings.reply_timeout_s
            replies = await all_replies(client, commands, timeout_s, endpoint=endpoint)
            return cast(list[list[object]], replies[-1])
        finally:
            assert client.protocol is not None
            await client.protocol.aclose()

    def _apply_map(self, owners: list[str | None], quorum_s: float | None) -> None:
        """Takes a new map; tells the layer only when a master appeared (a promoted replica,
        or a node added), which may lack the last writes. Slots migrated between masters
        lose nothing: MIGRATE moves each key whole, so re-asserting and writing again would
        only cost (seen: 62 times the last 2 s of writes during one reshard, overflowing
        capacity). A master that left gave its slots to others, which appear or migrated."""
        slot_map = SlotMap.of(owners)
        changed = self._mapped and not slot_map.masters <= self._masters
        moved = owners != self._owners
        self._take_map(slot_map)
        self._mapped, self._hinted = True, frozenset()
        self._remember(slot_map, quorum_s)
        if moved:
            self._hold_behind_old_links()
        masters = sorted(slot_map.masters)
        self._stats.master = f"{len(masters)} masters: {', '.join(masters)}"
        self._retire_soon()
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

    def master_addresses(self) -> list[str]:
        return sorted({o for o in self._owners if o})

    # -- links -----------------------------------------------------------------------------------

    def _link(self, address: str) -> CommandLink:
        link = self._links.get(address)
        if link is None:
            locator = FixedLocator(self._endpoint(address), kind="cluster node")
            link = CommandLink(
                locator,
                self._settings,
                self._connected,
                self._stats,
                hand_back=self._handed_back,
                verify=self._still_owner,
                routed_because=lambda: self._last_error,
                patience=functools.partial(self._patience_for, address),
            )
            self._links[address] = link
            self._former.pop(address, None)
        return link

    def _patience_for(self, address: str) -> float | None:
        """How long a connection to ``address`` may take: ``HINT_PATIENCE_S`` while only
        another event loop's map names it (a master frozen and replaced meanwhile would hold
        the handshake for reply_timeout); then the link hands its requests back, and the
        router reads the map. A node this router's own map names gets the full timeouts."""
        return HINT_PATIENCE_S if address in self._hinted else None

    def _retire_soon(self) -> None:
        """Closes, in the background, the links to nodes the slot map no longer names: after
        a failover the old master comes back as a replica, a reshard may empty a master, and
        the process must keep a few connections, not one to every node it ever used."""
        if self._closed:
            return
        if self._retiring is None and self._stale_links():
            self._retiring = asyncio.get_running_loop().create_task(self._retire_links())
        self._retire_later()

    def _retire_later(self) -> None:
        """Looks again when the first ASK target kept now may be idle, even if no map read
        comes. A timer already set is early enough: every ASK extends a target's keep."""
        if self._retire_timer is not None or self._closed:
            return
        now, unmapped = time.monotonic(), self._unmapped()
        self._asked = {a: at for a, at in self._asked.items() if self._resting(a, now)}
        kept = [at for address, at in self._asked.items() if address in unmapped]
        if kept:
            delay_s = min(kept) + _ASK_TARGET_KEEP_S - now
            loop = asyncio.get_running_loop()
            self._retire_timer = loop.call_later(delay_s, self._retire_now)

    def _retire_now(self) -> None:
        self._retire_timer = None
        self._retire_soon()

    def _resting(self, address: str, now: float) -> bool:
        """Whether the node took an ASK redirection less than ``_ASK_TARGET_KEEP_S`` ago."""
        asked = self._asked.get(address)
        return asked is not None and now - asked < _ASK_TARGET_KEEP_S

    def _unmapped(self) -> list[str]:
        # _masters, not _owners: a slot whose owner went missing leaves it None, and its
        # master may come back; a master named by MOVED is in _masters until the next map.
        return [address for address in self._links if address not in self._masters]

    def _stale_links(self) -> list[tuple[str, CommandLink]]:
        """The links to retire: to nodes that own no slot and took no ASK lately."""
        now = time.monotonic()
        unmapped = [a for a in self._unmapped() if not self._resting(a, now)]
        return [(address, self._links[address]) for address in unmapped]

    async def _retire_links(self) -> None:
        """Retires each stale link once it has nothing unsettled. Its requests must be
        answered or handed back first: a slot held for them waits on this link."""
        try:
            for _ in range(_MAX_RETIRE_ROUNDS):
                idle: list[CommandLink] = []
                busy: list[asyncio.Future[object]] = []
                for address, link in self._stale_links():
                    unsettled = link.unsettled()
                    if unsettled:
                        busy += unsettled
                    else:
                        idle.append(link)
                        self._retire(address, link)
                if not idle and not busy:
                    return
                for link in idle:
                    await link.close(self._settings.reply_timeout_s)
                    self._retired.discard(link)
                if busy:
                    await asyncio.wait(busy, timeout=_RETIRE_CHECK_S)
        finally:
            self._retiring = None

    def _retire(self, address: str, link: CommandLink) -> None:
        """Takes the link out of routing (a request for its node gets a fresh link), and
        keeps asking its node for the slot map."""
        del self._links[address]
        self._asked.pop(address, None)
        self._retired.add(link)
        self._former.pop(address, None)
        self._former[address] = None
        while len(self._former) > _MAX_FORMER_NODES:
            del self._former[next(iter(self._former))]
        logger.info(
            "Closing the connection to %s, which serves no slot now",
            address,
            extra={"event": "link_retired", "node": address},
        )

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
        for timer in (self._retire_timer, self._read_timer):
            if timer is not None:
                timer.cancel()
        for task in (self._dispatching, self._refreshing, self._retiring):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        for held in self._held.values():
            for request in (*held.returned, *held.newer):
                if not request.future.done():
                    request.future.set_exception(RedisUnavailable("the channel layer was closed"))
        self._held.clear()
        await self._close_links(deadline)

    async def _close_links(self, deadline: float) -> None:
        closed: set[CommandLink] = set()
        for _ in range(_MAX_CLOSE_ROUNDS):  # a reader's unblock may still open a link
            links = (*self._links.values(), *self._retired)
            left = [link for link in links if link not in closed]
            if not left:
                break
            for link in left:
                await link.close(max(deadline - time.monotonic(), 0.0))
                closed.add(link)

    def _unsettled(self) -> list[asyncio.Future[object]]:
        held = [r.future for h in self._held.values() for r in (*h.returned, *h.newer)]
        links = (*self._links.values(), *self._retired)
        linked = [future for link in links for future in link.unsettled()]
        return [future for future in (*held, *linked) if not future.done()]


def _majority(maps: list[list[str | None]]) -> list[str | None]:
    """The map most nodes gave; failing a majority, each slot's most named owner."""
    counted = Counter(tuple(owners) for owners in maps)
    (common, votes), *_ = counted.most_common(1)
    if votes * 2 > len(maps) or len(counted) == 1:
        return list(common)
    by_slot = zip(*maps, strict=True)
    return [_most_named(owners) for owners in by_slot]


def _most_named(owners: tuple[str | None, ...]) -> str | None:
    named = Counter(owner for owner in owners if owner is not None)
    return named.most_common(1)[0][0] if named else None


def _parse_slots(asked: Endpoint, reply: list[list[object]]) -> list[str | None]:
    """``CLUSTER SLOTS`` as the owner (``host:port``) of each slot."""
    owners: list[str | None] = [None] * SLOTS
    for start, end, master, *_ in reply:
        host, port = cast(list[bytes], master)[:2]
        first, last = cast(int, start), cast(int, end)
        owners[first : last + 1] = [_address(host.decode() or asked.host, int(port))] * (
            last - first + 1
        )
    return owners


def _address(host: str, port: int) -> str:
    return f"{host}:{port}"


def _redirect_target(reply: str) -> str:
    """``MOVED 3999 127.0.0.1:6381`` -> ``127.0.0.1:6381``."""
    return reply.split()[2]
