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
from collections import Counter
from collections.abc import Coroutine, Iterable
from typing import Any, cast

from channels.exceptions import ChannelFull

from ._buffers import ChannelBuffer, Item, now_ms
from ._codec import decode_element, encode_element
from ._constants import (
    BUFFER_SWEEP_INTERVAL_S,
    CLOSE_RETURN_TIMEOUT_S,
    FLUSH_SCAN_COUNT,
    RESTART_GRACE_S,
)
from ._core import LayerCore
from ._resp import Arg
from ._scripts import GROUP_ADD, PUSH
from ._server import ServerInfo
from ._shard import ShardConnections
from ._timeouts import within
from .exceptions import RedisUnavailable

logger = logging.getLogger("channels_ha.layer")

_PUSHED, _FULL = 1, 0
_MAX_SCAN_ROUNDS = 1_000_000
_REASSERT_BATCH = 500


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
        self._buffers: dict[str, ChannelBuffer] = {}
        self._inbox_waiting: Counter[str] = Counter()  # inbox key -> receivers waiting
        self._normal_waiting: Counter[str] = Counter()  # channel -> receivers waiting
        self._inbox_shard: dict[str, int] = {}
        self._last_seq: dict[tuple[str, str], tuple[int, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Future[None] | None = None
        self._keeper = asyncio.get_running_loop().create_task(self._keep())

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def buffered(self) -> int:
        """Messages that reached this process and wait for their receiver."""
        return sum(len(buffer.items) for buffer in self._buffers.values())

    # -- sending -------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        core = self.core
        body = core.codec.dumps(message)
        if "!" in channel:
            target = channel[: channel.index("!") + 1]
            key = dedupe = core.keys.inbox(target)
        else:
            target = channel
            key, dedupe = core.keys.channel(channel), core.keys.dedupe(channel, self.sender)
        seq, now = self._next_seq(), now_ms()
        element = encode_element(now + core.expiry_ms, self.sender, seq, channel, body)
        link = self._shards[core.shard_index(target)].link
        args: tuple[Arg, ...] = (*self._push_header(now, seq), core.capacity_of(channel), element)
        statuses = await link.submit_script(PUSH, (key, dedupe), args)
        await self._await_replicas(link)
        if statuses[0] == _FULL:  # type: ignore[index]
            raise ChannelFull(channel)
        core.stats.sent += 1

    def _push_header(self, now: int, seq: int) -> tuple[int, ...]:
        core = self.core
        return (core.expiry_ms, now, seq, core.dedupe_ttl_ms)

    async def _await_replicas(self, link: Any) -> None:
        acks = self.core.replica_acks
        if not acks:
            return
        timeout_ms = int(self.core.replica_ack_timeout_s * 1000)
        acked = await link.submit("WAIT", acks, timeout_ms)
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
        per_shard = self._plan_group_push(members, body, seq, now)
        header = self._push_header(now, seq)
        futures = [
            self._shards[index].link.submit_script(PUSH, keys, (*header, *args))
            for index, (keys, args) in per_shard.items()
        ]
        results = await asyncio.gather(*futures)
        for index in per_shard:
            await self._await_replicas(self._shards[index].link)
        full = sum(statuses.count(_FULL) for statuses in results)  # type: ignore[attr-defined]
        if full:
            logger.info("%d of %d targets of group %s over capacity", full, len(members), group)
        core.stats.group_sends += 1

    async def _members(self, group: str) -> list[str]:
        core = self.core
        shard = self._shards[core.shard_index(group)]
        for _ in range(2):
            changes = shard.stats.server_changes
            await self._recovered(shard)
            cutoff = time.time() - core.group_expiry_s
            members = await shard.link.submit(
                "ZRANGE", core.keys.group(group), f"({cutoff}", "+inf", "BYSCORE"
            )
            if shard.stats.server_changes == changes:
                break  # no new server run meanwhile: the list is not from before a loss
        return [member.decode() for member in members]  # type: ignore[attr-defined]

    async def _recovered(self, shard: ShardConnections) -> None:
        """Waits out the grace period after a master came back without its data."""
        if shard.epoch_check is not None and not shard.epoch_check.done():
            await asyncio.wait({shard.epoch_check})
        delay = shard.stats.recovering_until - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def _plan_group_push(
        self, members: list[str], body: bytes, seq: int, now: int
    ) -> dict[int, tuple[list[str], list[Any]]]:
        """One PUSH per shard: one element per process inbox, one per normal channel."""
        core, expires = self.core, now + self.core.expiry_ms
        by_inbox: dict[str, list[str]] = {}
        plan: dict[int, tuple[list[str], list[Any]]] = {}
        for channel in members:
            if "!" in channel:
                by_inbox.setdefault(channel[: channel.index("!") + 1], []).append(channel)
                continue
            keys, args = plan.setdefault(core.shard_index(channel), ([], []))
            keys += [core.keys.channel(channel), core.keys.dedupe(channel, self.sender)]
            args += [
                core.capacity_of(channel),
                encode_element(expires, self.sender, seq, channel, body),
            ]
        for inbox, channels in by_inbox.items():
            keys, args = plan.setdefault(core.shard_index(inbox), ([], []))
            key = core.keys.inbox(inbox)
            targets: str | list[str] = channels[0] if len(channels) == 1 else channels
            capacity = max(core.capacity_of(channel) for channel in channels)
            keys += [key, key]
            args += [capacity, encode_element(expires, self.sender, seq, targets, body)]
        return plan

    # -- groups --------------------------------------------------------------------------

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

    def _reassert(self, shard: ShardConnections) -> None:
        """Re-adds the live memberships kept on ``shard`` (fire and forget, logged)."""
        core = self.core
        groups = {
            group: channels
            for group, channels in core.memberships.live_groups().items()
            if core.shard_index(group) == shard.spec.index
        }
        count = 0
        for group, channels in groups.items():
            for start in range(0, len(channels), _REASSERT_BATCH):
                batch = channels[start : start + _REASSERT_BATCH]
                args: tuple[Arg, ...] = (time.time(), core.group_expiry_s, *batch)
                future = shard.link.submit_script(GROUP_ADD, (core.keys.group(group),), args)
                future.add_done_callback(_log_failure)
                count += len(batch)
        if count:
            logger.info(
                "Re-asserted %d group memberships in %d groups on %s",
                count,
                len(groups),
                shard.spec.locator.describe(),
                extra={"event": "memberships_reasserted", "memberships": count},
            )

    # -- receiving -----------------------------------------------------------------------

    async def receive(self, channel: str) -> dict[str, Any]:
        core = self.core
        buffer = self._buffer(channel)
        specific = "!" in channel
        target = channel[: channel.index("!") + 1] if specific else channel
        key = core.keys.inbox(target) if specific else channel
        waiting = self._inbox_waiting if specific else self._normal_waiting
        reader = self._reader_for(target, specific)
        core.memberships.receiving(channel, +1)
        waiting[key] += 1
        if waiting[key] == 1:
            reader.wake()
        try:
            _, body = await buffer.get()
        finally:
            waiting[key] -= 1
            if waiting[key] <= 0:
                del waiting[key]
                if not specific:
                    reader.wake()  # stop popping a channel nobody here waits for
            core.memberships.receiving(channel, -1)
            if not specific:
                self._return_stranded([channel])
        core.stats.received += 1
        return core.codec.loads(body)

    def _return_stranded(self, channels: Iterable[str]) -> None:
        """Normal-channel messages that reached this process after its receivers left
        belong to whichever process receives next: put them back."""
        stranded = [
            c for c in channels if (b := self._buffers.get(c)) and b.items and not b.waiters
        ]
        if stranded:
            self._spawn(self._return_to_redis(stranded))

    def _buffer(self, channel: str) -> ChannelBuffer:
        buffer = self._buffers.get(channel)
        if buffer is None:
            buffer = ChannelBuffer(channel, self.core.capacity_of(channel))
            self._buffers[channel] = buffer
        return buffer

    def _reader_for(self, target: str, specific: bool) -> Any:
        index = self.core.shard_index(target)
        shard = self._shards[index]
        if specific:
            self._inbox_shard[self.core.keys.inbox(target)] = index
            return shard.reader("inbox", self._inbox_keys(index), self._deliver, self._fail(index))
        return shard.reader("normal", self._normal_keys(index), self._deliver, self._fail(index))

    def _inbox_keys(self, index: int) -> Any:
        def keys() -> list[str]:
            return [k for k in self._inbox_waiting if self._inbox_shard.get(k) == index]

        return keys

    def _normal_keys(self, index: int) -> Any:
        core = self.core

        def keys() -> list[str]:
            # Only channels with a receiver still unserved: popping ahead would take
            # messages that a competing receiver elsewhere should get.
            return [
                core.keys.channel(channel)
                for channel in self._normal_waiting
                if self._buffers[channel].waiters and core.shard_index(channel) == index
            ]

        return keys

    def _deliver(self, key: str, elements: list[bytes]) -> None:
        now = now_ms()
        stats = self.core.stats
        normal: set[str] = set()
        for element in elements:
            envelope = decode_element(element)
            if envelope.expires_ms <= now:
                stats.expired += 1
            elif self._seen(key, envelope.sender, envelope.seq):
                stats.duplicates_dropped += 1
            else:
                item = (envelope.expires_ms, envelope.body)
                targets = envelope.targets
                for target in [targets] if isinstance(targets, str) else targets:
                    self._buffer(target).put(item)
                    if "!" not in target:
                        normal.add(target)
        if normal:
            self._return_stranded(normal)

    def _seen(self, key: str, sender: str, seq: int) -> bool:
        """True for a message whose sequence number this key already delivered (a retry)."""
        mark = (key, sender)
        last = self._last_seq.get(mark)
        if last is not None and seq <= last[0]:
            return True
        self._last_seq[mark] = (seq, time.monotonic())
        return False

    def _fail(self, index: int) -> Any:
        def fail(error: Exception) -> None:
            for channel, buffer in self._buffers.items():
                target = channel[: channel.index("!") + 1] if "!" in channel else channel
                if self.core.shard_index(target) == index:
                    for waiter in buffer.waiters:
                        if not waiter.done():
                            waiter.set_exception(error)

        return fail

    # -- failover bookkeeping ------------------------------------------------------------

    def _server_seen(self, shard: ShardConnections, info: ServerInfo) -> None:
        stats = shard.stats
        previous = stats.master
        run = stats.observe(info)
        if run == "same":
            return
        shard.epoch_check = self._check_epoch(shard, changed=run == "new")
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

    def _check_epoch(self, shard: ShardConnections, changed: bool) -> asyncio.Future[Any]:
        """Marks when this server's data began; a young mark after a change means data loss.

        A failover to a replica keeps the mark (it was replicated); a master restarted
        empty has none, so the first process back creates it, and every process that saw
        the change then finds it young and lets group_send wait for re-assertions.
        """
        key, now = self.core.keys.epoch(), now_ms()
        shard.link.submit("SET", key, now, "NX").add_done_callback(_log_failure)
        check = shard.link.submit("GET", key)
        if changed:
            check.add_done_callback(lambda done: self._note_data_loss(shard, done))
        check.add_done_callback(_log_failure)
        return check

    def _note_data_loss(self, shard: ShardConnections, check: asyncio.Future[Any]) -> None:
        if check.cancelled() or check.exception() is not None or check.result() is None:
            return
        began_s = int(check.result()) / 1000
        if time.time() - began_s < RESTART_GRACE_S:
            shard.stats.recovering_until = began_s + RESTART_GRACE_S
            logger.warning(
                "Redis on %s restarted without its data; group_send waits %.1f s for "
                "group memberships to be re-asserted",
                shard.spec.locator.describe(),
                RESTART_GRACE_S,
                extra={"event": "data_lost"},
            )

    # -- returning undelivered messages ----------------------------------------------------

    async def _return_to_redis(self, channels: Iterable[str]) -> None:
        """Pushes buffered messages nobody here will receive back to the head of their list."""
        core = self.core
        by_key: dict[tuple[int, str], list[bytes]] = {}
        returner = secrets.token_hex(8)  # a fresh sender: no receiver has a mark for it yet
        seq = 0
        for channel in channels:
            buffer = self._buffers.get(channel)
            if buffer is None or buffer.waiters:
                continue
            target = channel[: channel.index("!") + 1] if "!" in channel else channel
            key = core.keys.inbox(target) if "!" in channel else core.keys.channel(channel)
            for expires, body in _fresh(buffer.take_all()):
                seq += 1
                element = encode_element(expires, returner, seq, channel, body)
                by_key.setdefault((core.shard_index(target), key), []).append(element)
        await asyncio.gather(*(self._push_front(i, k, e) for (i, k), e in by_key.items()))

    async def _push_front(self, index: int, key: str, elements: list[bytes]) -> None:
        link = self._shards[index].link
        await link.submit("LPUSH", key, *reversed(elements))
        await link.submit("PEXPIRE", key, self.core.expiry_ms)
        logger.info("Returned %d undelivered messages to %s", len(elements), key)

    # -- housekeeping ----------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _keep(self) -> None:
        """Periodic upkeep; also the hook that closes the session when its loop shuts down."""
        try:
            while True:
                await asyncio.sleep(min(BUFFER_SWEEP_INTERVAL_S, self.core.refresh_interval_s))
                self._sweep()
                self._refresh_groups_if_due()
        except asyncio.CancelledError:
            if self._closing is None:  # cancelled by the loop's shutdown, not by close()
                await self.aclose()
            raise

    def _sweep(self) -> None:
        for channel, buffer in list(self._buffers.items()):
            self.core.stats.expired += buffer.drop_expired()
            if buffer.idle:
                del self._buffers[channel]
            elif buffer.items and not buffer.waiters and "!" not in channel:
                self._spawn(self._return_to_redis([channel]))
        horizon = time.monotonic() - self.core.dedupe_memory_s
        for mark, (_, seen) in list(self._last_seq.items()):
            if seen < horizon:
                del self._last_seq[mark]
        self.core.memberships.forget_dead(self.core.group_expiry_s)

    def _refresh_groups_if_due(self) -> None:
        if not self.core.refresh_due():
            return
        for shard in self._shards:
            self._reassert(shard)

    # -- flushing and closing ----------------------------------------------------------------

    async def flush(self) -> None:
        for shard in self._shards:
            await self._flush_shard(shard)
        for buffer in self._buffers.values():
            buffer.take_all()
        self._last_seq.clear()

    async def _flush_shard(self, shard: ShardConnections) -> None:
        cursor = b"0"
        pattern = self.core.keys.scan_pattern()
        for _ in range(_MAX_SCAN_ROUNDS):
            reply = await shard.link.submit(
                "SCAN", cursor, "MATCH", pattern, "COUNT", FLUSH_SCAN_COUNT
            )
            cursor, keys = cast("tuple[bytes, list[bytes]]", reply)
            # One key per UNLINK: on Cluster, keys of one SCAN page live in different slots.
            await asyncio.gather(*(shard.link.submit("UNLINK", key) for key in keys))
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
            await within(self._return_to_redis(list(self._buffers)), CLOSE_RETURN_TIMEOUT_S)
        except (asyncio.TimeoutError, RedisUnavailable) as err:
            logger.warning("Could not return buffered messages to Redis at close: %s", err)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for shard in self._shards:
            await shard.close(CLOSE_RETURN_TIMEOUT_S)


def _fresh(items: list[Item]) -> list[Item]:
    now = now_ms()
    return [item for item in items if item[0] > now]


def _log_failure(future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        logger.warning("Background Redis operation failed: %s", error)
