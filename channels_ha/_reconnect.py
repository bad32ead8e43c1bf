"""The requests a command link holds while it has no usable connection, and getting one.

One attempt at a time, paced by a backoff that only a successful reply resets (a server that
accepts connections and refuses every request is not hammered). Each request keeps its own
deadline: one that passes during an attempt fails then, not when the attempt ends. On
Cluster, a link that cannot connect hands its requests back to the router, which knows where
else they may go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._backoff import Backoff
from ._connection import connect_to_master
from ._resp import ReplySink, RespProtocol
from ._server import Announcements, Locator, ServerInfo, ServerSettings, give_up
from ._stats import ShardStats
from .exceptions import ConnectionLost, RedisCommandError

if TYPE_CHECKING:
    from ._link import Request

logger = logging.getLogger("channels_ha.link")

NOT_TRIED = "no connection attempt yet"
_MAX_DEADLINE_CHECKS = 100_000  # bounds the deadline checks during one connection attempt


class Reconnector:
    """The queue of one link's requests waiting for a usable connection, and the task that
    connects for them.

    ``sink`` is the link, which the connection reports its replies and its loss to;
    ``adopt`` hands it a new connection (False: lost as it was adopted); ``closed`` tells
    whether the link was closed; ``hand_back`` (Cluster) gives the router what cannot be
    served here, with the reason; ``patience`` bounds an attempt at a node known only from a
    hint (see ClusterRouter._patience_for); ``routed_because`` says why requests came here.
    """

    def __init__(
        self,
        sink: ReplySink,
        locator: Locator,
        settings: ServerSettings,
        stats: ShardStats,
        backoff: Backoff,
        adopt: Callable[[RespProtocol, ServerInfo], bool],
        closed: Callable[[], bool],
        hand_back: Callable[[list[Request], str], None] | None = None,
        announcements: Announcements | None = None,
        routed_because: Callable[[], str] | None = None,
        patience: Callable[[], float | None] | None = None,
    ) -> None:
        self._sink = sink
        self._locator = locator
        self._settings = settings
        self._stats = stats
        self._backoff = backoff  # reset by a successful reply, not by a new attempt
        self._adopt = adopt
        self._closed = closed
        self._hand_back = hand_back
        self._announcements = announcements
        self._routed_because = routed_because
        self._patience = patience
        self.queue: deque[Request] = deque()  # waiting for a usable connection
        self.last_error = NOT_TRIED
        self.refused = False  # a server refused requests: wait before the next attempt
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connects for the queue, unless an attempt is under way already."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        started = time.monotonic()
        try:
            await self._connect_until_deadline()
        finally:
            self._task = None
            self._stats.master_wait_s += time.monotonic() - started

    async def _connect_until_deadline(self) -> None:
        if self.refused:
            self.refused = False
            await self._backoff.wait()  # the last server refused requests: do not hammer it
        while self.queue and not self._closed():
            self._fail_overdue()
            if not self.queue:
                return
            try:
                protocol, info = await self._attempt()
            except ConnectionLost as err:
                self.last_error = str(err)
                if self._hand_back is not None:
                    self.hand_over(self.last_error)  # the router knows where to go
                    return
                if self._backoff.report_due():
                    logger.info("Waiting for a Redis master: %s", err, extra={"event": "waiting"})
                await self._backoff.wait()
                continue
            except RedisCommandError as err:  # the handshake was refused (WRONGPASS, NOPERM)
                self.last_error, self.refused = str(err), True  # no reconnect storm
                self.fail_all(err)
                return
            if self._adopt(protocol, info):
                return
            # Lost as it was adopted (a write found it closed); on_lost could not start another
            # attempt while this one runs: what it queued again waits for the next round here.
            await self._backoff.wait()

    async def _attempt(self) -> tuple[RespProtocol, ServerInfo]:
        """One connection attempt, paced by its own timeouts as ever; requests whose deadline
        passes meanwhile fail then, not when it ends (a frozen server accepts the connection
        and holds the handshake for reply_timeout: seen, RedisUnavailable 4 s late)."""
        patience_s = None if self._patience is None else self._patience()
        attempt = asyncio.ensure_future(
            connect_to_master(
                self._locator, self._settings, self._sink, True, self._announcements, patience_s
            )
        )
        try:
            for _ in range(_MAX_DEADLINE_CHECKS):  # each check fails a request, or it is done
                earliest = min((r.deadline for r in self.queue), default=None)
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

    def hand_over(self, reason: str) -> None:
        """Gives the router every queued request (Cluster)."""
        assert self._hand_back is not None
        queued, self.queue = list(self.queue), deque()
        if queued and not self._closed():
            self._hand_back(queued, reason)

    def _fail_overdue(self) -> None:
        now = time.monotonic()
        if not any(r.deadline <= now for r in self.queue):
            return
        waited = now - min(r.deadline for r in self.queue) + self._settings.failover_timeout_s
        reason = self.last_error
        if reason == NOT_TRIED and self._routed_because is not None:
            reason = self._routed_because()  # they ran out of time before reaching this node
        error = give_up(self._locator.describe(), self._settings, waited, reason)
        keep: deque[Request] = deque()
        for request in self.queue:
            if request.deadline <= now:
                if not request.future.done():
                    request.future.set_exception(error)
            else:
                keep.append(request)
        self.queue = keep

    def fail_all(self, error: Exception) -> None:
        for request in self.queue:
            if not request.future.done():
                request.future.set_exception(error)
        self.queue.clear()

    async def close(self) -> None:
        """Cancels the attempt under way, and waits until it ended."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
