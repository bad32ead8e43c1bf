"""Everything the layer does on one event loop.

Connections and futures belong to an event loop, and a Django process can have several: the
ASGI server's, plus a short-lived one for every ``async_to_sync`` call made outside it. Each
loop gets a session. A session owns its tasks: when the loop shuts down (``asyncio.run``
cancels what is left) or the layer is closed, the session stops its readers, puts messages
it popped but did not deliver back into Redis, and closes its connections.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine, Iterable
from typing import Any, cast

from channels.exceptions import ChannelFull

from ._buffers import now_ms
from ._cluster import ClusterRouter, slot_of
from ._codec import encode_element
from ._constants import (
    BUFFER_SWEEP_INTERVAL_S,
    CLOSE_RETURN_TIMEOUT_S,
    EPOCH_CHECK_INTERVAL_S,
    FLUSH_SCAN_COUNT,
)
from ._core import LayerCore
from ._delivery import Deliveries, inbox_of, target_of
from ._link import CommandLink
from ._reader import BlockingReader
from ._recovery import check_epoch, log_failure, reassert, recovered, watch_epochs
from ._resp import pack
from ._scripts import GROUP_ADD, PUSH
from ._server import ServerInfo
from ._shard import ShardConnections
from ._timeouts import within
from .exceptions import RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.layer")

_FULL = 0  # a PUSH status: the list is at capacity
_MAX_SCAN_ROUNDS = 1_000_000

PushPlan = dict[tuple[int, int], tuple[list[str], list[Any]]]  # (shard, slot) -> KEYS, ARGV
Link = CommandLink | ClusterRouter


class Session:
    """The layer's state and connections on one event loop."""

    def __init__(self, core: LayerCore) -> None:
        self.core = core
        self.sender = secrets.token_hex(8)
        self._seq = 0
        self._shards = [
            ShardConnections(
                spec, core.shard_stats[spec.index], self._server_seen, self._topology_changed
            )
            for spec in core.shards
        ]
        self.deliveries = Deliveries(core)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Future[None] | None = None
        self._epochs: dict[tuple[int, str], object] = {}  # (shard, master) -> epoch seen
        self._keeper = asyncio.get_running_loop().create_task(self._keep())

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def buffered(self) -> int:
        """Messages that reached this process and wait for their receiver."""
        return self.deliveries.buffered()

    # -- sending -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def prepare_send(self, channel: str, message: dict[str, Any]) -> tuple[Link, bytes, str]:
        """The link, PUSH request and routing key of one send (a retry re-sends the bytes)."""
        core = self.core
        target = target_of(channel)
        if "!" in channel:
            key = dedupe = core.keys.inbox(target)  # deduplicated by its one receiving process
        else:
            key, dedupe = core.keys.channel(channel), core.keys.dedupe(channel, self.sender)
        seq, now = self._next_seq(), now_ms()
        body = core.codec.dumps(message)
        element = encode_element(now + core.expiry_ms, self.sender, seq, channel, body)
        header = self._push_header(now, seq)
        packed = pack(
            "EVALSHA", PUSH.sha, 2, key, dedupe, *header, core.capacity_of(channel), element
        )
        return self._shards[core.shard_index(target)].link, packed, key

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        link, packed, key = self.prepare_send(channel, message)
        statuses = await link.submit_packed(packed, key)
        await self._await_replicas(link, key)
        if statuses[0] == _FULL:  # type: ignore[index]
            raise ChannelFull(channel)
        self.core.stats.sent += 1

    def _push_header(self, now: int, seq: int) -> tuple[int, ...]:
        core = self.core
        return (core.expiry_ms, now, seq, core.dedupe_ttl_ms)

    async def _await_replicas(self, link: Link, key: str) -> None:
        """WAIT on the connection that wrote ``key`` (WAIT counts that connection's writes)."""
        acks = self.core.replica_acks
        if not acks:
            return
        timeout_ms = int(self.core.replica_ack_timeout_s * 1000)
        acked = cast(int, await link.submit("WAIT", acks, timeout_ms, key=key))
        if acked < acks:
            self.core.stats.replica_ack_shortfalls += 1
            logger.warning(
                "Only %d of %d replicas acknowledged a message within %d ms",
                acked,
                acks,
                timeout_ms,
                extra={"event": "replica_ack_shortfall"},
            )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        core = self.core
        members = await self._members(group)
        if not members:
            return
        body = core.codec.dumps(message)
        seq, now = self._next_seq(), now_ms()
        plan = self._plan_group_push(members, body, seq, now)
        header = self._push_header(now, seq)
        futures = [
            self._shards[index].link.submit_script(PUSH, keys, (*header, *args))
            for (index, _), (keys, args) in plan.items()
        ]
        results = cast(list[list[int]], await asyncio.gather(*futures))
        for (index, _), (keys, _args) in plan.items():
            await self._await_replicas(self._shards[index].link, keys[0])
        full = sum(statuses.count(_FULL) for statuses in results)
        if full:
            logger.info("%d of %d targets of group %s over capacity", full, len(members), group)
        core.stats.group_sends += 1

    async def _members(self, group: str) -> list[str]:
        core = self.core
        shard = self._shards[core.shard_index(group)]
        for _ in range(2):
            changes = shard.stats.server_changes
            await recovered(shard)
            cutoff = time.time() - core.group_expiry_s
            key = core.keys.group(group)
            reply = await shard.link.submit("ZRANGE", key, f"({cutoff}", "+inf", "BYSCORE", key=key)
            if shard.stats.server_changes == changes:
                break  # no new server run meanwhile: the list is not from before a loss
        return [member.decode() for member in cast(list[bytes], reply)]

    def _plan_group_push(self, members: list[str], body: bytes, seq: int, now: int) -> PushPlan:
        """One element per process inbox and one per normal channel, batched into one PUSH
        per shard, or per slot on Cluster (a script's keys must share a slot there). The
        link pipelines the PUSHes of one node, so a group costs one round trip per node."""
        core, expires = self.core, now + self.core.expiry_ms
        by_inbox: dict[str, list[str]] = {}
        plan: PushPlan = {}
        for channel in members:
            if "!" in channel:
                by_inbox.setdefault(inbox_of(channel), []).append(channel)
                continue
            key = core.keys.channel(channel)
            keys, args = plan.setdefault(self._unit(channel, key), ([], []))
            keys += [key, core.keys.dedupe(channel, self.sender)]
            element = encode_element(expires, self.sender, seq, channel, body)
            args += [core.capacity_of(channel), element]
        for inbox, channels in by_inbox.items():
            key = core.keys.inbox(inbox)
            keys, args = plan.setdefault(self._unit(inbox, key), ([], []))
            targets: str | list[str] = channels[0] if len(channels) == 1 else channels
            capacity = max(core.capacity_of(channel) for channel in channels)
            keys += [key, key]
            args += [capacity, encode_element(expires, self.sender, seq, targets, body)]
        return plan

    def _unit(self, target: str, key: str) -> tuple[int, int]:
        """(shard, slot): what one PUSH may cover; the slot matters only on Cluster."""
        index = self.core.shard_index(target)
        return index, slot_of(key) if self._shards[index].router else 0

    # -- groups ------------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        core = self.core
        core.memberships.added(group, channel)
        link = self._shards[core.shard_index(group)].link
        await link.submit_script(
            GROUP_ADD, (core.keys.group(group),), (time.time(), core.group_expiry_s, channel)
        )

    async def group_discard(self, group: str, channel: str) -> None:
        core = self.core
        core.memberships.discarded(group, channel)
        link = self._shards[core.shard_index(group)].link
        key = core.keys.group(group)
        await link.submit("ZREM", key, channel, key=key)

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, channel: str) -> dict[str, Any]:
        core, deliveries = self.core, self.deliveries
        buffer = deliveries.buffer(channel)
        index = core.shard_index(target_of(channel))
        reader = self._reader(index, channel)
        core.memberships.receiving(channel, +1)
        if deliveries.enter(channel, index):
            reader.wake()
        try:
            _, body = await buffer.get()
        finally:
            last = deliveries.leave(channel)
            core.memberships.receiving(channel, -1)
            if "!" not in channel:
                if last:
                    reader.wake()  # stop popping a channel nobody here waits for
                self._return_stranded([channel])
        core.stats.received += 1
        return core.codec.loads(body)

    def _reader(self, index: int, channel: str) -> BlockingReader:
        shard, deliveries, keys = self._shards[index], self.deliveries, self.core.keys

        def fail(error: Exception) -> None:
            deliveries.fail_waiters(index, error)

        if "!" in channel:
            slot = slot_of(keys.inbox(inbox_of(channel)))
            return shard.reader("inbox", deliveries.inbox_keys(index), self._deliver, fail, slot)
        slot = slot_of(keys.channel(channel))  # every normal channel shares this slot
        return shard.reader("normal", deliveries.normal_keys(index), self._deliver, fail, slot)

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
        """Pushes buffered messages back to the head of their list, order kept."""
        returned = self.deliveries.take_returnable(channels)
        await asyncio.gather(*(self._push_front(i, k, e) for (i, k), e in returned.items()))

    async def _push_front(self, index: int, key: str, elements: list[bytes]) -> None:
        link = self._shards[index].link
        await link.submit("LPUSH", key, *reversed(elements), key=key)
        await link.submit("PEXPIRE", key, self.core.expiry_ms, key=key)
        logger.info("Returned %d undelivered messages to %s", len(elements), key)

    # -- failover bookkeeping ----------------------------------------------------------------

    def _server_seen(self, shard: ShardConnections, info: ServerInfo) -> None:
        stats = shard.stats
        previous = stats.master
        run = stats.observe(info, shard.node_of(info))
        if run == "same":
            return
        shard.epoch_check = check_epoch(self.core, shard, info, changed=run == "new")
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
        reassert(self.core, shard)

    def _topology_changed(self, shard: ShardConnections) -> None:
        """Cluster slots changed owner: memberships may have been on a node that failed."""
        shard.stats.note_change()
        logger.warning(
            "The slot map of %s changed; re-asserting group memberships",
            shard.spec.locator.describe(),
            extra={"event": "new_master"},
        )
        reassert(self.core, shard)

    # -- housekeeping ------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure)

    async def _keep(self) -> None:
        """Periodic upkeep; also the hook that closes the session when its loop shuts down."""
        try:
            swept = time.monotonic()
            tick_s = min(EPOCH_CHECK_INTERVAL_S, self.core.refresh_interval_s)
            while True:
                await asyncio.sleep(tick_s)
                await self._check_epochs()
                if self.core.refresh_due():
                    for shard in self._shards:
                        reassert(self.core, shard)
                if time.monotonic() - swept >= BUFFER_SWEEP_INTERVAL_S:
                    swept = time.monotonic()
                    self._sweep()
        except asyncio.CancelledError:
            if self._closing is None:  # cancelled by the loop's shutdown, not by close()
                await self.aclose()
            raise

    async def _check_epochs(self) -> None:
        if not self.core.memberships:
            return  # nothing of ours to re-assert
        for shard in self._shards:
            try:
                await watch_epochs(self.core, shard, self._epochs)
            except (RedisUnavailable, RedisCommandError) as err:
                logger.debug("Epoch check failed: %s", err)

    def _sweep(self) -> None:
        self._return_stranded(self.deliveries.sweep())
        self.core.memberships.forget_dead(self.core.group_expiry_s)

    # -- flushing and closing ----------------------------------------------------------------

    async def flush(self) -> None:
        for shard in self._shards:
            for node in shard.scan_links():
                await self._flush_node(node, shard.link)
        self.deliveries.clear()

    async def _flush_node(self, node: CommandLink, link: Link) -> None:
        """SCANs one master; deletes through ``link``, which routes each key to its slot."""
        cursor = b"0"
        pattern = self.core.keys.scan_pattern()
        for _ in range(_MAX_SCAN_ROUNDS):
            reply = await node.submit("SCAN", cursor, "MATCH", pattern, "COUNT", FLUSH_SCAN_COUNT)
            cursor, keys = cast("tuple[bytes, list[bytes]]", reply)
            # One key per UNLINK: on Cluster, keys of one SCAN page live in different slots.
            unlinks = [link.submit("UNLINK", key, key=key.decode()) for key in keys]
            await asyncio.gather(*unlinks)
            if cursor == b"0":
                return

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
        for shard in self._shards:
            await shard.close_readers()
        try:
            channels = self.deliveries.channels()
            await within(self._return_to_redis(channels), CLOSE_RETURN_TIMEOUT_S)
        except (asyncio.TimeoutError, RedisUnavailable) as err:
            logger.warning("Could not return buffered messages to Redis at close: %s", err)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for shard in self._shards:
            await shard.close(CLOSE_RETURN_TIMEOUT_S)
