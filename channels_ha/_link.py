"""The command connection to one master: pipelined, ordered, and carried through failovers.

Every send, group operation and flush of a process goes through one link per master, written
back to back on one socket. When the connection breaks or the server turns out not to be the
master any more, the requests whose replies are missing go back to the head of the queue, in
their original order, and are written again once a new master is found. Order matters: a
receiver drops a message whose sequence number is not above the last one it saw from the same
sender, so a retried message must never overtake a later one. Re-sending a request whose first
copy did land is harmless for the same reason (and, for normal channels, because the PUSH
script refuses a sequence number it already applied).

Two parts of a link live in modules of their own: the queue of requests waiting for a
connection and the attempts to get one (``_reconnect``), and the watchdog that leaves a
connection whose server stopped answering (``_reply_watch``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from ._backoff import Backoff
from ._connection import scripts_refused
from ._reconnect import Reconnector
from ._reply_watch import SUSPECT_AFTER_S, ReplyWatch
from ._resp import Arg, ReplyError, RespProtocol, pack
from ._scripts import Script
from ._server import (
    REDIRECT_ERRORS,
    RETRY_ERRORS,
    Announcements,
    Locator,
    ServerInfo,
    ServerSettings,
)
from ._stats import ShardStats
from .exceptions import ConnectionLost, LayerClosed, RedisCommandError

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
        self._hand_back = hand_back
        self._verify = verify
        self._stats = stats
        self._settings = settings
        self._on_server = on_server
        self._inflight: deque[Request] = deque()  # written, reply pending
        self._retry: deque[Request] = deque()  # refused by a server that is not the master
        self._protocol: RespProtocol | None = None
        self._usable = False
        self._closed = False
        self._backoff = Backoff()  # reset by a successful reply, not by a new attempt
        self._holding: asyncio.TimerHandle | None = None  # a failover runs: writes wait
        self._leaving = "leaving a server not usable as master"  # why a drained one is left
        self.server: ServerInfo | None = None
        self.generation = 0  # counts connections adopted; tells a reconnect happened
        self._waiting = Reconnector(
            self,
            locator,
            settings,
            stats,
            self._backoff,
            self._adopt,
            lambda: self._closed,
            None if hand_back is None else functools.partial(hand_back, self),
            announcements,
            routed_because,
            patience,
        )
        self._watch = ReplyWatch(
            settings,
            self._inflight,
            lambda: self._protocol,
            self.drop_connection,
            self._settle,
            None if verify is None else functools.partial(verify, self),
        )

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
            raise LayerClosed()
        request = Request(packed, self._settings.failover_timeout_s, patience_s=patience_s)
        self.submit_request(request)
        return request.future

    def submit_request(self, request: Request, asking: bool = False) -> None:
        """Queues a request made elsewhere (the Cluster router's); ``asking`` prefixes ASKING."""
        if asking:
            # slot -2: an internal request that a router drops instead of re-routing.
            asking_request = Request(pack("ASKING"), self._settings.failover_timeout_s, -2)
            # Nobody awaits it: its error (the target's link failed; the real request's
            # caller hears of that) is read here, or asyncio logs "Future exception was never
            # retrieved" for each one (seen: 22 for one send while an ASK target was down).
            asking_request.future.add_done_callback(_read_outcome)
            self.submit_request(asking_request)
        if self._usable and self._holding is None:
            if not self._write(request):
                self._lost_unwritten(deque([request]))
        else:
            self._waiting.queue.append(request)
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
        held = self._watch.held()
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
        if self._watch.timer is None:  # the first request after a quiet spell
            self._watch.start(request.due)
        return True

    def _lost_unwritten(self, unwritten: deque[Request]) -> None:
        """A write found the connection closed before its loss reached this link (it closed
        while being adopted, say): that is the loss, handled as ever, with the requests not
        written queued after those whose replies it took, before those that came later."""
        unwritten.extend(self._waiting.queue)
        self._waiting.queue = unwritten
        self.on_lost(ConnectionLost("connection already closed"))

    # -- replies (called by the protocol, in order) ------------------------------------

    def on_reply(self, reply: object) -> None:
        request = self._inflight.popleft()
        doubt = self._watch.doubt
        if doubt is not None:
            doubt.append((request, reply))
        elif self._verify is not None and time.monotonic() - request.due >= SUSPECT_AFTER_S:
            self._watch.hold(request, reply)  # it may come from a frozen master just woken
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
            # drained a connection to a non-master (or one without the scripts): move on
            self._protocol.abort(ConnectionLost(self._leaving))

    def _on_error_reply(self, request: Request, reply: ReplyError) -> None:
        text = str(reply)
        if self._hand_back is not None and text.startswith(REDIRECT_ERRORS):
            self._hand_back(self, [request], text)
        elif text.startswith(RETRY_ERRORS):
            scripts_refused(self._settings, self.server, text)
            self._waiting.last_error, self._waiting.refused = text, True
            if self._usable:
                self._leaving = self._log_refusal(text.split(" ", 1)[0])
            self._usable = False
            self._retry.append(request)
        elif not request.future.done():
            request.future.set_exception(RedisCommandError(text))

    def _log_refusal(self, code: str) -> str:
        """Logs why this connection is left (its replies drained first); returns the reason
        its loss is logged with. NOSCRIPT is no failover: a SCRIPT FLUSH emptied the
        server's script cache, and the next connection loads them again."""
        server = self._describe_server()
        if code == "NOSCRIPT":
            logger.warning(
                "Redis at %s lost the layer's scripts (NOSCRIPT: SCRIPT FLUSH, or a script "
                "cache emptied); loading them again on a new connection",
                server,
                extra={"event": "scripts_flushed"},
            )
            return "reconnecting to load the scripts again"
        logger.warning(
            "Redis at %s is not usable as master (%s); looking for the master",
            server,
            code,
            extra={"event": "not_master"},
        )
        return f"leaving a server that answered {code}"

    def on_lost(self, exc: BaseException | None) -> None:
        self._watch.disarm()
        self._protocol = None
        self._usable = False
        doubted = self._watch.drop_held()
        waiting = self._waiting
        pending = [*doubted, *self._retry, *self._inflight, *waiting.queue]
        self._stats.retries += len(doubted) + len(self._retry) + len(self._inflight)
        self._retry.clear()
        self._inflight.clear()
        waiting.queue = deque(r for r in pending if not r.future.done())
        if self._closed:  # nothing will write them again
            waiting.fail_all(LayerClosed())
            return
        waiting.last_error = f"lost the connection to {self._describe_server()}: {exc or 'closed'}"
        logger.warning(
            "Lost the connection to Redis at %s (%s); %d requests will be retried",
            self._describe_server(),
            exc or "closed by the server",
            len(waiting.queue),
            extra={"event": "connection_lost", "pending": len(waiting.queue)},
        )
        if self._hand_back is not None:
            waiting.hand_over(f"connection lost: {exc or 'closed by the server'}")
        elif waiting.queue:
            self._ensure_connecting()

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
        elif self._waiting.queue:
            self._ensure_connecting()

    def _ensure_connecting(self) -> None:
        # Never while a connection is still attached (draining the replies of a server that
        # stopped being the master): two sockets would feed one reply queue.
        if not self._closed and self._protocol is None:
            self._waiting.start()

    def _adopt(self, protocol: RespProtocol, info: ServerInfo) -> bool:
        """Takes a new connection; False if it was lost meanwhile (a write found it closed),
        or the link closed."""
        if self._closed:
            protocol.abort()
            return False
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
        return self._protocol is not None

    def _write_queued(self) -> None:
        if self._holding is not None:
            return  # a failover runs: this may still be the old master; release() writes
        if self._protocol is None:
            return  # lost meanwhile (by a write of on_server's): reconnecting writes them
        queued, self._waiting.queue = self._waiting.queue, deque()
        while queued:
            request = queued.popleft()
            if not request.future.done() and not self._write(request):
                queued.appendleft(request)
                self._lost_unwritten(queued)
                return

    def _describe_server(self) -> str:
        return self.server.endpoint.describe() if self.server else self._locator.describe()

    # -- closing -----------------------------------------------------------------------

    def pending_requests(self) -> list[Request]:
        """Requests still waiting for a connection or a reply, oldest first."""
        held = self._watch.held()
        return [*held, *self._retry, *self._inflight, *self._waiting.queue]

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
            self._waiting.fail_all(LayerClosed())
        await self._waiting.close()
        if self._holding is not None:
            self._holding.cancel()
        await self._watch.close()
        if self._protocol is not None:
            await self._protocol.aclose()


def _read_outcome(future: asyncio.Future[object]) -> None:
    """Marks the outcome of a future nobody awaits as read."""
    if not future.cancelled():
        future.exception()
