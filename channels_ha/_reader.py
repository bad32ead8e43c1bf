"""Blocking pops on a connection of their own, which follows the master through failovers.

A reader pops only while somebody in this process is waiting to receive, so that an idle
process leaves its messages in Redis (where ``capacity`` can push back on senders, and where
another process can take a normal channel's message); the normal-channel reader also
recovers, with nobody waiting, a batch whose reply was lost (see ``_normal_reader``). A
receiver blocked during a failover just keeps waiting; only after ``failover_timeout``
without a master are the waiting receivers told, with RedisUnavailable. A reply lost with
its connection makes the reader connect again at once; lost again in a row, not at once
(``_lost_replies``). What it costs is the subclass's: an inbox pop's batch is lost
(``_inbox_reader``), a normal channel's is recovered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ._backoff import Backoff
from ._connection import connect_to_master, scripts_refused
from ._constants import (
    BLOCKING_POP_TIMEOUT_S,
    CLOSE_RETURN_TIMEOUT_S,
    FAILURE_LOG_INTERVAL_S,
)
from ._lost_replies import LostReplies, Sent
from ._resp import FutureSink, pack
from ._server import (
    REDIRECT_ERRORS,
    RETRY_ERRORS,
    Announcements,
    Locator,
    ServerInfo,
    ServerSettings,
    give_up,
)
from ._stats import ShardStats
from ._throttle import LogThrottle
from ._unblock import UnblockFn, unblock
from .exceptions import ConnectionLost, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.reader")

KeysFn = Callable[[], list[str]]
DeliverFn = Callable[[str, list[bytes]], None]
FailFn = Callable[[Exception, "str | None"], None]  # every receiver waiting, or of one list


class BlockingReader:
    """Runs ``BLMPOP`` over the keys that ``keys()`` names, handing replies to ``deliver``.

    One request is in flight at a time; a subclass may send other requests (``_request``)
    and read their replies (``_hand_over``), with the same connection, watchdog and
    stopping.
    """

    _loads_scripts = False  # whether its connections load the server scripts

    def __init__(
        self,
        *,
        locator: Locator,
        settings: ServerSettings,
        unblock: UnblockFn,
        on_server: Callable[[ServerInfo], None],
        keys: KeysFn,
        count: int,
        deliver: DeliverFn,
        fail: FailFn,
        stats: ShardStats,
        announcements: Announcements | None = None,
    ) -> None:
        self._announcements = announcements
        self._stats = stats
        self._locator = locator
        self._settings = settings
        self._unblock_via = unblock
        self._on_server = on_server
        self._keys = keys
        self._count = count
        self._deliver = deliver
        self._fail = fail
        self._client: FutureSink | None = None
        self._server: ServerInfo | None = None
        self._pending: asyncio.Future[object] | None = None
        self._pending_keys: list[str] = []
        self._packed_pop = b""  # the BLMPOP of _pending_keys
        self._pops = True  # whether the request in flight can bring messages
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None  # the task close() or abort() stopped
        self._stopping = False
        self._hurried = False  # abort(): nothing more is waited for from Redis
        self._backoff = Backoff()
        self._lost = LostReplies()  # paces reconnecting after replies lost in a row
        self._loop = asyncio.get_running_loop()  # a reader belongs to one session, one loop
        self._pop_limit_s = BLOCKING_POP_TIMEOUT_S + settings.reply_timeout_s
        self._pop_deadline = 0.0
        self._pop_heard_at = 0.0  # when the pop went out, or bytes of its reply last came
        self._sent_at = 0.0  # just before the pop went out
        self._cut_arrived = 0  # bytes of the last reply lost that had arrived (see Sent)
        self._watchdog: asyncio.TimerHandle | None = None
        self._failure_log = LogThrottle(FAILURE_LOG_INTERVAL_S)
        self._last_error: Exception | None = None  # since a pop was last answered

    def start(self) -> None:
        if self._task is None:
            self._task = self._loop.create_task(self._run())
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The loop catches what its steps raise; should it end anyway while not closed (a
        bug in its cleanup), it is logged and started again, so receivers are not left
        waiting for a reader that is gone."""
        if task is not self._task or task.cancelled() or self._loop.is_closed():
            return  # closed, or cancelled with the event loop
        if getattr(task, "cancelling", lambda: 0)():  # Python 3.11+
            return  # cancelled (its loop shutting down) and then its cleanup failed: not again
        logger.error(
            "The blocking reader ended unexpectedly; starting it again",
            exc_info=task.exception(),
            extra={"event": "reader_restarted"},
        )
        self._task, self._stopping, self._pending = None, False, None
        self.start()

    def wake(self) -> None:
        """Somebody started waiting: pop, and re-issue a pop blocked on other keys."""
        if self._task is None:  # closed: nothing to pop for, nobody to unblock
            return
        self._wanted.set()
        if self._pending is not None and self._keys() != self._pending_keys:
            self._unblock()

    def nudge(self) -> None:
        """A new master was announced: retry now rather than at the next backoff step."""
        self._backoff.nudge()
        self._lost.nudge()

    def drop_connection(self, reason: str) -> None:
        if self._client is not None and self._client.protocol is not None:
            logger.info("Reader drops its connection: %s", reason)
            self._client.protocol.abort(ConnectionLost(reason))

    @property
    def connected_to(self) -> ServerInfo | None:
        return self._server

    @property
    def live_server(self) -> ServerInfo | None:
        """The server of the connection, while it is open (``connected_to`` stays the last)."""
        return self._server if self._open_client() is not None else None

    async def settled(self, key: str) -> bool:
        """Waits for the pop in flight, if it covers ``key``; True if there was one and its
        reply is handed over now (what it brought of ``key`` is in the buffers).

        The reader resumes on a reply before any other waiter of the same pop (its callback
        was added first) and hands the reply over in that step. Bounded: a pop the server
        does not answer is dropped by the watchdog within the pop limit.
        """
        pending = self._pending
        if pending is None or not self._pops or key not in self._pending_keys:
            return False
        done, _ = await asyncio.wait({pending}, timeout=self._pop_limit_s)
        return bool(done) and self._pending is not pending  # (else stuck, or stopped)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                try:
                    keys = self._keys()
                    if not keys and not self._idle_work():
                        self._wanted.clear()
                        await self._wanted.wait()
                        continue
                    await self._pop_once(keys)
                except Exception:  # a bug: ending here would leave every receiver waiting
                    count = self._failure_log.due("run")
                    if count:
                        logger.error(
                            "The blocking reader failed (%d time(s) since the last report); "
                            "it goes on with a new connection",
                            count,
                            exc_info=True,
                            extra={"event": "reader_failed"},
                        )
                    await self._start_over()
        finally:
            # A loop closed without shutting down leaves this pending; collected, it is
            # closed here with nothing able to run (the session was abandoned: _dead_loop).
            if not self._loop.is_closed():
                await self._end()

    async def _end(self) -> None:
        self._stopping = True  # from here on, close() must not interrupt us
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        try:
            await self._finish_pending()
            await self._release()
        except asyncio.CancelledError:  # abort(), or the event loop shutting down
            self._cut_short()
            raise
        finally:
            await self._disconnect()

    async def _pop_once(self, keys: list[str]) -> None:
        client = self._open_client()
        if client is None:
            await self._lost.pause()  # replies cut each time must not make a loop
            try:
                client = await self._connection()
            except (RedisUnavailable, RedisCommandError) as err:
                self._fail(err, None)  # the receivers waiting hear of it now, not after a pause
                await self._not_connected(err)
                return
            keys = self._keys()  # seconds may have passed: a channel may be giving back now
            if not keys and not self._idle_work():
                return
        # The protocol's clock (uvloop's differs), read before the request goes out: Redis
        # runs it after this.
        self._sent_at = time.monotonic()
        try:
            pending, replied = self._submit_pop(client, keys)
        except ConnectionLost:  # closed before its loss reached us: lost, as any other
            self._client = None
            await self._backoff.wait()
            return
        self._pop_deadline = self._loop.time() + self._pop_limit_s
        self._pop_heard_at = self._sent_at
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._pop_deadline, self._check_pop)
        # The pop itself is not awaited: cancelling this task would cancel it, and its reply
        # may carry messages Redis already removed (_finish_pending collects it then).
        # asyncio.wait or shield would do the same at two to three times the cost per pop.
        await replied
        self._pending = None
        await self._take_reply(pending)

    def _submit_pop(
        self, client: FutureSink, keys: list[str]
    ) -> tuple[asyncio.Future[object], asyncio.Future[None]]:
        """The pop in flight, and a future of ours that completes when it does."""
        protocol = client.protocol
        received = protocol.received_bytes if protocol is not None else 0
        sent_at = self._sent_at
        pending = client.submit_packed(self._request(keys))
        replied: asyncio.Future[None] = self._loop.create_future()

        def settled(future: asyncio.Future[object]) -> None:
            # The exception is read here (and again in _take_reply or in _finish_pending).
            if not future.cancelled() and isinstance(future.exception(), ConnectionLost):
                now = protocol.received_bytes if protocol is not None else received
                self._cut_arrived = now - received
                self._reply_lost(Sent(keys, sent_at, self._cut_arrived))
            if not replied.done():
                replied.set_result(None)

        pending.add_done_callback(settled)
        self._pending, self._pending_keys = pending, keys
        return pending, replied

    def _request(self, keys: list[str]) -> bytes:
        """The next request: a BLMPOP, encoded once per key set."""
        if keys != self._pending_keys or not self._packed_pop:
            self._packed_pop = pack(
                "BLMPOP", BLOCKING_POP_TIMEOUT_S, len(keys), *keys, "LEFT", "COUNT", self._count
            )
        return self._packed_pop

    def _check_pop(self) -> None:
        """The watchdog of blocking pops: one timer per reader, re-armed only when it fires,
        rather than one per pop. A pop unanswered past its limit drops the connection,
        which fails the pop and makes the next one reconnect."""
        self._watchdog = None
        if self._pending is None or self._pending.done() or self._stopping:
            return
        if self._loop.time() < self._pop_deadline:
            self._watchdog = self._loop.call_at(self._pop_deadline, self._check_pop)
            return
        protocol = self._client.protocol if self._client is not None else None
        if protocol is not None and protocol.received_at > self._pop_heard_at:
            # A large batch still arriving over a slow link: Redis already removed it from
            # the list, and dropping the connection now would lose it.
            self._pop_heard_at = protocol.received_at
            self._pop_deadline = self._loop.time() + self._settings.reply_timeout_s
            self._watchdog = self._loop.call_at(self._pop_deadline, self._check_pop)
            return
        self.drop_connection(f"no reply to a blocking pop within {self._pop_limit_s} s")

    async def _take_reply(self, pending: asyncio.Future[object]) -> None:
        try:
            reply = pending.result()
        except ConnectionLost as err:
            self._reply_cut(err)
            return
        except RedisCommandError as err:
            await self._on_error(err)
            return
        # Reset on a pop answered, not on a connection made: a server that accepts the
        # connection and refuses the pop (CLUSTERDOWN) must meet a growing pause.
        self._backoff.reset()
        self._last_error = None
        if self._lost.in_a_row:
            self._lost.answered()
        self._hand_over(reply)

    def _reply_cut(self, err: ConnectionLost) -> None:
        """The connection went before the reply came: counted (see ``_lost_replies``), and
        the next request goes on a new connection."""
        self._client = None
        self._lost.lost(self._describe_server(), self._describe_request(), self._cut_arrived)
        self._last_error = err

    def _describe_request(self) -> str:
        """What the request in flight was, for a log line."""
        return f"a pop of {some_keys(self._pending_keys)}"

    async def _on_error(self, err: RedisCommandError) -> None:
        """A server that is not the master (any more) makes us look again; others fail."""
        self._last_error = err
        self._lost.answered()  # (a reply all the same)
        if str(err).startswith(RETRY_ERRORS + REDIRECT_ERRORS):
            scripts_refused(self._settings, self._server, str(err))
            self.drop_connection(f"{str(err).split(' ', 1)[0]} from {self._describe_server()}")
            self._client = None
        else:  # about the command (WRONGTYPE, NOPERM...): the connection itself is fine
            logger.error("Blocking pop failed: %s", err)
            self._fail(err, None)
            # Only receivers that call again see this again: a short pause, not the growing
            # one of reconnecting, which nothing would reset while the connection is kept.
            self._backoff.reset()
        await self._backoff.wait()  # no tight loop if it keeps failing

    def _describe_server(self) -> str:
        return self._server.endpoint.describe() if self._server else self._locator.describe()

    def _hand_over(self, reply: object) -> None:
        if isinstance(reply, list):
            key, elements = reply
            self._hand_over_batch(key, elements)

    def _hand_over_batch(self, key: bytes, elements: list[bytes]) -> None:
        try:
            self._deliver(key.decode(), elements)
        except Exception:  # a bug: losing one batch beats every receiver waiting forever
            self._stats.delivery_failures += 1
            count = self._failure_log.due()
            if count:
                logger.error(
                    "Could not deliver up to %d popped messages of %s (%d failed "
                    "batch(es) since the last report); the reader goes on",
                    len(elements),
                    key.decode(errors="replace"),
                    count,
                    exc_info=True,
                    extra={"event": "delivery_failed", "messages": len(elements)},
                )

    def _open_client(self) -> FutureSink | None:
        client = self._client
        if client is not None and client.protocol is not None and not client.protocol.closed:
            return client
        return None

    async def _connection(self) -> FutureSink:
        """A new connection (the last one is gone), the wait counted as waiting for a master."""
        started = time.monotonic()
        try:
            return await self._reconnect(started)
        finally:
            self._stats.master_wait_s += time.monotonic() - started

    async def _reconnect(self, started: float) -> FutureSink:
        deadline = started + self._settings.failover_timeout_s
        while True:
            try:
                return await self._connect_once()
            except ConnectionLost as err:
                self._last_error = err
                if time.monotonic() >= deadline:
                    waited = time.monotonic() - started
                    raise give_up(self._locator.describe(), self._settings, waited, err) from err
                if self._backoff.report_due():
                    logger.info("Reader waiting for a Redis master: %s", err)
                await self._backoff.wait()

    async def _connect_once(self) -> FutureSink:
        """One attempt: ConnectionLost if no master answered, RedisCommandError if refused."""
        client = FutureSink()
        protocol, info = await connect_to_master(
            self._locator, self._settings, client, self._loads_scripts, self._announcements
        )
        client.protocol = protocol
        self._client, self._server = client, info
        self._connected()
        self._on_server(info)
        return client

    async def _not_connected(self, err: RedisUnavailable | RedisCommandError) -> None:
        """No connection, after the receivers waiting were told. A refused handshake (NOAUTH
        after a password change, max clients reached) is not tried again at once: the next
        receive(), or a subclass's own work, would make a connection after another in a
        tight loop. RedisUnavailable comes after failover_timeout of paced attempts."""
        self._last_error = err
        if isinstance(err, RedisCommandError):
            count = self._failure_log.due("refused")
            if count:
                logger.error(
                    "Reader refused by Redis (%d time(s) since the last report): %s", count, err
                )
            await self._backoff.wait()

    def _connected(self) -> None:
        """A new connection is there, before its first request."""

    def _reply_lost(self, sent: Sent) -> None:
        """The request ``sent`` lost its connection before its reply came: called at once,
        on any path (close() collecting it too); ``sent.arrived`` is how much of the reply
        had come."""

    def _idle_work(self) -> bool:
        """Whether to send a request although nobody waits (with no keys to pop)."""
        return False

    async def _release(self) -> None:
        """At the end, after the request in flight is collected, before disconnecting."""

    def _cut_short(self) -> None:
        """The end was cancelled before ``_release`` was over (a subclass logs the loss)."""

    async def _start_over(self) -> None:
        """After an unexpected error: collects the pop in flight (its reply may hold messages
        Redis removed already), then leaves the connection, whose state is unknown."""
        try:
            await self._finish_pending()
        except Exception:  # not one more: the connection goes anyway
            logger.debug("Could not collect the pop in flight", exc_info=True)
        self._pending = None
        await self._disconnect()
        await self._backoff.wait()  # no tight loop if it keeps failing

    # -- stopping ------------------------------------------------------------------------

    def _unblock(self) -> None:
        """Ends the request in flight early (see ``_unblock``)."""
        if self._pending is not None and self._server is not None:
            unblock(self._unblock_via, self._server, self._pending, lambda: self._pending)

    async def _finish_pending(self) -> None:
        """Collects the reply of a pop in flight, so that no popped message is lost."""
        pending = self._pending
        if pending is None or pending.cancelled() or self._hurried:
            return
        if pending.done() and pending.exception() is not None:
            return
        self._unblock()
        done, _ = await asyncio.wait({pending}, timeout=CLOSE_RETURN_TIMEOUT_S)
        if done and pending.exception() is None:
            self._hand_over(pending.result())

    async def _disconnect(self) -> None:
        client = self._client  # kept while it closes: abort() drops it, no clean close waited
        if client is not None and client.protocol is not None:
            await client.protocol.aclose()
        self._client = None

    async def close(self) -> None:
        """Stops popping; messages popped meanwhile are still delivered. Idempotent."""
        ending = self._stop()
        if ending is not None:
            # asyncio.wait, unlike gather, does not cancel the task if this caller is cancelled.
            await asyncio.wait({ending})

    def abort(self) -> None:
        """close() itself was cancelled: ends without waiting for Redis. The connection goes
        at once, with the reply of a pop in flight (logged lost), and nothing is recovered."""
        self._hurried = True
        self.drop_connection("the channel layer's close() was cancelled")
        ending = self._stop()
        if ending is not None and self._stopping:  # (not cancelled by _stop(): in its end,
            ending.cancel()  # it may be waiting for a reply, or for a master)

    def _stop(self) -> asyncio.Task[None] | None:
        """Cancels the loop, once (not its end: that collects the pop in flight); the task."""
        task, self._task = self._task, None
        if task is not None:
            self._ending = task
            if not self._stopping:
                task.cancel()
        return self._ending


def some_keys(keys: list[str], shown: int = 3) -> str:
    """Keys for a log line: a reader may pop thousands of channels."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return (", ".join(keys[:shown]) or "nothing") + more
