"""Replies lost in a row on a blocking reader's connection: when to reconnect, and why say so.

A reply lost with its connection (a network blip, ``CLIENT KILL``, a failover) makes the
reader connect again at once, which keeps a blip cheap. A reply cut each time while the
master answers (one larger than the server's ``client-output-buffer-limit`` for normal
clients; a proxy that closes connections) would make that a loop of hundreds of connections
a second, each popping again: a normal channel's recovery brings back the same batch, an
inbox pop takes the next messages and loses them too. So from the second loss in a row the
reconnection waits, as after a failed attempt (``Backoff``: 25 ms, doubling, up to 0.5 s);
a reply, or a new master announced, starts over. From the third in a row it is logged
(``replies_cut``, then at most once a minute); an inbox batch lost with a reply cut midway
is logged at the first (``_inbox_reader``).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from ._backoff import Backoff
from ._constants import FAILURE_LOG_INTERVAL_S, RECONNECT_BACKOFF_MAX_S
from ._throttle import LogThrottle

logger = logging.getLogger("channels_ha.reader")

_PACED_FROM = 2  # the first loss reconnects at once
_LOGGED_FROM = 3  # a failover can cut two in a row


class Sent(NamedTuple):
    """A request whose reply was lost, as it went out. Its loss is judged by this, not by
    the reader's fields: a later request (close()'s, on the connection being dropped) may
    have changed them before the loss is heard of."""

    keys: list[str]  # what it popped (none: a recovery or deletion with nobody waiting)
    at: float  # time.monotonic() just before it went out (_sent_at, when _pop_once sent it)
    # Bytes of its reply that arrived before the cut: the connection carries one request at
    # a time, so all it received since. (Not the parser's unparsed bytes: hiredis moves past
    # each complete element, and a cut between two leaves none.)
    arrived: int


class LostReplies:
    """Counts replies lost in a row (``in_a_row``, read on the hot path without a call),
    paces the reconnections they cause, and says why they are lost."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self._pace = Backoff()
        self._pausing = False
        self._log = LogThrottle(FAILURE_LOG_INTERVAL_S)

    def lost(self, where: str, what: str, received: int) -> None:
        """A reply was lost: that of ``what`` (a request described), on server ``where``,
        ``received`` bytes of it had arrived."""
        self.in_a_row += 1
        if self.in_a_row < _LOGGED_FROM:
            return
        if not self._log.due():
            return
        arrived = f"{received} bytes of it had arrived" if received else "none of it had arrived"
        logger.warning(
            "Replies to a blocking reader keep being cut: %d lost in a row, the last to %s "
            "on %s (%s). Redis closes a connection whose "
            "reply exceeds its client-output-buffer-limit for normal clients: a message or "
            "batch that large, or a proxy or the network closing connections, is the likely "
            "cause. The reader reconnects at most %g s apart meanwhile",
            self.in_a_row,
            what,
            where,
            arrived,
            RECONNECT_BACKOFF_MAX_S,
            extra={"event": "replies_cut", "in_a_row": self.in_a_row, "received": received},
        )

    def answered(self) -> None:
        """A reply came: the next loss reconnects at once again."""
        self.in_a_row = 0
        self._pace.reset()

    def nudge(self) -> None:
        """A new master was announced: a pause ends now, and the pace starts over."""
        self.answered()
        if self._pausing:
            self._pace.nudge()

    async def pause(self) -> None:
        """Before reconnecting: nothing after a first loss, else the growing pause."""
        if self.in_a_row < _PACED_FROM:
            return
        self._pausing = True
        try:
            await self._pace.wait()
        finally:
            self._pausing = False
        if not self.in_a_row:  # nudged meanwhile (its wait() lengthened the next pause)
            self._pace.reset()
