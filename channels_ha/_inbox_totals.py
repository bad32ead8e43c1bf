"""The inbox limits of a whole process: what the channels of all its event loops add up to,
and what was published last.

A process may run several long-lived event loops (the ASGI server's, a thread's own with
consumers) besides the short-lived ones of ``async_to_sync`` calls, each with a session and
its own channels; but the process-specific channels of all of them share the process's
inboxes. So the limit published for an inbox is the summed capacity of the channels of
every live session: a session that published its own alone undid the others' (seen: 90 of
100 sends refused, each channel at 2 of its capacity of 10, once a loop with one channel
published its capacity over another loop's 50 channels). Each session adds its channels
here and takes them out when they go, or when it closes; each publishes what this says, on
its own connection. What was published is one record for the process, so the ticks of two
loops do not both write it again.

Two connections keep no order between them: a limit that one session submitted may land
after a higher one that another session submitted later, and overwrite it. Whichever
publication lands and finds such a later, higher one from another connection has the
current limit published again on its own connection, after itself (see ``overtaken``).

The sessions run in different threads: every step takes the lock; none runs per message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

LIMIT_REFRESH_S = 3.0  # an unchanged limit is published again this often
LIMIT_TTL_MS = 10_000  # and expires this long after the process stops publishing it
# A limit published this long ago is still in Redis for at least a refresh period, in which
# the tick publishes the current one: a channel that does not raise it need not publish.
# Unless the master lost it (restarted empty): the session that meets the new server run
# publishes every limit again at once (see ``Resync.after_loss``).
_TRUSTED_S = LIMIT_TTL_MS / 1000 - LIMIT_REFRESH_S


class Publication(NamedTuple):
    """A limit submitted for an inbox, on one session's connection."""

    inbox: str
    limit: int
    at: float  # time.monotonic() when submitted
    number: int  # counts the process's publications: which of two was submitted later
    publisher: object  # whose connection carries it, after that one's earlier publications
    # Sent ahead of the publisher's earlier ones (see ``every``): they may land after it.
    ahead: bool = False


class Part(Protocol):
    """One event loop's share of the totals (``InboxLimits``)."""

    def gone(self) -> bool:
        """Whether its event loop is closed."""

    def close(self) -> None:
        """Takes its channels out of the totals (idempotent)."""


class InboxTotals:
    """Per inbox of the process: the summed capacity of its channels in every event loop,
    and the publication of its limit submitted last."""

    __slots__ = ("_count", "_lock", "_parts", "_published", "_totals")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._published: dict[str, Publication] = {}
        self._count = 0
        self._parts: set[Part] = set()  # the event loops' shares not closed yet

    def join(self, part: Part) -> None:
        with self._lock:
            self._parts.add(part)

    def leave(self, part: Part) -> bool:
        """True for the one caller that takes ``part`` out (two loops' ticks may find the
        same closed loop at once)."""
        with self._lock:
            if part not in self._parts:
                return False
            self._parts.remove(part)
            return True

    def gone(self) -> list[Part]:
        """The shares of event loops closed without closing their session (run_until_complete
        and close(), no shutdown): nothing else takes their channels out, and every other
        loop would go on publishing them (seen: 50 channels of a closed loop counted 12 s
        later). Each loop's tick closes them."""
        with self._lock:
            parts = list(self._parts)
        return [part for part in parts if part.gone()]

    def add(self, inbox: str, capacity: int, now: float) -> bool:
        """A channel of ``inbox`` got a buffer in some event loop. True if the limit now
        exceeds what senders go by: the limit published, while trusted, or with none, the
        capacity of the channel they send to."""
        with self._lock:
            total = self._totals[inbox] = self._totals.get(inbox, 0) + capacity
            published = self._published.get(inbox)
            if published is not None and now - published.at < _TRUSTED_S:
                return total > published.limit
            return total > capacity  # else the inbox's only channel: senders go by it

    def remove(self, inbox: str, capacity: int) -> None:
        """A channel of ``inbox`` lost its buffer, or its session closed; a tick lowers the
        limit. An inbox left without channels is forgotten, its record too."""
        with self._lock:
            total = self._totals.get(inbox, 0) - capacity
            if total > 0:
                self._totals[inbox] = total
            else:
                self._totals.pop(inbox, None)
                self._published.pop(inbox, None)

    def raised(self, inboxes: Iterable[str], now: float, publisher: object) -> list[Publication]:
        """Of ``inboxes``, which ``add`` found raised, those still above what senders go by
        (another session may have published meanwhile), recorded as published now."""
        with self._lock:
            found = []
            for inbox in inboxes:
                total = self._totals.get(inbox, 0)
                published = self._published.get(inbox)
                if total and (
                    published is None or total > published.limit or now - published.at >= _TRUSTED_S
                ):
                    found.append(self._record(inbox, total, now, publisher))
            return found

    def due(self, now: float, publisher: object) -> list[Publication]:
        """At a tick: the limits that changed (lowered, or raised where ``add`` found no
        need), and those unchanged for ``LIMIT_REFRESH_S``, recorded as published now."""
        with self._lock:
            found = []
            for inbox, total in self._totals.items():
                published = self._published.get(inbox)
                if published and published.limit == total and now - published.at < LIMIT_REFRESH_S:
                    continue
                found.append(self._record(inbox, total, now, publisher))
            return found

    def every(
        self, which: Callable[[str], bool], now: float, publisher: object
    ) -> list[Publication]:
        """Every limit of the inboxes ``which`` selects, whatever was published: a master
        may have lost them. Recorded as published now, and as sent ahead: the connection
        that just reached the new server run writes them before its requests that waited
        for it, earlier publications among them."""
        with self._lock:
            return [
                self._record(inbox, total, now, publisher, ahead=True)
                for inbox, total in self._totals.items()
                if which(inbox)
            ]

    def overtaken(self, landed: Publication, now: float) -> list[Publication]:
        """``landed`` was applied. If another session's connection carried a higher limit
        submitted after it, which it may have overwritten (or ``landed``'s own publisher
        sent one ahead of it, see ``every``), the current limit recorded as published now by
        ``landed``'s publisher (which submits it after ``landed``)."""
        with self._lock:
            latest = self._published.get(landed.inbox)
            if (
                latest is None
                or latest.number <= landed.number
                or (latest.publisher is landed.publisher and not latest.ahead)
                or latest.limit <= landed.limit
            ):
                return []
            total = self._totals.get(landed.inbox, 0)
            return [self._record(landed.inbox, total, now, landed.publisher)] if total else []

    def failed(self, publication: Publication) -> None:
        """``publication`` failed (no master within the failover timeout): unless published
        again since, the record goes, and the next tick or new channel publishes."""
        with self._lock:
            if self._published.get(publication.inbox) is publication:
                del self._published[publication.inbox]

    def _record(
        self, inbox: str, limit: int, now: float, publisher: object, ahead: bool = False
    ) -> Publication:
        self._count += 1
        publication = Publication(inbox, limit, now, self._count, publisher, ahead)
        self._published[inbox] = publication
        return publication
