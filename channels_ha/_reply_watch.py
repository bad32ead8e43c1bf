"""Watching the replies a command link waits for: a server that stopped answering is left.

A hung server (SIGSTOP, a stuck VM, a network partition) keeps the connection open and answers
nothing, so only the age of the oldest reply due tells it, measured against what the
connection still moves: a large request draining into a slow link, or a large reply coming in,
is progress, not a hang. Past ``SUSPECT_AFTER_S`` the deployment is asked whether the server
is still the master; a late reply meanwhile may come from a frozen master that just woke up
and does not know yet that it was replaced, so it and the replies after it are held until the
deployment has answered (see :meth:`ReplyWatch.hold`), asked again while nobody can tell,
until ``reply_timeout``; then the connection is left, as for a master replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._resp import RespProtocol
from ._server import ServerSettings
from .exceptions import ConnectionLost, RedisCommandError

if TYPE_CHECKING:
    from ._link import Request

logger = logging.getLogger("channels_ha.link")

SUSPECT_AFTER_S = 0.5  # a reply this late: check that the server is still the master
SUSPECT_INTERVAL_S = 0.25  # and check again this often until reply_timeout
# Questions to the deployment beyond one per SUSPECT_INTERVAL_S: a doubt that began while
# one was under way asks again at once.
_MORE_ASKS = 8


class ReplyWatch:
    """The watchdog of one command link's connection, and the replies it holds in doubt.

    ``inflight`` is the link's own deque of requests written whose replies are due, oldest
    first (the link never replaces it); ``protocol`` returns the link's connection, if any;
    ``drop`` abandons it; ``settle`` hands a reply to its request; ``verify`` asks the
    deployment whether the connection's server is still the master (None: nobody can tell,
    as for a single node).
    """

    def __init__(
        self,
        settings: ServerSettings,
        inflight: deque[Request],
        protocol: Callable[[], RespProtocol | None],
        drop: Callable[[str], None],
        settle: Callable[[Request, object], None],
        verify: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        self._settings = settings
        self._inflight = inflight
        self._protocol = protocol
        self._drop = drop
        self._settle = settle
        self._verify = verify
        self.timer: asyncio.TimerHandle | None = None  # None: nothing watched (a quiet spell)
        self._backlog, self._progress_at = (0, 0), 0.0  # see _stalled_s
        self._verifying: asyncio.Task[None] | None = None
        self.doubt: deque[tuple[Request, object]] | None = None  # late replies on hold
        self._doubt_since = 0.0

    # -- the watchdog ------------------------------------------------------------------

    def start(self, due: float) -> None:
        """The first request after a quiet spell was written, its reply ``due`` then."""
        self._stalled_s(baseline=True)
        self._arm(due)

    def _arm(self, since: float) -> None:
        """Checks on the oldest reply due: first whether the server still is the master
        (from ``SUSPECT_AFTER_S`` on), then whether it hangs (at ``reply_timeout``)."""
        age = time.monotonic() - since
        next_check = SUSPECT_AFTER_S - age if age < SUSPECT_AFTER_S else SUSPECT_INTERVAL_S
        if age < self._settings.reply_timeout_s:
            delay = max(min(next_check, self._settings.reply_timeout_s - age), 0.0)
        else:  # overdue, yet bytes were moving at the last check
            delay = SUSPECT_INTERVAL_S
        self.timer = asyncio.get_running_loop().call_later(delay, self._check_replies)

    def _stalled_s(self, baseline: bool = False) -> float:
        """Seconds since the connection last made progress: a reply byte arriving, or (as
        the checks saw it) a backlog of requests draining into the socket, as a large request
        over a slow link does. Writes the socket takes without a backlog say nothing: a
        frozen server's kernel buffers take megabytes. ``baseline`` starts the backlog
        record afresh (the first request after a quiet spell)."""
        now = time.monotonic()
        protocol = self._protocol()
        if protocol is None:
            return now - self._progress_at
        accepted, unsent = protocol.backlog()
        last_accepted, last_unsent = self._backlog
        if not baseline and last_unsent > 0 and accepted != last_accepted:
            self._progress_at = now
        self._backlog = (accepted, unsent)
        return now - max(self._progress_at, protocol.received_at)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check_replies(self) -> None:
        self.timer = None
        if not self._inflight:
            return
        first = self._inflight[0]
        oldest, now = first.due, time.monotonic()
        age = now - oldest
        timeout_s = self._settings.reply_timeout_s
        stalled_s = self._stalled_s()  # at every check: the backlog record stays fresh
        if age >= timeout_s and stalled_s >= timeout_s:
            self._drop(f"no reply, and no byte moving, for {timeout_s} s")
            return
        overdue = now >= first.deadline + first.patience_s and age >= SUSPECT_AFTER_S
        if overdue and stalled_s >= SUSPECT_AFTER_S:
            # Its caller gets RedisUnavailable at failover_timeout, not reply_timeout later.
            self._drop("no reply, and no byte moving, until failover_timeout ran out")
            return
        if age >= SUSPECT_AFTER_S:
            self._start_verifying()
        self._arm(oldest)

    # -- replies held in doubt ---------------------------------------------------------

    def hold(self, request: Request, reply: object) -> None:
        """A late reply may come from a frozen master that just woke up and does not know
        yet that it was replaced: its writes are about to be discarded. Holds this reply
        (and, in :attr:`doubt`, the ones after it) until the deployment confirms the master."""
        self.doubt = deque([(request, reply)])
        self._doubt_since = time.monotonic()
        self._start_verifying()

    def held(self) -> list[Request]:
        """The requests whose replies are on hold, oldest first."""
        return [request for request, _ in self.doubt or ()]

    def drop_held(self) -> list[Request]:
        """The connection was lost: the requests whose replies were on hold, to write again."""
        held = self.held()
        self.doubt = None
        return held

    def _start_verifying(self) -> None:
        """A frozen master (SIGSTOP, a stuck VM) answers nothing; once the deployment has
        replaced it, ask where the master is now and leave, before it wakes up and accepts
        writes that its demotion will discard."""
        if self._verify is None or self._verifying is not None or self._protocol() is None:
            return
        self._verifying = asyncio.get_running_loop().create_task(self._verify_master())

    async def _verify_master(self) -> None:
        try:
            still_master = await self._ask_deployment()
        finally:
            self._verifying = None
        if still_master:
            self._release_doubt()
        elif still_master is False or self.doubt is not None:
            # Moved, or nobody could tell for reply_timeout while late replies wait (a
            # partition that leaves this client only the master): writing again is safe
            # (receivers and the PUSH script drop the copy), accepting a reply that a
            # demotion may discard is not. (With nobody else at all to ask, the deployment
            # is this server, and says so: a Cluster of one master, see _still_owner.)
            self._drop("the master moved while this one stopped answering")

    async def _ask_deployment(self) -> bool | None:
        """Whether this server is still the master, asked after any doubt began; None if
        nobody could tell. While late replies are held, a failed question is asked again
        every ``SUSPECT_INTERVAL_S`` until ``reply_timeout`` after the doubt began."""
        assert self._verify is not None
        for _ in range(int(self._settings.reply_timeout_s / SUSPECT_INTERVAL_S) + _MORE_ASKS):
            asked_at = time.monotonic()
            try:
                still_master = await self._verify()
            except (ConnectionLost, RedisCommandError) as err:
                logger.debug("Could not check where the master is: %s", err)
                if not self._unsettled_doubt():
                    return None
                await asyncio.sleep(SUSPECT_INTERVAL_S)  # pacing the questions
                continue
            if self.doubt is None or self._doubt_since < asked_at:
                return still_master
        return None

    def _unsettled_doubt(self) -> bool:
        """Whether late replies are held, for less than ``reply_timeout`` yet."""
        held_s = time.monotonic() - self._doubt_since
        return self.doubt is not None and held_s < self._settings.reply_timeout_s

    def _release_doubt(self) -> None:
        doubt, self.doubt = self.doubt, None
        for request, reply in doubt or ():
            self._settle(request, reply)

    async def close(self) -> None:
        """Stops watching, and waits for a question to the deployment to be cancelled."""
        self.disarm()
        if self._verifying is not None:
            self._verifying.cancel()
            await asyncio.wait({self._verifying})
