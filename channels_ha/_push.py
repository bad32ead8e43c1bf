"""Writing messages into Redis: the PUSH request of a send, and the WAIT that follows it.

A send is built once, as bytes, and a retry writes those same bytes (the same sequence
number), so that a copy that landed after all is recognised as one. Each PUSH is also kept
for replay after a failover, less the targets it found full (see ``_to_replay``), and once:
written again with its WAIT, its last copy replaces the first in what is kept.

A send to this process's own channel from the event loop receiving its inbox skips Redis
(``_local_path``); each one to its inbox through Redis is noted until popped, so that such
a send cannot overtake it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, NamedTuple, cast

from channels.exceptions import ChannelFull

from ._buffers import ChannelBuffer, now_ms
from ._cluster import ClusterRouter
from ._codec import element_encoder
from ._core import LayerCore
from ._delivery import Deliveries, target_of
from ._keys import wake_stream
from ._link import CommandLink
from ._local_path import LocalPath
from ._replay import Entry, Replayable
from ._resp import pack
from ._scripts import PUSH
from ._sequence import SendSequences
from ._shard import ShardConnections
from .exceptions import RedisCommandError

logger = logging.getLogger("channels_ha.layer")

FULL = 0  # a PUSH status: the list is at capacity
_MAX_PUSH_ATTEMPTS = 10  # PUSH+WAIT pairs split by a reconnect, before settling

Link = CommandLink | ClusterRouter
PushParts = tuple[list[str], tuple[int, ...], list[Any]]  # push_request's arguments
# list, aux key, kind, shard index, capacity, whether the list is an inbox of this process
_Route = tuple[str, str, str, int, int, bool]
_ROUTES_REMEMBERED = 10_000  # channels whose routes a Pusher keeps; then it starts over
# A Packer keeps a buffer the size of the largest message it packed, for the event loop's
# life (seen: one 50 MB send left 96 MB resident); past this, the Pusher takes new ones.
_PACKER_KEEPS = 1 << 20


def push_request(keys: list[str], header: tuple[int, ...], args: list[Any]) -> bytes:
    """An EVALSHA of the PUSH script over ``keys`` (list and aux key per target)."""
    keys = with_wakes(keys, args)
    return pack("EVALSHA", PUSH.sha, len(keys), *keys, *header, *args)


def with_wakes(keys: list[str], args: list[Any]) -> list[str]:
    """The KEYS of a PUSH: ``keys``, then the wake stream of each normal-channel target."""
    kinds = args[3::4]
    if "c" not in kinds:  # process inboxes only: the hot path of group_send
        return keys
    return keys + [wake_stream(keys[2 * i]) for i, kind in enumerate(kinds) if kind == "c"]


def _to_replay(
    written: Replayable, parts: PushParts | None, statuses: list[int]
) -> Replayable | None:
    """What a replay may write of a PUSH: not the targets it found full. Their messages were
    refused (ChannelFull, or skipped by group_send); written again once there is room, they
    would arrive after all, and after newer ones."""
    if FULL not in statuses:
        return written
    kept = [i for i, status in enumerate(statuses) if status != FULL]
    if parts is None or not kept:
        return None  # (a request without its parts has one target)
    keys, header, args = parts
    return functools.partial(
        push_request,
        [key for i in kept for key in keys[2 * i : 2 * i + 2]],
        header,
        [arg for i in kept for arg in args[4 * i : 4 * i + 4]],
    )


# What Redis answers a bulk string longer than proto-max-bulk-len with (then it closes the
# connection; the link retries what followed on a new one).
_TOO_LARGE = "ERR Protocol error: invalid bulk length"


def _name_if_too_large(err: RedisCommandError, size: int) -> None:
    """Raises what Redis said with what it did not, if it refused a request too large: the
    message and the setting (a push that fails only pays for this)."""
    if str(err).startswith(_TOO_LARGE):
        raise RedisCommandError(
            f"The message is larger than Redis accepts: a request of {size:,} bytes carried "
            f"it, over the server's proto-max-bulk-len (512 MB by default) (Redis: {err})"
        ) from err


def written_once(link: Link, key: str, written_on: object) -> bool:
    """Whether a request about ``key`` sent when the link was on ``written_on`` was written
    once: no reconnect since. A request written again after a lost reply may have been
    stored by its first copy, even if the retry was refused (full: the script recognises a
    copy only among the inbox's last entries), so a later local send must still wait for it
    (seen: FIFO broken, [2, 1], when its note was dropped)."""
    return written_on is not None and link.connection_of(key) == written_on


class PreparedPush(NamedTuple):
    shard: int  # its index in the layer's hosts
    link: Link
    packed: bytes  # the EVALSHA PUSH request
    key: str  # the list it writes, which routes it on Cluster
    own: tuple[str, int] | None  # (sender, number) if the list is this process's inbox


class Pusher:
    """Sends to one channel, and pushes (with WAIT) for group_send too."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        seqs: SendSequences,
        deliveries: Deliveries,
        client_prefix: str,
    ) -> None:
        self.core = core
        self._shards = shards
        self._seqs = seqs
        self.own_inbox_end = f"{client_prefix}!"  # how this process's inbox keys end
        self._local = LocalPath(
            deliveries.buffers, deliveries.inbox_waiting, deliveries.inbox_gates, core.unpopped
        )
        self._wait_ms = int(core.replica_ack_timeout_s * 1000)
        self._routes: dict[str, _Route] = {}  # channel -> its route (see _route)
        # This event loop's own Packers (see MessageCodec.dumper).
        self._dumps = core.codec.dumper()
        self._encode = element_encoder()

    def prepare_send(self, channel: str, message: dict[str, Any]) -> PreparedPush:
        """The PUSH request of one send and where it goes (a retry re-sends the bytes)."""
        core = self.core
        route = self._routes.get(channel)
        if route is None:
            route = self._route(channel)
        key, aux, kind, index, capacity, own = route
        now = now_ms()
        sender, seq = self._seqs.next(key)
        expiry_ms = core.expiry_ms
        element = self._encode(now + expiry_ms, sender, seq, channel, self._dumps(message))
        if len(element) > _PACKER_KEEPS:
            self._renew_packers()
        if own:  # on its way through Redis from now on: a local send must not overtake it
            # (After the encoding: a message that cannot be encoded is never written.)
            core.unpopped.add(key, sender, seq, now + expiry_ms)
            ident: tuple[str, int] | None = (sender, seq)
        else:
            ident = None
        if kind == "i":
            packed = pack(
                "EVALSHA", PUSH.sha, 2, key, aux,
                expiry_ms, now, core.dedupe_ttl_ms, capacity, seq, element, kind,
            )  # fmt: skip
        else:
            packed = pack(
                "EVALSHA", PUSH.sha, 3, key, core.keys.dedupe(channel, sender), wake_stream(key),
                expiry_ms, now, core.dedupe_ttl_ms, capacity, seq, element, kind,
            )  # fmt: skip
        return PreparedPush(index, self._shards[index].link, packed, key, ident)

    def _route(self, channel: str) -> _Route:
        """Where a channel's sends go, worked out once per channel (bounded): its keys,
        shard and capacity were a tenth of a send's Python calls."""
        target = target_of(channel)
        key, aux, kind = self.target_keys(channel, target)
        own = kind == "i" and key.endswith(self.own_inbox_end)
        index, capacity = self.core.shard_index(target), self.core.capacity_of(channel)
        route = (key, aux, kind, index, capacity, own)
        if len(self._routes) >= _ROUTES_REMEMBERED:
            self._routes.clear()
        self._routes[channel] = route
        return route

    def target_keys(self, channel: str, target: str) -> tuple[str, str, str]:
        """(list, aux key, kind) of a PUSH target; see the PUSH script. A normal channel's
        aux key, its de-duplication record, depends on the sender name its number counts
        under: "" here, set with the number."""
        keys = self.core.keys
        if "!" in channel:  # copies are recognised by the one receiving process
            return keys.inbox(target), keys.inbox_limit(target), "i"
        return keys.channel(channel), "", "c"

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if "!" in channel and self._local.buffer_for(channel) is not None:
            # A send yields as one through Redis does: a producer that awaits each send
            # must not starve its consumer (it would meet ChannelFull at ``capacity``).
            # Before the put, so that a cancellation here leaves nothing sent; what it
            # yielded to may have changed the route, which is therefore asked again.
            await asyncio.sleep(0)
            buffer = self._local.buffer_for(channel)
            if buffer is not None:
                self._put_local(buffer, message)
                return
        index, link, packed, key, own = self.prepare_send(channel, message)
        written_on = link.connection_of(key) if own is not None else None
        if self.core.replica_acks:
            statuses = await self.push(index, packed, key)
        else:
            # push() without its WAIT, written out: a coroutine frame fewer per send. What
            # it keeps for replay and what it raises are the same: the request, unless its
            # one target was full; a message too large named as such.
            try:
                statuses = cast("list[int] | None", await link.submit_packed(packed, key))
            except RedisCommandError as err:
                _name_if_too_large(err, len(packed))
                raise
            if statuses is not None and statuses[0] != FULL:
                self.core.recent[index].add(key, packed, len(packed))
        if statuses is not None and statuses[0] == FULL:
            if own is not None and written_once(link, key, written_on):
                self.core.unpopped.discard(key, *own)  # not stored: nothing to wait for
            raise ChannelFull(channel)
        self.core.stats.sent += 1

    def _put_local(self, buffer: ChannelBuffer, message: dict[str, Any]) -> None:
        """A send that skips Redis (see ``_local_path``): into the buffer its inbox reader
        would have put it in, unless the channel holds its capacity there already."""
        if len(buffer.items) >= buffer.capacity:
            # Expired messages take no room, as channels_redis drops them before it counts
            # (seen: ChannelFull with every buffered message expired, until the sweep).
            self.core.stats.expired += buffer.drop_expired()
            if len(buffer.items) >= buffer.capacity:
                raise ChannelFull(buffer.channel)
        body = self._dumps(message)
        if len(body) > _PACKER_KEEPS:
            self._renew_packers()
        buffer.put((now_ms() + self.core.expiry_ms, body))
        self.core.stats.sent += 1

    def _renew_packers(self) -> None:
        """New Packers after a large message: a Packer keeps a buffer its size for good."""
        self._dumps, self._encode = self.core.codec.dumper(), element_encoder()

    def header(self, now: int) -> tuple[int, ...]:
        """The PUSH arguments before its targets'."""
        core = self.core
        return (core.expiry_ms, now, core.dedupe_ttl_ms)

    async def push(
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
        GROUP_PUSH that found its plan stale returns None, having written nothing. One write
        is kept for replay once, as its last copy (its statuses may differ from the first's)."""
        acks, link = self.core.replica_acks, self._shards[index].link
        recent = self.core.recent[index]
        kept: Entry | None = None  # this write's entry in recent, once acknowledged
        for _ in range(_MAX_PUSH_ATTEMPTS):
            connection = link.connection_of(key)
            try:
                statuses = cast("list[int] | None", await link.submit_packed(packed, key))
            except RedisCommandError as err:
                _name_if_too_large(err, len(packed))
                raise
            if statuses is None:
                return None
            to_replay = _to_replay(packed if replayed is None else replayed, parts, statuses)
            if kept is not None:  # this write went again after a reconnect split it from WAIT
                recent.discard(kept)
            kept = None if to_replay is None else recent.add(key, to_replay, len(packed))
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
