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
from collections.abc import Awaitable, Callable, Sequence

from ._backoff import Backoff
from ._connection import connect_to_master, scripts_refused
from ._resp import Arg, ReplyError, RespProtocol, pack
from ._scripts import Script
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
from .exceptions import ConnectionLost, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.link")


class Request:
    """One command on its way: the bytes to write, who waits for the reply, until when."""

    __slots__ = ("deadline", "due", "future", "packed", "patience_s", "slot")

    def __init__(
        self, packed: bytes, deadline_s: float, slot: int = -1, patience_s: float = 0.0
    ) -> None:
        self.packed = packed
        self.future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.deadline = time.monotonic() + deadline_s
        self.patience_s = patience_s  # how long the server may legitimately take (WAIT)
        self.due = 0.0  # when written, plus patience: a reply after that is late
        self.slot = slot  # the Cluster slot of its keys (-1: a node's, not a slot's)


# A Cluster node's link gives back what it cannot serve, with the reason, to the router.
HandBack = Callable[["CommandLink", list[Request], str], None]
# Asks the deployment whether the link's server is still the master for what it carries.
Verify = Callable[["CommandLink"], Awaitable[bool]]

_NOT_TRIED = "no connection attempt yet"
_MAX_DEADLINE_CHECKS = 100_000  # bounds the deadline checks during one connection attempt
SUSPECT_AFTER_S = 0.5  # a reply this late: check that the server is still the master
SUSPECT_INTERVAL_S = 0.25  # and check again this often until reply_timeout


class CommandLink:
    """One pipelined connection to the current master, re-established on demand."""

    def __init__(
        self,
        locator: Locator,
        settings: ServerSettings,
        on_server: Callable[[ServerInfo], None],
        stats: ShardStats,
        hand_back: HandBack | None = None,
        verify: Verify | None = None,
        announcements: Announcements | None = None,
        routed_because: Callable[[], str] | None = None,
        patience: Callable[[], float | None] | None = None,
    ) -> None:
        self._locator = locator
        # How long a connection attempt may take, if the router knows the node only from a
        # hint (see ClusterRouter._patience_for); None: as long as the timeouts allow.
        self._patience = patience
        self._routed_because = routed_because  # why requests came here (a router's last error)
        self._announcements = announcements
        self._hand_back = hand_back
        self._verify = verify
        self._verifying: asyncio.Task[None] | None = None
        self._doubt: deque[tuple[Request, object]] | None = None  # late replies on hold
        self._doubt_since = 0.0
        self._stats = stats
        self._settings = settings
        self._on_server = on_server
        self._queue: deque[Request] = deque()  # waiting for a usable connection
        self._inflight: deque[Request] = deque()  # written, reply pending
        self._retry: deque[Request] = deque()  # refused by a server that is not the master
        self._protocol: RespProtocol | None = None
        self._usable = False
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._backlog, self._progress_at = (0, 0), 0.0  # see _stalled_s
        self._closed = False
        self._backoff = Backoff()  # reset by a successful reply, not by a new attempt
        self._last_error = _NOT_TRIED
        self._refused = False  # a server refused requests: wait before the next attempt
        self._holding: asyncio.TimerHandle | None = None  # a failover runs: writes wait
        self.server: ServerInfo | None = None
        self.generation = 0  # counts connections adopted; tells a reconnect happened

    # -- submitting -------------------------------------------------------------------

    def submit(
        self, *args: Arg, key: str | None = None, patience_s: float = 0.0
    ) -> asyncio.Future[object]:
        """Queues a command; the future resolves with the reply, or RedisUnavailable.

        ``key`` names the key the command is about, for routing on Cluster (ignored here);
        ``patience_s`` is how long the server may take on purpose (``WAIT``).
        """
        return self.submit_packed(pack(*args), key, patience_s)

    def submit_packed(
        self, packed: bytes, key: str | None = None, patience_s: float = 0.0
    ) -> asyncio.Future[object]:
        if self._closed:
            raise RedisUnavailable("the channel layer was closed")
        request = Request(packed, self._settings.failover_timeout_s, patience_s=patience_s)
        self.submit_request(request)
        return request.future

    def submit_request(self, request: Request, asking: bool = False) -> None:
        """Queues a request made elsewhere (the Cluster router's); ``asking`` prefixes ASKING."""
        if asking:
            # slot -2: an internal request that a router drops instead of re-routing.
            self.submit_request(Request(pack("ASKING"), self._settings.failover_timeout_s, -2))
        if self._usable and self._holding is None:
            if not self._write(request):
                self._lost_unwritten(deque([request]))
        else:
            self._queue.append(request)
            self._ensure_connecting()

    def submit_script(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg]
    ) -> asyncio.Future[object]:
        return self.submit_packed(pack("EVALSHA", script.sha, len(keys), *keys, *args), keys[0])

    def connection_of(self, key: str) -> object:
        """Which connection requests about ``key`` go to now (changes on reconnect)."""
        return self.generation

    def inflight_slots(self) -> set[int]:
        """Slots of the requests whose replies are due or on hold."""
        held = [request for request, _ in self._doubt or ()]
        return {request.slot for request in (*held, *self._inflight) if request.slot >= 0}

    def inflight_in_slot(self, slot: int, after: Request) -> list[Request]:
        """Requests of ``slot`` written after ``after`` whose replies are still due."""
        later = list(self._inflight)
        index = later.index(after) + 1 if after in later else 0
        return [request for request in later[index:] if request.slot == slot]

    def _write(self, request: Request) -> bool:
        """Writes ``request``; False, writing nothing, if the connection is closed already."""
        assert self._protocol is not None
        try:
            self._protocol.write(request.packed)
        except ConnectionLost:
            return False
        request.due = time.monotonic() + request.patience_s
        self._inflight.append(request)
        if self._watchdog is None:  # the first request after a quiet spell
            self._stalled_s(baseline=True)
            self._arm_watchdog(request.due)
        return True

    def _lost_unwritten(self, unwritten: deque[Request]) -> None:
        """A write found the connection closed before its loss reached this link (it closed
        while being adopted, say): that is the loss, handled as ever, with the requests not
        written queued after those whose replies it took, before those that came later."""
        unwritten.extend(self._queue)
        self._queue = unwritten
        self.on_lost(ConnectionLost("connection already closed"))

    # -- replies (called by the protocol, in order) ------------------------------------

    def on_reply(self, reply: object) -> None:
        request = self._inflight.popleft()
        if self._doubt is not None:
            self._doubt.append((request, reply))
        elif self._verify is not None and time.monotonic() - request.due >= SUSPECT_AFTER_S:
            # A late reply may come from a frozen master that just woke up and does not
            # know yet that it was replaced: its writes are about to be discarded. Hold
            # this reply and the ones after it until the deployment confirms the master.
            self._doubt = deque([(request, reply)])
            self._doubt_since = time.monotonic()
            self._start_verifying()
        else:
            self._settle(request, reply)

    def _settle(self, request: Request, reply: object) -> None:
        if isinstance(reply, ReplyError):
            self._on_error_reply(request, reply)
        else:
            if not request.future.done():
                request.future.set_result(reply)
            self._backoff.reset()
        if not self._inflight and not self._usable and self._protocol is not None:
            self._protocol.abort()  # drained a connection to a non-master: move on

    def _on_error_reply(self, request: Request, reply: ReplyError) -> None:
        text = str(reply)
        if self._hand_back is not None and text.startswith(REDIRECT_ERRORS):
            self._hand_back(self, [request], text)
        elif text.startswith(RETRY_ERRORS):
            scripts_refused(self._settings, self.server, text)
            self._last_error, self._refused = text, True
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
        doubted = [request for request, _ in self._doubt or ()]
        self._doubt = None
        pending = [*doubted, *self._retry, *self._inflight, *self._queue]
        self._stats.retries += len(doubted) + len(self._retry) + len(self._inflight)
        self._retry.clear()
        self._inflight.clear()
        self._queue = deque(r for r in pending if not r.future.done())
        if self._closed:  # nothing will write them again
            self._fail_all(RedisUnavailable("the channel layer was closed"))
            return
        self._last_error = f"lost the connection to {self._describe_server()}: {exc or 'closed'}"
        logger.warning(
            "Lost the connection to Redis at %s (%s); %d requests will be retried",
            self._describe_server(),
            exc or "closed by the server",
            len(self._queue),
            extra={"event": "connection_lost", "pending": len(self._queue)},
        )
        if self._hand_back is not None:
            self._hand_over_queue(f"connection lost: {exc or 'closed by the server'}")
        elif self._queue:
            self._ensure_connecting()

    # -- reply watchdog ----------------------------------------------------------------

    def _arm_watchdog(self, since: float) -> None:
        """Checks on the oldest reply due: first whether the server still is the master
        (from ``SUSPECT_AFTER_S`` on), then whether it hangs (at ``reply_timeout``)."""
        age = time.monotonic() - since
        next_check = SUSPECT_AFTER_S - age if age < SUSPECT_AFTER_S else SUSPECT_INTERVAL_S
        if age < self._settings.reply_timeout_s:
            delay = max(min(next_check, self._settings.reply_timeout_s - age), 0.0)
        else:  # overdue, yet bytes were moving at the last check
            delay = SUSPECT_INTERVAL_S
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check_replies)

    def _stalled_s(self, baseline: bool = False) -> float:
        """Seconds since the connection last made progress: a reply byte arriving, or (as
        the checks saw it) a backlog of requests draining into the socket, as a large request
        over a slow link does. Writes the socket takes without a backlog say nothing: a
        frozen server's kernel buffers take megabytes. ``baseline`` starts the backlog
        record afresh (the first request after a quiet spell)."""
        now = time.monotonic()
        protocol = self._protocol
        if protocol is None:
            return now - self._progress_at
        accepted, unsent = protocol.backlog()
        last_accepted, last_unsent = self._backlog
        if not baseline and last_unsent > 0 and accepted != last_accepted:
            self._progress_at = now
        self._backlog = (accepted, unsent)
        return now - max(self._progress_at, protocol.received_at)

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_replies(self) -> None:
        self._watchdog = None
        if not self._inflight:
            return
        first = self._inflight[0]
        oldest, now = first.due, time.monotonic()
        age = now - oldest
        timeout_s = self._settings.reply_timeout_s
        stalled_s = self._stalled_s()  # at every check: the backlog record stays fresh
        if age >= timeout_s and stalled_s >= timeout_s:
            self.drop_connection(f"no reply, and no byte moving, for {timeout_s} s")
            return
        overdue = now >= first.deadline + first.patience_s and age >= SUSPECT_AFTER_S
        if overdue and stalled_s >= SUSPECT_AFTER_S:
            # Its caller gets RedisUnavailable at failover_timeout, not reply_timeout later.
            self.drop_connection("no reply, and no byte moving, until failover_timeout ran out")
            return
        if age >= SUSPECT_AFTER_S:
            self._start_verifying()
        self._arm_watchdog(oldest)

    def _start_verifying(self) -> None:
        """A frozen master (SIGSTOP, a stuck VM) answers nothing; once the deployment has
        replaced it, ask where the master is now and leave, before it wakes up and accepts
        writes that its demotion will discard."""
        if self._verify is None or self._verifying is not None or self._protocol is None:
            return
        self._verifying = asyncio.get_running_loop().create_task(self._verify_master())

    async def _verify_master(self) -> None:
        try:
            still_master = await self._ask_deployment()
        finally:
            self._verifying = None
        if still_master:
            self._release_doubt()
        elif still_master is False or self._doubt is not None:
            # Moved, or unknown while late replies wait: writing again is safe (receivers
            # and the PUSH script drop the copy), accepting a doomed reply is not.
            self.drop_connection("the master moved while this one stopped answering")

    async def _ask_deployment(self) -> bool | None:
        """Whether this server is still the master, asked after any doubt began."""
        assert self._verify is not None
        while True:
            asked_at = time.monotonic()
            try:
                still_master = await self._verify(self)
            except (ConnectionLost, RedisCommandError) as err:
                logger.debug("Could not check where the master is: %s", err)
                return None
            if self._doubt is None or self._doubt_since < asked_at:
                return still_master

    def _release_doubt(self) -> None:
        doubt, self._doubt = self._doubt, None
        for request, reply in doubt or ():
            self._settle(request, reply)

    # -- connecting --------------------------------------------------------------------

    @property
    def live_server(self) -> ServerInfo | None:
        """The server of the connection, while it is open (``server`` stays the last)."""
        protocol = self._protocol
        return self.server if protocol is not None and not protocol.closed else None

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

    def hold(self, limit_s: float) -> None:
        """A failover is starting: queue new requests until :meth:`release` (at the latest
        after ``limit_s``), instead of writing to a master about to be demoted."""
        if self._holding is not None:
            self._holding.cancel()
        self._holding = asyncio.get_running_loop().call_later(limit_s, self.release)

    def release(self) -> None:
        """The failover ended (or was abandoned): write what waited."""
        if self._holding is None:
            return
        self._holding.cancel()
        self._holding = None
        if self._usable and self._protocol is not None:
            self._write_queued()
        elif self._queue:
            self._ensure_connecting()

    def _ensure_connecting(self) -> None:
        # Never while a connection is still attached (draining the replies of a server that
        # stopped being the master): two sockets would feed one reply queue.
        if self._connecting is None and not self._closed and self._protocol is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        started = time.monotonic()
        try:
            await self._connect_until_deadline()
        finally:
            self._connecting = None
            self._stats.master_wait_s += time.monotonic() - started

    async def _connect_until_deadline(self) -> None:
        if self._refused:
            self._refused = False
            await self._backoff.wait()  # the last server refused requests: do not hammer it
        while self._queue and not self._closed:
            self._fail_overdue()
            if not self._queue:
                return
            try:
                protocol, info = await self._attempt()
            except ConnectionLost as err:
                self._last_error = str(err)
                if self._hand_back is not None:
                    self._hand_over_queue(self._last_error)  # the router knows where to go
                    return
                if self._backoff.report_due():
                    logger.info("Waiting for a Redis master: %s", err, extra={"event": "waiting"})
                await self._backoff.wait()
                continue
            except RedisCommandError as err:  # the handshake was refused (WRONGPASS, NOPERM)
                self._last_error, self._refused = str(err), True  # no reconnect storm
                self._fail_all(err)
                return
            self._adopt(protocol, info)
            if self._protocol is not None:
                return
            # Lost as it was adopted (a write found it closed); on_lost could not start another
            # attempt while this one runs: what it queued again waits for the next round here.
            await self._backoff.wait()

    def _adopt(self, protocol: RespProtocol, info: ServerInfo) -> None:
        if self._closed:
            protocol.abort()
            return
        self._protocol = protocol
        self._usable = True
        self.generation += 1
        if self.server is not None:
            self._stats.reconnects += 1
        self.server = info
        try:
            self._on_server(info)
        finally:  # whatever the callback does, what waited for this connection goes out
            self._write_queued()

    def _write_queued(self) -> None:
        if self._holding is not None:
            return  # a failover runs: this may still be the old master; release() writes
        if self._protocol is None:
            return  # lost meanwhile (by a write of on_server's): reconnecting writes them
        queued, self._queue = self._queue, deque()
        while queued:
            request = queued.popleft()
            if not request.future.done() and not self._write(request):
                queued.appendleft(request)
                self._lost_unwritten(queued)
                return

    async def _attempt(self) -> tuple[RespProtocol, ServerInfo]:
        """One connection attempt, paced by its own timeouts as ever; requests whose deadline
        passes meanwhile fail then, not when it ends (a frozen server accepts the connection
        and holds the handshake for reply_timeout: seen, RedisUnavailable 4 s late)."""
        patience_s = None if self._patience is None else self._patience()
        attempt = asyncio.ensure_future(
            connect_to_master(
                self._locator, self._settings, self, True, self._announcements, patience_s
            )
        )
        try:
            for _ in range(_MAX_DEADLINE_CHECKS):  # each check fails a request, or it is done
                earliest = min((r.deadline for r in self._queue), default=None)
                wait_s = None if earliest is None else max(earliest - time.monotonic(), 0.0)
                await asyncio.wait({attempt}, timeout=wait_s)
                if attempt.done():
                    break
                self._fail_overdue()
        except asyncio.CancelledError:
            attempt.cancel()
            await asyncio.wait({attempt})
            if not attempt.cancelled() and attempt.exception() is None:
                attempt.result()[0].abort()  # it connected as we were cancelled: nobody owns it
            raise
        protocol, info = await attempt
        if protocol.closed:  # lost while this task resumed: a failed attempt, not a connection
            raise ConnectionLost(f"{info.endpoint.describe()} closed the connection on connecting")
        return protocol, info

    def _hand_over_queue(self, reason: str) -> None:
        assert self._hand_back is not None
        queued, self._queue = list(self._queue), deque()
        if queued and not self._closed:
            self._hand_back(self, queued, reason)

    def _fail_overdue(self) -> None:
        now = time.monotonic()
        if not any(r.deadline <= now for r in self._queue):
            return
        waited = now - min(r.deadline for r in self._queue) + self._settings.failover_timeout_s
        reason = self._last_error
        if reason == _NOT_TRIED and self._routed_because is not None:
            reason = self._routed_because()  # they ran out of time before reaching this node
        error = give_up(self._locator.describe(), self._settings, waited, reason)
        keep: deque[Request] = deque()
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

    def pending_requests(self) -> list[Request]:
        """Requests still waiting for a connection or a reply, oldest first."""
        held = [request for request, _ in self._doubt or ()]
        return [*held, *self._retry, *self._inflight, *self._queue]

    def unsettled(self) -> list[asyncio.Future[object]]:
        """The futures of requests still waiting for a connection or a reply."""
        return [r.future for r in self.pending_requests() if not r.future.done()]

    async def close(self, drain_timeout_s: float) -> None:
        """Waits briefly for replies still due, then closes; safe to call twice, and a call
        after one that was cancelled (the Cluster router retiring links) finishes the job."""
        if not self._closed:
            deadline = time.monotonic() + drain_timeout_s
            while time.monotonic() < deadline:
                pending = self.unsettled()
                if not pending:
                    break
                await asyncio.wait(pending, timeout=max(deadline - time.monotonic(), 0.0))
            self._closed = True
            self._fail_all(RedisUnavailable("the channel layer was closed"))
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.wait({self._connecting})
        self._disarm_watchdog()
        if self._holding is not None:
            self._holding.cancel()
        if self._verifying is not None:
            self._verifying.cancel()
            await asyncio.wait({self._verifying})
        if self._protocol is not None:
            await self._protocol.aclose()
