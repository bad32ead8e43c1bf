"""The command connection to one master: pipelined, ordered, and carried through failovers.

Every send, group operation and flush of a process goes through one link per master, written
back to back on one socket. When the connection breaks or the server turns out not to be the
master any more, the requests whose replies are missing go back to the head of the queue, in
their original order, and are written again once a new master is found. Order matters: a
receiver drops a message whose sequence number is not above the last one it saw from the same
sender, so a retried message must never overtake a later one. Re-sending a request whose first
copy did land is harmless for the same reason (and, for normal channels, because the PUSH
script refuses a sequence number it already applied).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from ._backoff import Backoff
from ._resp import Arg, ReplyError, RespProtocol, pack
from ._scripts import Script
from ._server import Locator, ServerInfo, ServerSettings, connect_to_master, give_up
from ._stats import ShardStats
from .exceptions import ConnectionLost, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.link")

# Error replies that mean "not executed here, try the current master": a demoted master
# (READONLY), a replica still loading or cut off (LOADING, MASTERDOWN), blocked clients
# kicked on a role change (UNBLOCKED), a script cache emptied by a restart (NOSCRIPT).
_RETRY_PREFIXES = ("READONLY", "LOADING", "MASTERDOWN", "UNBLOCKED", "NOSCRIPT", "TRYAGAIN")


class _Request:
    __slots__ = ("deadline", "future", "packed", "sent_at")

    def __init__(self, packed: bytes, future: asyncio.Future[object], deadline: float) -> None:
        self.packed = packed
        self.future = future
        self.deadline = deadline
        self.sent_at = 0.0


class CommandLink:
    """One pipelined connection to the current master, re-established on demand."""

    def __init__(
        self,
        locator: Locator,
        settings: ServerSettings,
        on_server: Callable[[ServerInfo], None],
        stats: ShardStats,
    ) -> None:
        self._locator = locator
        self._stats = stats
        self._settings = settings
        self._on_server = on_server
        self._queue: deque[_Request] = deque()  # waiting for a usable connection
        self._inflight: deque[_Request] = deque()  # written, reply pending
        self._retry: deque[_Request] = deque()  # refused by a server that is not the master
        self._protocol: RespProtocol | None = None
        self._usable = False
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._backoff = Backoff()
        self.server: ServerInfo | None = None

    # -- submitting -------------------------------------------------------------------

    def submit(self, *args: Arg) -> asyncio.Future[object]:
        """Queues a command; the future resolves with the reply, or RedisUnavailable."""
        return self.submit_packed(pack(*args))

    def submit_packed(self, packed: bytes) -> asyncio.Future[object]:
        if self._closed:
            raise RedisUnavailable("the channel layer was closed")
        loop = asyncio.get_running_loop()
        request = _Request(
            packed, loop.create_future(), time.monotonic() + self._settings.failover_timeout_s
        )
        if self._usable:
            self._write(request)
        else:
            self._queue.append(request)
            self._ensure_connecting()
        return request.future

    async def call(self, *args: Arg) -> object:
        return await self.submit(*args)

    def submit_script(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg]
    ) -> asyncio.Future[object]:
        return self.submit_packed(pack("EVALSHA", script.sha, len(keys), *keys, *args))

    def _write(self, request: _Request) -> None:
        assert self._protocol is not None
        self._protocol.write(request.packed)
        request.sent_at = time.monotonic()
        self._inflight.append(request)
        if self._watchdog is None:
            self._arm_watchdog(request.sent_at)

    # -- replies (called by the protocol, in order) ------------------------------------

    def on_reply(self, reply: object) -> None:
        request = self._inflight.popleft()
        if isinstance(reply, ReplyError):
            self._on_error_reply(request, reply)
        elif not request.future.done():
            request.future.set_result(reply)
        if not self._inflight and not self._usable and self._protocol is not None:
            self._protocol.abort()  # drained a connection to a non-master: move on

    def _on_error_reply(self, request: _Request, reply: ReplyError) -> None:
        text = str(reply)
        if text.startswith(_RETRY_PREFIXES):
            if self._usable:
                logger.warning(
                    "Redis at %s is not usable as master (%s); looking for the master",
                    self._describe_server(),
                    text.split(" ", 1)[0],
                    extra={"event": "not_master"},
                )
            self._usable = False
            self._retry.append(request)
        elif not request.future.done():
            request.future.set_exception(RedisCommandError(text))

    def on_lost(self, exc: BaseException | None) -> None:
        self._disarm_watchdog()
        self._protocol = None
        self._usable = False
        pending = [*self._retry, *self._inflight, *self._queue]
        self._stats.retries += len(self._retry) + len(self._inflight)
        self._retry.clear()
        self._inflight.clear()
        self._queue = deque(r for r in pending if not r.future.done())
        if not self._closed:
            logger.warning(
                "Lost the connection to Redis at %s (%s); %d requests will be retried",
                self._describe_server(),
                exc or "closed by the server",
                len(self._queue),
                extra={"event": "connection_lost", "pending": len(self._queue)},
            )
        if self._queue:
            self._ensure_connecting()

    # -- reply watchdog ----------------------------------------------------------------

    def _arm_watchdog(self, since: float) -> None:
        loop = asyncio.get_running_loop()
        delay = since + self._settings.reply_timeout_s - time.monotonic()
        self._watchdog = loop.call_later(max(delay, 0.0), self._check_replies)

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_replies(self) -> None:
        self._watchdog = None
        if not self._inflight:
            return
        oldest = self._inflight[0].sent_at
        if time.monotonic() - oldest >= self._settings.reply_timeout_s:
            self.drop_connection(f"no reply for {self._settings.reply_timeout_s} s")
        else:
            self._arm_watchdog(oldest)

    # -- connecting --------------------------------------------------------------------

    def drop_connection(self, reason: str) -> None:
        """Abandons the current connection (a failover was announced, or it hangs)."""
        if self._protocol is not None:
            logger.warning(
                "Dropping the connection to %s: %s",
                self._describe_server(),
                reason,
                extra={"event": "connection_dropped"},
            )
            self._protocol.abort(ConnectionLost(reason))

    def nudge(self) -> None:
        """A new master was announced: retry now rather than at the next backoff step."""
        self._backoff.nudge()

    def _ensure_connecting(self) -> None:
        if self._connecting is None and not self._closed:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        started = time.monotonic()
        try:
            await self._connect_until_deadline()
        finally:
            self._connecting = None
            self._stats.master_wait_s += time.monotonic() - started

    async def _connect_until_deadline(self) -> None:
        self._backoff.reset()
        started = time.monotonic()
        last_error = "no attempt yet"
        while self._queue and not self._closed:
            self._fail_overdue(last_error, started)
            if not self._queue:
                return
            try:
                protocol, info = await connect_to_master(
                    self._locator, self._settings, self, load_scripts=True
                )
            except ConnectionLost as err:
                last_error = str(err)
                logger.info("Waiting for a Redis master: %s", err, extra={"event": "waiting"})
                await self._backoff.wait()
                continue
            except RedisCommandError as err:
                self._fail_all(err)
                return
            self._adopt(protocol, info)
            return

    def _adopt(self, protocol: RespProtocol, info: ServerInfo) -> None:
        if self._closed:
            protocol.abort()
            return
        self._protocol = protocol
        self._usable = True
        if self.server is not None:
            self._stats.reconnects += 1
        self.server = info
        self._on_server(info)
        queued, self._queue = self._queue, deque()
        for request in queued:
            if not request.future.done():
                self._write(request)

    def _fail_overdue(self, last_error: str, started: float) -> None:
        now = time.monotonic()
        if not any(r.deadline <= now for r in self._queue):
            return
        error = give_up(self._locator, self._settings, now - started, last_error)
        keep: deque[_Request] = deque()
        for request in self._queue:
            if request.deadline <= now:
                if not request.future.done():
                    request.future.set_exception(error)
            else:
                keep.append(request)
        self._queue = keep

    def _fail_all(self, error: Exception) -> None:
        for request in self._queue:
            if not request.future.done():
                request.future.set_exception(error)
        self._queue.clear()

    def _describe_server(self) -> str:
        return self.server.endpoint.describe() if self.server else self._locator.describe()

    # -- closing -----------------------------------------------------------------------

    async def close(self, drain_timeout_s: float) -> None:
        """Waits briefly for replies still due, then closes; safe to call twice."""
        if self._closed:
            return
        deadline = time.monotonic() + drain_timeout_s
        while (self._inflight or self._queue) and time.monotonic() < deadline:
            pending = [r.future for r in (*self._inflight, *self._queue)]
            await asyncio.wait(pending, timeout=max(deadline - time.monotonic(), 0.0))
        self._closed = True
        self._fail_all(RedisUnavailable("the channel layer was closed"))
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.wait({self._connecting})
        self._disarm_watchdog()
        if self._protocol is not None:
            await self._protocol.aclose()
