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
from ._codec import encode_element
from ._constants import BUFFER_SWEEP_INTERVAL_S, CLOSE_RETURN_TIMEOUT_S, FLUSH_SCAN_COUNT
from ._core import LayerCore
from ._delivery import Deliveries, inbox_of, target_of
from ._link import CommandLink
from ._reader import BlockingReader
from ._recovery import check_epoch, log_failure, reassert, recovered
from ._resp import pack
from ._scripts import GROUP_ADD, PUSH
from ._server import ServerInfo
from ._shard import ShardConnections
from ._timeouts import within
from .exceptions import RedisUnavailable

logger = logging.getLogger("channels_ha.layer")

_FULL = 0  # a PUSH status: the list is at capacity
_MAX_SCAN_ROUNDS = 1_000_000

PushPlan = dict[int, tuple[list[str], list[Any]]]  # shard -> (KEYS, per-target ARGV)


class Session:
    """The layer's state and connections on one event loop."""

    def __init__(self, core: LayerCore) -> None:
        self.core = core
        self.sender = secrets.token_hex(8)
        self._seq = 0
        self._shards = [
            ShardConnections(spec, core.shard_stats[spec.index], self._server_seen)
            for spec in core.shards
        ]
        self.deliveries = Deliveries(core)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Future[None] | None = None
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

    def prepare_send(self, channel: str, message: dict[str, Any]) -> tuple[CommandLink, bytes]:
        """The link and the PUSH request for one send (a retry re-sends the same bytes)."""
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
        return self._shards[core.shard_index(target)].link, packed

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        link, packed = self.prepare_send(channel, message)
        statuses = await link.submit_packed(packed)
        await self._await_replicas(link)
        if statuses[0] == _FULL:  # type: ignore[index]
            raise ChannelFull(channel)
        self.core.stats.sent += 1

    def _push_header(self, now: int, seq: int) -> tuple[int, ...]:
        core = self.core
        return (core.expiry_ms, now, seq, core.dedupe_ttl_ms)

    async def _await_replicas(self, link: CommandLink) -> None:
        acks = self.core.replica_acks
        if not acks:
            return
        timeout_ms = int(self.core.replica_ack_timeout_s * 1000)
        acked = cast(int, await link.submit("WAIT", acks, timeout_ms))
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
            for index, (keys, args) in plan.items()
        ]
        results = cast(list[list[int]], await asyncio.gather(*futures))
        for index in plan:
            await self._await_replicas(self._shards[index].link)
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
            reply = await shard.link.submit(
                "ZRANGE", core.keys.group(group), f"({cutoff}", "+inf", "BYSCORE"
            )
            if shard.stats.server_changes == changes:
                break  # no new server run meanwhile: the list is not from before a loss
        return [member.decode() for member in cast(list[bytes], reply)]

    def _plan_group_push(self, members: list[str], body: bytes, seq: int, now: int) -> PushPlan:
        """One PUSH per shard: one element per process inbox, one per normal channel."""
        core, expires = self.core, now + self.core.expiry_ms
        by_inbox: dict[str, list[str]] = {}
        plan: PushPlan = {}
        for channel in members:
            if "!" in channel:
                by_inbox.setdefault(inbox_of(channel), []).append(channel)
                continue
            keys, args = plan.setdefault(core.shard_index(channel), ([], []))
            keys += [core.keys.channel(channel), core.keys.dedupe(channel, self.sender)]
            element = encode_element(expires, self.sender, seq, channel, body)
            args += [core.capacity_of(channel), element]
        for inbox, channels in by_inbox.items():
            keys, args = plan.setdefault(core.shard_index(inbox), ([], []))
            key = core.keys.inbox(inbox)
            targets: str | list[str] = channels[0] if len(channels) == 1 else channels
            capacity = max(core.capacity_of(channel) for channel in channels)
            keys += [key, key]
            args += [capacity, encode_element(expires, self.sender, seq, targets, body)]
        return plan

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
        await link.submit("ZREM", core.keys.group(group), channel)

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, channel: str) -> dict[str, Any]:
        core, deliveries = self.core, self.deliveries
        buffer = deliveries.buffer(channel)
        index = core.shard_index(target_of(channel))
        reader = self._reader(index, specific="!" in channel)
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

    def _reader(self, index: int, specific: bool) -> BlockingReader:
        shard, deliveries = self._shards[index], self.deliveries

        def fail(error: Exception) -> None:
            deliveries.fail_waiters(index, error)

        if specific:
            return shard.reader("inbox", deliveries.inbox_keys(index), self._deliver, fail)
        return shard.reader("normal", deliveries.normal_keys(index), self._deliver, fail)

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
        await link.submit("LPUSH", key, *reversed(elements))
        await link.submit("PEXPIRE", key, self.core.expiry_ms)
        logger.info("Returned %d undelivered messages to %s", len(elements), key)

    # -- failover bookkeeping ----------------------------------------------------------------

    def _server_seen(self, shard: ShardConnections, info: ServerInfo) -> None:
        stats = shard.stats
        previous = stats.master
        run = stats.observe(info)
        if run == "same":
            return
        shard.epoch_check = check_epoch(self.core, shard, changed=run == "new")
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

    # -- housekeeping ------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure)

    async def _keep(self) -> None:
        """Periodic upkeep; also the hook that closes the session when its loop shuts down."""
        try:
            while True:
                await asyncio.sleep(min(BUFFER_SWEEP_INTERVAL_S, self.core.refresh_interval_s))
                self._return_stranded(self.deliveries.sweep())
                self.core.memberships.forget_dead(self.core.group_expiry_s)
                if self.core.refresh_due():
                    for shard in self._shards:
                        reassert(self.core, shard)
        except asyncio.CancelledError:
            if self._closing is None:  # cancelled by the loop's shutdown, not by close()
                await self.aclose()
            raise

    # -- flushing and closing ----------------------------------------------------------------

    async def flush(self) -> None:
        for shard in self._shards:
            await self._flush_shard(shard.link)
        self.deliveries.clear()

    async def _flush_shard(self, link: CommandLink) -> None:
        cursor = b"0"
        pattern = self.core.keys.scan_pattern()
        for _ in range(_MAX_SCAN_ROUNDS):
            reply = await link.submit("SCAN", cursor, "MATCH", pattern, "COUNT", FLUSH_SCAN_COUNT)
            cursor, keys = cast("tuple[bytes, list[bytes]]", reply)
            # One key per UNLINK: on Cluster, keys of one SCAN page live in different slots.
            await asyncio.gather(*(link.submit("UNLINK", key) for key in keys))
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
