"""Everything the layer does on one event loop.

Connections and futures belong to an event loop, and a Django process can have several: the
ASGI server's, plus a short-lived one for every ``async_to_sync`` call made outside it. Each
loop gets a session. A session owns its tasks: when the loop shuts down (``asyncio.run``
cancels what is left) or the layer is closed, the session stops its readers, puts messages
it popped but did not deliver back into Redis, and closes its connections.

The work itself is its parts': ``_push`` (send), ``_group_send`` and ``_group_members``,
``_receiver`` and ``_give_back``, ``_inbox_limits``, ``_resync`` (after a possible data
loss), ``_upkeep`` and ``_flush``. The session wires them to its connections and runs its
own lifecycle.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from ._constants import (
    CLOSE_RETURN_TIMEOUT_S,
    EPOCH_CHECK_INTERVAL_S,
    FAILURE_LOG_INTERVAL_S,
)
from ._core import LayerCore
from ._dead_loop import quiet_dead_loop
from ._delivery import Deliveries
from ._flush import flush
from ._give_back import GiveBack, log_lost
from ._group_members import GroupMembers
from ._group_send import GroupSender
from ._inbox_limits import InboxLimits
from ._push import Pusher
from ._reader import BlockingReader
from ._receiver import Receiver
from ._resync import Resync
from ._sequence import SendSequences
from ._shard import ShardConnections
from ._upkeep import Upkeep
from ._upkeep_steps import UpkeepSteps
from .exceptions import RedisUnavailable


class Session:
    """The layer's state and connections on one event loop."""

    def __init__(self, core: LayerCore, client_prefix: str) -> None:
        self.core = core
        self.client_prefix = client_prefix
        self.sender = secrets.token_hex(8)
        seqs = SendSequences(self.sender, core.dedupe_memory_s / 2)
        self._loop = asyncio.get_running_loop()
        self._closing: asyncio.Future[None] | None = None
        # Set with _closing: a plain attribute, read by every send and receive.
        self.closed = False
        self._hurried = False  # close() was cancelled: the rest of it waits for no reply
        # Closed because its event loop is shutting down: a consumer's clean-up running
        # after that must not open a new session that nothing would close.
        self.ended_with_loop = False
        steps = UpkeepSteps(FAILURE_LOG_INTERVAL_S)
        self.resync = Resync(core, self._loop, steps, lambda: self._closing is not None)
        self._shards = [
            ShardConnections(
                spec,
                core.shard_stats[spec.index],
                self.resync.server_seen,
                self.resync.topology_changed,
            )
            for spec in core.shards
        ]
        self.inbox_limits = InboxLimits(core, self._shards, steps, lambda: self.closed)
        self.resync.republish_limits = self.inbox_limits.republish
        self.resync.epoch_reads.limit_keys = self.inbox_limits.keys_on
        self.deliveries = Deliveries(core, self.inbox_limits)
        self._readers: dict[tuple[int, bool], BlockingReader] = {}
        self.give_back = GiveBack(
            core, self._shards, self.deliveries, self._readers, lambda: self.closed
        )
        self.receiver = Receiver(
            core, self._shards, self.deliveries, self._readers, self.give_back, client_prefix
        )
        self.pusher = Pusher(core, self._shards, seqs, self.deliveries, client_prefix)
        members = GroupMembers(core, self._shards, client_prefix, self.resync)
        groups = GroupSender(core, self._shards, seqs, self.pusher, members)
        self.upkeep = Upkeep(
            core,
            self._shards,
            self.deliveries,
            self.inbox_limits,
            seqs,
            self.resync,
            self.give_back,
            steps,
        )
        # The parts' own methods, not wrappers: a wrapper's frame (resumed at every await
        # inside) would be paid on every send and receive.
        self.send = self.pusher.send
        self.receive = self.receiver.receive
        self.group_send = groups.group_send
        self.group_add = members.add
        self.group_discard = members.discard
        # A sync call (async_to_sync) is a session of milliseconds that never reaches its
        # first upkeep tick: the process-wide sweep, when due, runs here too.
        self.upkeep.sweep_process()
        self._keeper = self._loop.create_task(self._keep())

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def may_hold_inbox(self, key: str, shard: int) -> bool:
        """Whether this loop may hold messages of the inbox ``key`` (asked from other threads,
        see ``_handover``): it popped there, and was not asked to hand it over since."""
        return (
            not self.closed
            and not self._loop.is_closed()
            and (shard, True) in self._readers
            and key not in self.deliveries.inboxes_handed_over
        )

    def buffered(self) -> int:
        """Messages that reached this process and wait for their receiver."""
        return self.deliveries.buffered()

    async def flush(self) -> None:
        """Deletes this prefix's messages and groups (see ``_flush``)."""
        await flush(self.core, self._shards, self.deliveries, lambda: self.closed)

    async def _keep(self) -> None:
        """Periodic upkeep; also the hook that closes the session when its loop shuts down."""
        try:
            tick_s = min(EPOCH_CHECK_INTERVAL_S, self.core.refresh_interval_s)
            while True:
                await asyncio.sleep(tick_s)
                self.upkeep.tick()
        except asyncio.CancelledError:
            if self._closing is None:  # cancelled by the loop's shutdown, not by close()
                self.ended_with_loop = True
                await self.aclose()
            raise

    def abandon(self) -> None:
        """Its event loop was closed without shutting down, so close() never ran and nothing
        of the loop can run again: its channels stop counting in the process's limits, its
        tasks and sockets go quietly (``_dead_loop``), and what its receivers' buffers held
        (popped, not delivered) is logged lost, as close() logs what it could not give back.
        """
        self.inbox_limits.close()
        quiet_dead_loop(self._loop)
        lost = self.give_back.unreturned() + self.deliveries.discard()
        if lost:
            log_lost(
                lost,
                "went with an event loop closed without shutting down (use asyncio.run, or "
                "close the layer before the loop)",
            )

    async def aclose(self) -> None:
        """Stops readers, returns undelivered messages, closes connections. Idempotent: a
        call made meanwhile waits for the same end.

        Cancelled (a shutdown hook's own timeout), it stops waiting for Redis: the readers
        drop their connections and recover nothing, nothing more is given back, and what was
        not is logged lost; the receivers still waiting fail, and every task and connection
        goes all the same, in a loop turn or two. That end runs in a task of its own, so
        that cancelling close() once more cannot leave anything behind.
        """
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        loop = self._loop
        closing = self._closing = loop.create_future()
        self.closed = True
        closer = asyncio.current_task()
        try:
            await self._wind_down(closer)
        except asyncio.CancelledError:
            self._hurry()
            raise
        finally:
            ending = loop.create_task(self._end(closer))
            ending.add_done_callback(lambda _: closing.set_result(None))
            await asyncio.shield(ending)

    async def _wind_down(self, closer: asyncio.Task[Any] | None) -> None:
        """What close() waits for, bounded as a whole (see docs/failover.md): the pops in
        flight collected, a lost reply's batch recovered, the messages given back."""
        await self._stop_readers(closer)
        # Each RETURN waits for a master as any request does, up to failover_timeout: a
        # close() during a failover still gives back what the readers popped (seen with a
        # fixed 2 s: every popped message lost, unlogged). What fails is logged at the end.
        # (And the returns started by receivers that just left get to finish.)
        returns_end_s = self.core.failover_timeout_s + CLOSE_RETURN_TIMEOUT_S
        await self.give_back.give_back_all(returns_end_s)

    async def _stop_readers(self, closer: asyncio.Task[Any] | None) -> None:
        """The background work and the readers stopped, the receivers still waiting failed.
        Each step does nothing once done: ``_close_all`` runs them again, as a cancellation
        may have skipped some."""
        if closer is not self._keeper:  # (the keeper, closing at the loop's end, waits here)
            self._keeper.cancel()
            await asyncio.wait({self._keeper})
        self.inbox_limits.close()  # its channels stop counting in the process's limits
        await self.resync.cancel()
        # Every shard's readers at once: each may wait up to failover_timeout to recover a
        # lost reply, which one after another would make a close() wait that once per shard.
        await asyncio.gather(*(shard.close_readers() for shard in self._shards))
        # What the readers popped has been handed over; nothing more will come to those
        # still waiting, and a receive() must not hang on a closed session.
        self._fail_waiters()

    def _hurry(self) -> None:
        """close() was cancelled: whatever it was waiting for, the rest waits for no reply."""
        self._hurried = True
        for shard in self._shards:
            for reader in shard.readers():
                reader.abort()

    def _fail_waiters(self) -> None:
        closed = RedisUnavailable("the channel layer was closed while receive() waited")
        for shard in self._shards:
            self.deliveries.fail_waiters(shard.spec.index, closed)

    async def _end(self, closer: asyncio.Task[Any] | None) -> None:
        try:
            await self._close_all(closer)
        except asyncio.CancelledError:  # (the event loop shutting down meanwhile)
            self._hurry()
            await self._close_all(closer)
            raise

    async def _close_all(self, closer: asyncio.Task[Any] | None) -> None:
        """The readers' stop again (a cancellation may have skipped it), then what must run
        whatever happened before."""
        await self._stop_readers(closer)
        await self.give_back.stop()  # nothing will try again: what is left is logged lost
        # At once, as their readers: each may wait CLOSE_RETURN_TIMEOUT_S for its replies.
        drain_s = 0.0 if self._hurried else CLOSE_RETURN_TIMEOUT_S
        closing = [shard.close(drain_s) for shard in self._shards]
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result  # (a bug: the others closed all the same)
