"""Everything the layer does on one event loop.

Connections and futures belong to an event loop, and a Django process can have several: the
ASGI server's, plus a short-lived one for every ``async_to_sync`` call made outside it. Each
loop gets a session. A session owns its tasks: when the loop shuts down (``asyncio.run``
cancels what is left) or the layer is closed, the session stops its readers, puts messages
it popped but did not deliver back into Redis, and closes its connections.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, NamedTuple, cast

from channels.exceptions import ChannelFull

from ._buffers import ChannelBuffer, Item, now_ms
from ._cluster import ClusterRouter, slot_of
from ._codec import encode_element, expires_of
from ._constants import (
    BUFFER_SWEEP_INTERVAL_S,
    CLOSE_RETURN_TIMEOUT_S,
    EPOCH_CHECK_INTERVAL_S,
    FAILURE_LOG_INTERVAL_S,
    FLUSH_GROUP_BATCH,
    FLUSH_SCAN_COUNT,
    RESTART_GRACE_S,
    RESTART_NOTICE_WINDOW_S,
)
from ._core import LayerCore
from ._delivery import Deliveries, target_of
from ._epochs import Epochs
from ._fanout import Plan, Target
from ._keys import wake_stream
from ._link import CommandLink
from ._normal_reader import InFlight
from ._reader import BlockingReader
from ._recovery import (
    Reassertion,
    check_epoch,
    forget_ended,
    log_failure,
    note_data_loss,
    reassert,
    recovered,
    watch_epochs,
)
from ._replay import Replayable
from ._resp import Arg, pack
from ._scripts import (
    GROUP_ADD,
    GROUP_DISCARD,
    GROUP_FLUSH,
    GROUP_MEMBERS,
    GROUP_PUSH,
    PUSH,
    RETURN,
)
from ._sequence import SendSequences
from ._server import ServerInfo
from ._shard import ShardConnections
from ._throttle import LogThrottle
from .exceptions import RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.layer")

_FULL = 0  # a PUSH status: the list is at capacity
_MAX_SCAN_ROUNDS = 1_000_000
_MAX_GROUP_FLUSH_CALLS = 100_000  # of FLUSH_GROUP_BATCH members each
_MAX_FLUSH_ROUNDS = 1_000  # bounded by failover_timeout first: a failover or two
_FLUSH_RETRY_S = 0.1
_MAX_SETTLE_ROUNDS = 3  # pops waited for before a give-back (see _pops_settled)
_MAX_PUSH_ATTEMPTS = 10  # PUSH+WAIT pairs split by a reconnect, before settling
_GROUPS_SEEN_REMEMBERED = 10_000  # see LayerCore.groups_with_members
_LIMIT_REFRESH_S = 3.0  # an unchanged inbox limit is published again this often
_LIMIT_TTL_MS = 10_000  # and expires this long after the process stops publishing it


def _push_request(keys: list[str], header: tuple[int, ...], args: list[Any]) -> bytes:
    """An EVALSHA of the PUSH script over ``keys`` (list and aux key per target)."""
    keys = _with_wakes(keys, args)
    return pack("EVALSHA", PUSH.sha, len(keys), *keys, *header, *args)


def _with_wakes(keys: list[str], args: list[Any]) -> list[str]:
    """The KEYS of a PUSH: ``keys``, then the wake stream of each normal-channel target."""
    kinds = args[3::4]
    if "c" not in kinds:  # process inboxes only: the hot path of group_send
        return keys
    return keys + [wake_stream(keys[2 * i]) for i, kind in enumerate(kinds) if kind == "c"]


PushParts = tuple[list[str], tuple[int, ...], list[Any]]  # _push_request's arguments
Return = tuple[int, str, list[bytes], str]  # shard, list, elements, return id


def _to_replay(
    written: Replayable, parts: PushParts | None, statuses: list[int]
) -> Replayable | None:
    """What a replay may write of a PUSH: not the targets it found full. Their messages were
    refused (ChannelFull, or skipped by group_send); written again once there is room, they
    would arrive after all, and after newer ones."""
    if _FULL not in statuses:
        return written
    kept = [i for i, status in enumerate(statuses) if status != _FULL]
    if parts is None or not kept:
        return None  # (a request without its parts has one target)
    keys, header, args = parts
    return functools.partial(
        _push_request,
        [key for i in kept for key in keys[2 * i : 2 * i + 2]],
        header,
        [arg for i in kept for arg in args[4 * i : 4 * i + 4]],
    )


class PreparedPush(NamedTuple):
    shard: int  # its index in the layer's hosts
    link: Link
    packed: bytes  # the EVALSHA PUSH request
    key: str  # the list it writes, which routes it on Cluster


Link = CommandLink | ClusterRouter


class Session:
    """The layer's state and connections on one event loop."""

    def __init__(self, core: LayerCore, client_prefix: str) -> None:
        self.core = core
        self.client_prefix = client_prefix
        self.sender = secrets.token_hex(8)
        self._seqs = SendSequences(self.sender, core.dedupe_memory_s / 2)
        self._wait_ms = int(core.replica_ack_timeout_s * 1000)
        self._shards = [
            ShardConnections(
                spec, core.shard_stats[spec.index], self._server_seen, self._topology_changed
            )
            for spec in core.shards
        ]
        self.deliveries = Deliveries(core)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Re-assertions under way: cancelled first at close, which need not wait for them.
        self._reassertions: set[asyncio.Task[None]] = set()
        self._unreturned: list[Return] = []  # RETURNs that failed, tried again at each sweep
        self._closing: asyncio.Future[None] | None = None
        # Closed because its event loop is shutting down: a consumer's clean-up running
        # after that must not open a new session that nothing would close.
        self.ended_with_loop = False
        self._epochs = Epochs(core.epochs)  # (shard, master) -> (epoch key, value) seen last
        self._limits: dict[str, tuple[int, float]] = {}  # inbox -> (limit, published at)
        self._readers: dict[tuple[int, bool], BlockingReader] = {}
        self._loop = asyncio.get_running_loop()
        self._swept_at = time.monotonic()
        self._upkeep_failures = LogThrottle(FAILURE_LOG_INTERVAL_S)
        # A sync call (async_to_sync) is a session of milliseconds that never reaches its
        # first upkeep tick: the process-wide sweep, when due, runs here too.
        self._sweep_process()
        self._keeper = self._loop.create_task(self._keep())

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def buffered(self) -> int:
        """Messages that reached this process and wait for their receiver."""
        return self.deliveries.buffered()

    # -- sending -----------------------------------------------------------------------------

    def prepare_send(self, channel: str, message: dict[str, Any]) -> PreparedPush:
        """The PUSH request of one send and where it goes (a retry re-sends the bytes)."""
        core = self.core
        target = target_of(channel)
        key, aux, kind = self._target_keys(channel, target)
        now = now_ms()
        sender, seq = self._seqs.next(key)
        if kind == "c":
            aux = core.keys.dedupe(channel, sender)
        element = encode_element(
            now + core.expiry_ms, sender, seq, channel, core.codec.dumps(message)
        )
        target_args = (core.capacity_of(channel), seq, element, kind)
        header = self._push_header(now)
        if kind == "i":
            packed = pack("EVALSHA", PUSH.sha, 2, key, aux, *header, *target_args)
        else:
            packed = pack("EVALSHA", PUSH.sha, 3, key, aux, wake_stream(key), *header, *target_args)
        index = core.shard_index(target)
        return PreparedPush(index, self._shards[index].link, packed, key)

    def _target_keys(self, channel: str, target: str) -> tuple[str, str, str]:
        """(list, aux key, kind) of a PUSH target; see the PUSH script. A normal channel's
        aux key, its de-duplication record, depends on the sender name its number counts
        under: "" here, set with the number."""
        keys = self.core.keys
        if "!" in channel:  # copies are recognised by the one receiving process
            return keys.inbox(target), keys.inbox_limit(target), "i"
        return keys.channel(channel), "", "c"

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        push = self.prepare_send(channel, message)
        statuses = await self._push(push.shard, push.packed, push.key)
        if statuses is not None and statuses[0] == _FULL:
            raise ChannelFull(channel)
        self.core.stats.sent += 1

    def _push_header(self, now: int) -> tuple[int, ...]:
        core = self.core
        return (core.expiry_ms, now, core.dedupe_ttl_ms)

    async def _push(
        self,
        index: int,
        packed: bytes,
        key: str,
        replayed: Replayable | None = None,
        parts: PushParts | None = None,
    ) -> list[int] | None:
        """A PUSH, then WAIT if replica_acks asks for it, as one unit: WAIT counts the writes
        of its own connection, so if a reconnect came between them, both go again (the
        second PUSH is recognised as a copy). ``replayed`` is what a replay writes, if not
        ``packed``, and ``parts`` what it was made of (for a PUSH of several targets). A
        GROUP_PUSH that found its plan stale returns None, having written nothing."""
        acks, link = self.core.replica_acks, self._shards[index].link
        for _ in range(_MAX_PUSH_ATTEMPTS):
            connection = link.connection_of(key)
            statuses = cast("list[int] | None", await link.submit_packed(packed, key))
            if statuses is None:
                return None
            to_replay = _to_replay(packed if replayed is None else replayed, parts, statuses)
            if to_replay is not None:
                self.core.recent[index].add(key, to_replay, len(packed))
            if not acks:
                return statuses
            patience_s = self.core.replica_ack_timeout_s  # WAIT takes that long on purpose
            wait = link.submit("WAIT", acks, self._wait_ms, key=key, patience_s=patience_s)
            acked = cast(int, await wait)
            if link.connection_of(key) == connection:
                break
        if acked < acks:
            self._note_shortfall(acked)
        return statuses

    def _note_shortfall(self, acked: int) -> None:
        self.core.stats.replica_ack_shortfalls += 1
        logger.warning(
            "Only %d of %d replicas acknowledged a message within %d ms",
            acked,
            self.core.replica_acks,
            self._wait_ms,
            extra={"event": "replica_ack_shortfall"},
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        core = self.core
        core.stats.group_sends += 1  # every call, empty groups included
        body, now = core.codec.dumps(message), now_ms()
        seqs: dict[str, tuple[str, int]] = {}  # list -> (sender, number), kept across attempts
        plan = core.fanout.tokened(group)
        if plan is not None:
            statuses = await self._push_if_members_unchanged(group, plan, body, now, seqs)
            if statuses is not None:
                self._log_over_capacity(group, [statuses], len(plan.members))
                self._seen_with_members(group)
                return
            core.fanout.distrust(group, plan)
        members, token = await self._members(group)
        if not members:
            return
        home = core.shard_index(group)
        unit = None if self._shards[home].router else (home, 0)  # see _push_if_members_unchanged
        targets = core.fanout.targets(group, members, self._group_targets, token, unit)
        units = self._push_arguments(targets, body, now, seqs)
        header = self._push_header(now)
        results = await asyncio.gather(
            *(
                self._push(
                    index, _push_request(keys, header, args), keys[0], parts=(keys, header, args)
                )
                for (index, _), (keys, args) in units.items()
            )
        )
        self._log_over_capacity(group, results, len(members))

    def _log_over_capacity(
        self, group: str, results: Sequence[list[int] | None], members: int
    ) -> None:
        full = sum(statuses.count(_FULL) for statuses in results if statuses)
        if full:
            logger.info("%d of %d targets of group %s over capacity", full, members, group)

    async def _push_if_members_unchanged(
        self, group: str, plan: Plan, body: bytes, now: int, seqs: dict[str, tuple[str, int]]
    ) -> list[int] | None:
        """One round trip instead of two: the PUSH of a remembered plan, done by the server
        only if the group's membership token is still the one the plan was made from. None
        when it is not (nothing was pushed)."""
        core = self.core
        (((index, _), (keys, args)),) = self._push_arguments(plan.targets, body, now, seqs).items()
        header = self._push_header(now)
        group_key, token_key = core.keys.group_keys(group)
        token = cast(str, plan.token)  # FanoutPlans.tokened() returns plans with one
        cutoff = time.time() - core.group_expiry_s
        push_keys = _with_wakes(keys, args)
        packed = pack(
            "EVALSHA", GROUP_PUSH.sha, len(push_keys) + 2, group_key, token_key, *push_keys,
            token, cutoff, *header, *args,
        )  # fmt: skip
        # A replay writes the plain PUSH: the token may be gone by then.
        unguarded = functools.partial(_push_request, keys, header, args)
        return await self._push(index, packed, group_key, unguarded, (keys, header, args))

    async def _members(self, group: str) -> tuple[list[bytes], str | None]:
        """The group's live members, and their membership token (None: no such group, or
        Cluster, where no plan can use one)."""
        core = self.core
        shard = self._shards[core.shard_index(group)]
        for attempt in range(2):
            changes = shard.stats.server_changes
            await recovered(shard)
            members, token = await self._read_members(shard, group)
            if members:
                self._seen_with_members(group)
            elif not attempt and await self._emptied_by_data_loss(shard, group):
                continue  # read again once the memberships had time to be re-asserted
            if shard.stats.server_changes == changes:
                break  # no new server run meanwhile: the list is not from before a loss
        core.stats.group_member_reads += 1
        return members, token

    def _seen_with_members(self, group: str) -> None:
        seen = self.core.groups_with_members
        seen.pop(group, None)  # to the end: the oldest go first
        seen[group] = time.time()
        if len(seen) > _GROUPS_SEEN_REMEMBERED:
            with suppress(RuntimeError, StopIteration, KeyError):  # other threads race here
                del seen[next(iter(seen))]

    async def _emptied_by_data_loss(self, shard: ShardConnections, group: str) -> bool:
        """Whether a group reads empty because the data began again since this process
        (in any event loop: async_to_sync makes one per call) last knew it with members, or,
        shortly after a new server run, since the epoch the process knew.

        A ``FLUSHALL`` or ``FLUSHDB`` (a cache's ``clear()`` on a shared database) loses the
        data without a reconnect that would notice, and the periodic epoch check may be a
        second away, or, in a short-lived event loop, have nothing to compare with: a
        group_send meanwhile would go to nobody. So read the epoch of the group's master:
        missing, or begun after the members were last seen, the data began again. A group
        that emptied in the ordinary way costs one GET, once.

        The record of the group is read, not taken: concurrent calls (one event loop per
        thread) read the empty group together, and each must wait for the re-assertion,
        not only the first (seen: 4 of 16 group_sends from threads went to nobody)."""
        seen, stats = self.core.groups_with_members, shard.stats
        known_at = seen.get(group)
        lately = stats.last_server_change is not None and (
            time.time() - stats.last_server_change < RESTART_NOTICE_WINDOW_S
        )
        if known_at is None and not lately:
            return stats.recovering_until > time.time()  # a loss noticed since the read
        where = shard.epoch_key_beside(self.core.keys, self.core.keys.group(group))
        if where is None:
            return False
        node, key = where
        try:
            value = cast("bytes | None", await shard.link.submit("GET", key, key=key))
        except (RedisUnavailable, RedisCommandError) as err:
            logger.debug("Epoch read failed: %s", err)
            return False  # the member read itself succeeded: send to what it found
        now = time.time()
        if value is None:
            shard.link.submit("SET", key, now_ms(), "NX", key=key).add_done_callback(log_failure)
        began_s = now if value is None else int(value) / 1000
        mark = (shard.spec.index, node)
        if known_at is not None:
            lost = began_s >= known_at  # else the data began before: the group emptied
        else:  # a group this process never sent to: compare with the epoch it knew
            last = self._epochs.get(mark)
            lost = last is not None and last[0] == key and last[1] not in (None, value)
        if lost and stats.recovering_until < began_s + RESTART_GRACE_S:  # news to the process
            note_data_loss(shard, began_s)
            self._epochs[mark] = (key, value)  # after: see _recovery._compare
            self._reassert(shard)
            self._replay(shard)
        recovering = stats.recovering_until > time.time()
        if known_at is not None and not recovering and seen.get(group) == known_at:
            seen.pop(group, None)  # empty the ordinary way, or since the loss: no more GETs
        return recovering

    async def _read_members(
        self, shard: ShardConnections, group: str
    ) -> tuple[list[bytes], str | None]:
        core = self.core
        key, cutoff = core.keys.group(group), time.time() - core.group_expiry_s
        if shard.router:  # a plain read: cheaper than the script, whose token goes unused
            reply = await shard.link.submit("ZRANGE", key, f"({cutoff}", "+inf", "BYSCORE", key=key)
            return cast(list[bytes], reply), None
        args = (cutoff, secrets.token_hex(8))
        token, members = cast(
            "tuple[bytes | None, list[bytes]]",
            await shard.link.submit_script(GROUP_MEMBERS, core.keys.group_keys(group), args),
        )
        return members, None if token is None else token.decode()

    def _group_targets(self, members: list[str]) -> list[Target]:
        """One target per process inbox and one per normal channel of the members."""
        core = self.core
        by_target: dict[str, list[str]] = {}  # inbox or normal channel -> member channels
        for channel in members:
            by_target.setdefault(target_of(channel), []).append(channel)
        targets = []
        for target, channels in by_target.items():
            key, aux, kind = self._target_keys(channels[0], target)
            named: str | list[str] = channels[0] if len(channels) == 1 else channels
            capacity = max(core.capacity_of(channel) for channel in channels)
            targets.append(Target(self._unit(target, key), key, aux, kind, named, capacity))
        return targets

    def _push_arguments(
        self, targets: list[Target], body: bytes, now: int, seqs: dict[str, tuple[str, int]]
    ) -> dict[tuple[int, int], tuple[list[str], list[Any]]]:
        """The targets batched into one PUSH per shard, or per slot on Cluster (a script's
        keys must share a slot there): its keys and the arguments after the header. The link
        pipelines the PUSHes of one node, so a group costs one round trip per node.

        A list keeps the sequence number ``seqs`` gave it in an earlier attempt: a retried
        request may have landed after all, and its copy must be recognised as one."""
        expires = now + self.core.expiry_ms
        units: dict[tuple[int, int], tuple[list[str], list[Any]]] = {}
        for target in targets:
            keys, args = units.setdefault(target.unit, ([], []))
            numbered = seqs.get(target.key)
            if numbered is None:
                numbered = seqs[target.key] = self._seqs.next(target.key)
            sender, seq = numbered
            aux = target.aux
            if target.kind == "c":  # a normal channel: named, and its record, by sender
                aux = self.core.keys.dedupe(cast(str, target.named), sender)
            element = encode_element(expires, sender, seq, target.named, body)
            keys += [target.key, aux]
            args += [target.capacity, seq, element, target.kind]
        return units

    def _unit(self, target: str, key: str) -> tuple[int, int]:
        """(shard, slot): what one PUSH may cover; the slot matters only on Cluster."""
        index = self.core.shard_index(target)
        return index, slot_of(key) if self._shards[index].router else 0

    # -- groups ------------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        core = self.core
        link = self._shards[core.shard_index(group)].link
        args = (time.time(), core.group_expiry_s, secrets.token_hex(8), "join", channel)
        with self._joining(group, channel):
            reply = await link.submit_script(GROUP_ADD, core.keys.membership_keys(group), args)
            (cleared,) = cast(list[bytes], reply)
            if cleared:
                core.memberships.cleared_record(group, channel, cleared.decode())

    def _joining(self, group: str, channel: str) -> AbstractContextManager[None]:
        """Records the membership for re-assertion, unless the channel is another layer's
        process-specific one (a view adding a consumer's channel): only the layer that made
        it receives on it, so it is never live here and never re-asserted from here. Kept,
        such records only grew until group_expiry (one per call, never swept in a process
        without a long-lived event loop) and made every event loop check epochs for
        nothing."""
        if "!" in channel and not self._owns(channel):
            return nullcontext()
        return self.core.memberships.joining(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        core = self.core
        core.memberships.discarded(group, channel)
        link = self._shards[core.shard_index(group)].link
        # The discard is recorded, so that a re-assertion does not undo it. Another
        # process's channel (or a normal one, which any process may receive on and have
        # joined) for group_expiry: its process re-asserts the membership until it hears of
        # the discard. This process's own forgot the membership above, but a re-assertion on
        # another event loop may have read it before and write after: for failover_timeout,
        # the longest its GROUP_ADD can take to reach Redis (what every disconnect records
        # thus costs nothing lasting).
        kept_s = core.failover_timeout_s if self._owns(channel) else core.group_expiry_s
        args = (channel, secrets.token_hex(8), time.time(), kept_s)
        await link.submit_script(GROUP_DISCARD, core.keys.membership_keys(group), args)

    def _owns(self, channel: str) -> bool:
        """Whether ``channel`` is a process-specific channel of this layer."""
        local = channel.find("!")
        return local >= 0 and channel[:local].endswith(self.client_prefix)

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, channel: str) -> dict[str, Any]:
        # The hot path of every delivery: written out flat, since each call and frame here
        # is paid once per message by every consumer.
        core = self.core
        buffer = self.deliveries.buffer(channel)
        item = buffer.take_fresh() if buffer.items else None
        if item is None:
            wake = buffer.wake_reader
            if wake is None:
                wake = buffer.wake_reader = self._reader(buffer.shard, buffer.specific).wake
            waiter: asyncio.Future[Item] = self._loop.create_future()
            buffer.waiters.append(waiter)  # before waking the reader, whose keys count waiters
            if self.deliveries.enter(buffer) or not buffer.specific:
                wake()
            received = False
            try:
                item = await waiter
                received = True
            except asyncio.CancelledError:
                buffer.abandon(waiter)  # passes on a message handed over meanwhile
                raise
            finally:
                self._stop_waiting(channel, buffer, wake, received)
        else:
            core.memberships.touch(channel)
        core.stats.received += 1
        return core.codec.loads(item[1])

    def _stop_waiting(
        self,
        channel: str,
        buffer: ChannelBuffer,
        wake: Callable[[], None],
        received: bool,
    ) -> None:
        # Whatever ends the wait (a message, a cancellation, RedisUnavailable), the channel
        # stays live for a while: its consumer may well receive again.
        self.core.memberships.touch(channel)
        if received:
            buffer.handed_over -= 1  # resumed with the message it was handed
        last = self.deliveries.leave(buffer)
        if not buffer.specific:
            if last:
                wake()  # the channel's reader: stop popping what nobody awaits
            self._return_stranded([channel])

    def _reader(self, index: int, specific: bool) -> BlockingReader:
        reader = self._readers.get((index, specific))
        if reader is None:
            reader = self._readers[(index, specific)] = self._start_reader(index, specific)
        return reader

    def _start_reader(self, index: int, specific: bool) -> BlockingReader:
        shard, deliveries = self._shards[index], self.deliveries

        def fail(error: Exception) -> None:
            deliveries.fail_waiters(index, error, specific)

        core = self.core
        if specific:
            # Every inbox of this process shares one slot: its tag is the client prefix.
            slot = slot_of(core.keys.inbox(f"x.{self.client_prefix}!"))
            return shard.reader(deliveries.inbox_keys(index), self._deliver, fail, slot)
        slot = slot_of(core.keys.channel("any"))  # every normal channel shares one slot
        # Kept as long as its messages may wait, and at least as long as a failover may take.
        ttl_ms = int(max(core.expiry_s, core.failover_timeout_s) * 1000)
        in_flight = InFlight(core.keys.in_flight(secrets.token_hex(8)), ttl_ms)
        keys = deliveries.normal_keys(index)
        return shard.reader(keys, self._deliver, fail, slot, in_flight)

    def _deliver(self, key: str, elements: list[bytes]) -> None:
        touched = self.deliveries.deliver(key, elements)
        if touched:
            self._return_stranded(touched)

    def _return_stranded(self, channels: Iterable[str]) -> None:
        """Normal-channel messages that reached this process after its receivers left
        belong to whichever process receives next: put them back."""
        stranded = self.deliveries.stranded(channels)
        if stranded:
            self._spawn(self._return_to_redis(stranded))

    async def _return_to_redis(self, channels: Iterable[str]) -> None:
        """Pushes buffered messages back to the head of their list, order kept.

        The channel's pops in flight are waited for first: what they bring is newer than the
        buffered messages and goes back with them, behind them. A RETURN of its own would put
        it at the head, in front of them. And until the RETURN is done, this process does not
        pop those channels again (``Deliveries.take_returnable``): a new receive() would take
        the next message ahead of the ones on their way back.
        """
        channels = list(channels)
        await self._pops_settled(channels)
        return_id = secrets.token_hex(8)  # the elements' sender, and their markers' name
        returned, gated = self.deliveries.take_returnable(channels, return_id)
        try:
            await self._give_back([(i, k, e, return_id) for (i, k), e in returned.items()])
        finally:
            self.deliveries.returned(gated)

    async def _pops_settled(self, channels: list[str]) -> None:
        """Waits, for each normal channel with messages to give back, until no pop in flight
        can bring more of it. Another pop covers it again only if a receiver waited there
        meanwhile, which took the buffered messages: a few rounds at most."""
        core = self.core
        for channel in channels:
            reader = (
                None if "!" in channel else self._readers.get((core.shard_index(channel), False))
            )
            if reader is None:
                continue
            key = core.keys.channel(channel)
            for _ in range(_MAX_SETTLE_ROUNDS):
                if not self.deliveries.stranded([channel]) or not await reader.settled(key):
                    break

    async def _give_back(self, returns: list[Return]) -> None:
        """RETURNs; one that fails (OOM, NOPERM, no master past failover_timeout) is kept
        and tried again at the next sweep, under the same id: if it did land after all, its
        marker makes the retry a no-op. Delivering it here instead could duplicate it."""
        try:
            results = await asyncio.gather(
                *(self._push_front(*each) for each in returns), return_exceptions=True
            )
        except asyncio.CancelledError:  # close() cancelled: kept, so that it is logged
            self._unreturned.extend(returns)
            raise
        for each, result in zip(returns, results, strict=True):
            if isinstance(result, (RedisCommandError, RedisUnavailable)):
                self._unreturned.append(each)
                logger.warning(
                    "Could not give %d message(s) back to %s (%s); trying again in %.0f s",
                    len(each[2]),
                    each[1],
                    result,
                    BUFFER_SWEEP_INTERVAL_S,
                    extra={"event": "return_failed"},
                )
            elif isinstance(result, BaseException):
                raise result

    def _retry_returns(self) -> None:
        retry, self._unreturned = self._unreturned, []
        now = now_ms()
        fresh = [
            (index, key, alive, return_id)
            for index, key, elements, return_id in retry
            if (alive := [e for e in elements if expires_of(e) > now])
        ]
        if fresh:
            self._spawn(self._give_back(fresh))

    async def _push_front(
        self, index: int, key: str, elements: list[bytes], return_id: str
    ) -> None:
        """One RETURN: the list and its expiry in one step, and applied once however often
        the link writes it again after a lost reply."""
        core = self.core
        marker = core.keys.return_marker(key, return_id)
        keys = (key, marker) if core.keys.is_inbox(key) else (key, marker, wake_stream(key))
        args: list[Arg] = [core.expiry_ms, core.dedupe_ttl_ms, *elements]
        await self._shards[index].link.submit_script(RETURN, keys, args)
        logger.info("Returned %d undelivered messages to %s", len(elements), key)

    # -- failover bookkeeping ----------------------------------------------------------------

    def _server_seen(self, shard: ShardConnections, info: ServerInfo) -> None:
        stats = shard.stats
        previous = stats.master
        run = stats.observe(info, shard.node_of(info))
        if run == "same":
            return
        changed = run == "new"
        shard.add_epoch_check(check_epoch(self.core, shard, info, changed, self._epochs))
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
        self._reassert(shard)
        self._replay(shard)

    def _topology_changed(self, shard: ShardConnections) -> None:
        """Cluster slots changed owner: memberships may have been on a node that failed."""
        shard.stats.note_change()
        logger.warning(
            "The slot map of %s changed; re-asserting group memberships",
            shard.spec.locator.describe(),
            extra={"event": "new_master"},
        )
        self._reassert(shard)
        self._replay(shard)

    def _reassert(self, shard: ShardConnections) -> None:
        """Re-asserts the memberships kept on ``shard``: submitted now, their replies awaited
        in the background (see reassert); not once closing: its connections are going."""
        if self._closing is not None:
            return
        # A bug in it would otherwise go unreported, and memberships lapse at group_expiry.
        step = f"membership refresh of shard {shard.spec.index}"
        with self._step(step):
            submitted = reassert(self.core, shard)
            if submitted.batches:
                task = self._loop.create_task(self._forget_ended(step, shard, submitted))
                self._reassertions.add(task)
                task.add_done_callback(self._reassertions.discard)

    async def _forget_ended(self, step: str, shard: ShardConnections, done: Reassertion) -> None:
        with self._step(step):
            await forget_ended(self.core, shard, done)

    def _replay(self, shard: ShardConnections) -> None:
        """Writes again what this process wrote just before the failure (see ``_replay``)."""
        requests = self.core.recent[shard.spec.index].requests()
        for key, packed in requests:
            shard.link.submit_packed(packed, key).add_done_callback(log_failure)
        if requests:
            logger.info(
                "Wrote again %d recent messages on %s; receivers drop those they had",
                len(requests),
                shard.spec.locator.describe(),
                extra={"event": "replayed", "messages": len(requests)},
            )

    # -- housekeeping ------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure)

    async def _keep(self) -> None:
        """Periodic upkeep; also the hook that closes the session when its loop shuts down."""
        try:
            tick_s = min(EPOCH_CHECK_INTERVAL_S, self.core.refresh_interval_s)
            while True:
                await asyncio.sleep(tick_s)
                await self._upkeep()
        except asyncio.CancelledError:
            if self._closing is None:  # cancelled by the loop's shutdown, not by close()
                self.ended_with_loop = True
                await self.aclose()
            raise

    async def _upkeep(self) -> None:
        """One tick. Each step is guarded on its own: a bug in one must not stop the others
        (memberships would lapse at group_expiry, buffers would never be swept)."""
        with self._step("epoch check"):
            await self._check_epochs()
        with self._step("inbox limits"):
            self._publish_inbox_limits()
        if self.core.refresh_due():
            for shard in self._shards:
                self._reassert(shard)
        if time.monotonic() - self._swept_at >= BUFFER_SWEEP_INTERVAL_S:
            self._swept_at = time.monotonic()
            with self._step("sweep"):
                self._sweep()
        self._sweep_process()

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception:  # cancellation (a BaseException) still ends the upkeep
            count = self._upkeep_failures.due(name)
            if count:
                logger.error(
                    "Upkeep step %r of the channel layer failed (%d time(s) since the last "
                    "report); it runs again at the next tick",
                    name,
                    count,
                    exc_info=True,
                    extra={"event": "upkeep_failed", "step": name},
                )

    async def _check_epochs(self) -> None:
        for shard in self._shards:
            if self.core.memberships or self.core.recent[shard.spec.index]:
                await self._check_epochs_of(shard)  # (else nothing to re-assert or replay)

    async def _check_epochs_of(self, shard: ShardConnections) -> None:
        try:
            lost = await watch_epochs(self.core, shard, self._epochs)
        except (RedisUnavailable, RedisCommandError) as err:
            logger.debug("Epoch check failed: %s", err)
            return
        if lost:
            self._reassert(shard)
            self._replay(shard)

    def _sweep(self) -> None:
        """This event loop's part of the sweep (the process's is ``_sweep_process``)."""
        self._retry_returns()
        self._return_stranded(self.deliveries.sweep())
        self._seqs.forget_idle()

    def _sweep_process(self) -> None:
        if self.core.sweep_due():
            with self._step("process sweep"):
                self.core.sweep()

    def _publish_inbox_limits(self) -> None:
        """Tells senders how many messages this process's inboxes may hold: ``capacity`` per
        channel it receives on, so that a backlog (messages queued during a failover) for a
        process with many consumers is not refused as if it had one."""
        keys, now = self.core.keys, time.monotonic()
        for target, limit in self.deliveries.inbox_limits().items():
            published = self._limits.get(target)
            if published and published[0] == limit and now - published[1] < _LIMIT_REFRESH_S:
                continue
            key = keys.inbox_limit(target)
            link = self._shards[self.core.shard_index(target)].link
            link.submit("SET", key, limit, "PX", _LIMIT_TTL_MS, key=key).add_done_callback(
                log_failure
            )
            self._limits[target] = (limit, now)

    # -- flushing and closing ----------------------------------------------------------------

    async def flush(self) -> None:
        """Deletes this prefix's messages and groups; the epoch marks stay (deleting them
        would look like data loss to every process watching them).

        The other processes cannot be told, and their re-assertions must not bring back the
        memberships it deletes: a group is deleted as if each member were discarded, its
        records kept (see GROUP_FLUSH), and the discard records stay."""
        self.core.memberships.clear()  # flushed groups must not be re-asserted
        self.core.fanout.forget()  # (their tokens are gone: the plans would only be refused)
        self._forget_recent()
        for shard in self._shards:
            await self._flush_shard(shard)
        self._forget_recent()  # sends acknowledged during the scan were deleted too
        self.deliveries.clear()

    def _forget_recent(self) -> None:
        """Forgets the process's writes kept for replay (every event loop's): after flush(),
        writing them again after a failover would bring back what the application deleted."""
        for recent in self.core.recent:
            recent.clear()

    def _epoch_keys(self) -> list[tuple[str, str]]:
        return [pair for shard in self._shards for pair in shard.epoch_keys(self.core.keys)]

    async def _flush_shard(self, shard: ShardConnections) -> None:
        """SCANs every master of the shard. On Cluster a master may fail over mid-way: its
        keys are then on its replica, a master now, which a later round scans instead."""
        router = shard.router
        scanned: set[str] = set()
        deadline = time.monotonic() + shard.spec.settings.failover_timeout_s
        if router is not None and not router.mapped:
            await router.reread_map()  # a map of another event loop's may lack a new master
        for _ in range(_MAX_FLUSH_ROUNDS):
            pending = [(a, node) for a, node in shard.scan_nodes() if a not in scanned]
            if scanned and not pending:
                return  # every master the map names was scanned
            try:
                for address, node in pending:
                    await self._flush_node(node, shard.link)
                    scanned.add(address)
                    deadline = time.monotonic() + shard.spec.settings.failover_timeout_s
            except RedisUnavailable:
                if router is None or self.closed or time.monotonic() >= deadline:
                    raise  # (closed: a new link to a node would never be closed)
            else:
                if pending:
                    continue  # look again: the map may name a new master by now
            if router is None or time.monotonic() >= deadline:
                raise RedisUnavailable("flush() found no master to scan on the cluster")
            await asyncio.sleep(_FLUSH_RETRY_S)  # the map may name a failed node's successor
            await router.reread_map()
        raise RedisUnavailable("flush() found no stable set of masters to scan")

    async def _flush_node(self, node: Callable[[], CommandLink], link: Link) -> None:
        """SCANs one master; deletes through ``link``, which routes each key to its slot."""
        cursor = b"0"
        layout = self.core.keys
        pattern = layout.scan_pattern()
        kept = {key for _, key in self._epoch_keys()}
        for _ in range(_MAX_SCAN_ROUNDS):
            scan = ("SCAN", cursor, "MATCH", pattern, "COUNT", FLUSH_SCAN_COUNT)
            reply = await node().submit(*scan)
            cursor, keys = cast("tuple[bytes, list[bytes]]", reply)
            # One key per request: on Cluster, keys of one SCAN page live in different slots.
            deletes: list[Awaitable[Any]] = []
            for key in (raw.decode() for raw in keys):
                group = layout.group_of(key)
                if group is not None:
                    deletes.append(self._flush_group(group, link))
                elif key not in kept and not layout.is_group_discards(key):
                    deletes.append(link.submit("UNLINK", key, key=key))
            await asyncio.gather(*deletes)
            if cursor == b"0":
                return

    async def _flush_group(self, group: str, link: Link) -> None:
        """Deletes a group and its token, recording each member as discarded (see
        GROUP_FLUSH), a bounded number of members per call."""
        keys = self.core.keys.membership_keys(group)
        for _ in range(_MAX_GROUP_FLUSH_CALLS):
            args = (time.time(), self.core.group_expiry_s, FLUSH_GROUP_BATCH)
            if not await link.submit_script(GROUP_FLUSH, keys, args):
                return
        raise RedisCommandError(
            f"flush() could not empty group {group!r}: members joined it faster than "
            f"{FLUSH_GROUP_BATCH} per call were discarded"
        )

    async def aclose(self) -> None:
        """Stops readers, returns undelivered messages, closes connections. Idempotent."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._shutdown()
        finally:
            self._closing.set_result(None)

    async def _shutdown(self) -> None:
        if asyncio.current_task() is not self._keeper:
            self._keeper.cancel()
            await asyncio.wait({self._keeper})
        reassertions = set(self._reassertions)
        for task in reassertions:
            task.cancel()  # what they submitted is settled (or failed) by the links' close
        if reassertions:
            await asyncio.wait(reassertions)
        # Every shard's readers at once: each may wait up to failover_timeout to recover a
        # lost reply, which one after another would make a close() wait that once per shard.
        await asyncio.gather(*(shard.close_readers() for shard in self._shards))
        # What the readers popped has been handed over; nothing more will come to those
        # still waiting, and a receive() must not hang on a closed session.
        closed = RedisUnavailable("the channel layer was closed while receive() waited")
        for shard in self._shards:
            self.deliveries.fail_waiters(shard.spec.index, closed)
        # Each RETURN waits for a master as any request does, up to failover_timeout: a
        # close() during a failover still gives back what the readers popped (seen with a
        # fixed 2 s: every popped message lost, unlogged). What fails is logged below.
        # If close() itself is cancelled meanwhile (a shutdown hook's own timeout), the rest
        # still runs: tasks cancelled, connections closed, what was not given back logged.
        try:
            self._retry_returns()
            await self._return_to_redis(self.deliveries.channels())
            if self._tasks:  # returns started by receivers that just left: let them finish
                returns_end_s = self.core.failover_timeout_s + CLOSE_RETURN_TIMEOUT_S
                await asyncio.wait(set(self._tasks), timeout=returns_end_s)
        finally:
            await self._finish_shutdown()

    async def _finish_shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._unreturned:  # nothing will try again
            lost = sum(len(elements) for _, _, elements, _ in self._unreturned)
            self._unreturned.clear()
            logger.error(
                "%d message(s) popped for receivers that left could not be given back to "
                "Redis before close(); they are lost",
                lost,
                extra={"event": "return_lost", "messages": lost},
            )
        # At once, as their readers: each may wait CLOSE_RETURN_TIMEOUT_S for its replies.
        closing = [shard.close(CLOSE_RETURN_TIMEOUT_S) for shard in self._shards]
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result  # (a bug: the others closed all the same)
