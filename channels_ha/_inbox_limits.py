"""How many messages a process's inbox may hold, as the process tells its senders.

The process-specific channels of a process share one inbox list per shard. Senders' PUSH
refuses a message (ChannelFull) when the inbox holds the limit its process published, or,
with none published, the capacity of the channel sent to. The limit is the summed capacity
of the channels the process receives on, in all its event loops (see ``_inbox_totals``), so
that a process with many consumers is not refused a failover's backlog as if it had one.

It is raised as soon as a new channel raises it: consumers of a burst of connects are sent
to at once, and each channel below its capacity must not be refused (seen: 79-89 of 100
sends to 50 new channels at 2 of their capacity of 10, while the limit waited for the next
upkeep tick). It is lowered only at the tick: lowering at once could refuse senders for
what the inbox already holds. A master restarted empty lost it: it is published again as
soon as the session meets the new server run (seen: 95 of 100 such sends refused, for up to
the 3 s until the next refresh), or its epoch check notices the loss (a FLUSHALL).
``flush()`` keeps it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

from ._core import LayerCore
from ._inbox_totals import LIMIT_TTL_MS, Publication
from ._recovery import log_failure
from ._shard import ShardConnections
from ._upkeep_steps import UpkeepSteps


class InboxLimits:
    """One event loop's part in the inbox limits of its process: the channels it has
    buffers for, counted in the process's totals, and the publishing on its connections."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        steps: UpkeepSteps,
        closed: Callable[[], bool],
    ) -> None:
        self._core = core
        self._totals = core.inbox_totals
        self._shards = shards
        self._steps = steps  # what publishing at once raises is reported as the tick's is
        self._closed = closed
        self._loop = asyncio.get_running_loop()
        self._limits: dict[str, int] = {}  # inbox -> summed capacity of its channels here
        # Until the session closes: a reader's last pop, handed over while it closes, may
        # still make buffers, which must not count in the process's limits ever after.
        self._counting = True
        self._raised: set[str] = set()  # inboxes whose limit goes out at the next loop turn
        self._totals.join(self)

    def current(self) -> dict[str, int]:
        """Per inbox: the summed capacity of its channels buffered here."""
        return dict(self._limits)

    def added(self, inbox: str, capacity: int) -> None:
        """A channel of ``inbox`` got its buffer. Once per channel, not per message: if the
        process's limit now exceeds what senders go by, it is published at the next loop
        turn, once however many channels a burst of connects opened in this one."""
        if not self._counting:
            return
        self._limits[inbox] = self._limits.get(inbox, 0) + capacity
        if self._totals.add(inbox, capacity, time.monotonic()):
            if not self._raised:
                self._loop.call_soon(self._publish_raised)
            self._raised.add(inbox)

    def removed(self, inbox: str, capacity: int) -> None:
        """A channel of ``inbox`` lost its buffer (swept); the tick lowers the limit."""
        if inbox not in self._limits:
            return  # not counted: added after close()
        limit = self._limits[inbox] - capacity
        if limit > 0:
            self._limits[inbox] = limit
        else:
            del self._limits[inbox]
        self._totals.remove(inbox, capacity)

    def close(self) -> None:
        """The session closes: its channels no longer count (a tick of another event loop
        lowers the limit). Idempotent; safe from another thread once the loop is closed."""
        self._counting = False
        if not self._totals.leave(self):
            return
        limits, self._limits = self._limits, {}
        for inbox, capacity in limits.items():
            self._totals.remove(inbox, capacity)

    def gone(self) -> bool:
        return self._loop.is_closed()

    def refresh(self) -> None:
        """At each upkeep tick: publishes limits that changed (lowered, or raised where
        ``added`` found no need) and, every ``LIMIT_REFRESH_S``, those that did not. The
        channels of event loops closed without closing their session go first."""
        for part in self._totals.gone():
            part.close()
        self._submit(self._totals.due(time.monotonic(), self))

    def keys_on(self, shard: ShardConnections) -> list[str]:
        """The limit keys of this event loop's inboxes on ``shard``: what it published
        there must be published again should their masters lose it."""
        core = self._core
        index, shard_of = shard.spec.index, core.shard_index
        return [core.keys.inbox_limit(inbox) for inbox in self._limits if shard_of(inbox) == index]

    def republish(self, shard: ShardConnections) -> None:
        """``shard`` may have lost data (a master restarted empty): every limit of its
        inboxes goes out again at once, not at the next refresh."""
        if self._closed():
            return
        index, shard_of = shard.spec.index, self._core.shard_index
        with self._steps.step("inbox limits"):
            on_shard = self._totals.every(
                lambda inbox: shard_of(inbox) == index, time.monotonic(), self
            )
            self._submit(on_shard)

    def _publish_raised(self) -> None:
        """Publishes the limits ``added`` found raised, as they are now. The SET goes on the
        link after those published before it and ahead of later ones: a link writes a
        node's requests in the order submitted, failovers included, and on Cluster keeps
        the order within a slot through redirections (see ``CommandLink`` and
        ``ClusterRouter``). Another event loop's link keeps no order with this one: see
        ``_landed``."""
        raised, self._raised = self._raised, set()
        if self._closed():
            return
        with self._steps.step("inbox limits"):
            self._submit(self._totals.raised(raised, time.monotonic(), self))

    def _submit(self, publications: list[Publication]) -> None:
        core = self._core
        for publication in publications:
            key = core.keys.inbox_limit(publication.inbox)
            link = self._shards[core.shard_index(publication.inbox)].link
            request = ("SET", key, publication.limit, "PX", LIMIT_TTL_MS)
            link.submit(*request, key=key).add_done_callback(
                functools.partial(self._landed, publication)
            )

    def _landed(self, publication: Publication, future: asyncio.Future[object]) -> None:
        """A SET's reply: a failed one is published again later; one that may have
        overwritten a higher limit from another event loop's link publishes it again."""
        if future.cancelled() or future.exception() is not None:
            log_failure(future)
            self._totals.failed(publication)
            return
        if self._closed():
            return
        with self._steps.step("inbox limits"):
            self._submit(self._totals.overtaken(publication, time.monotonic()))
