"""How many messages a process's inbox may hold, as the process tells its senders.

The process-specific channels of a process share one inbox list per shard. Senders' PUSH
refuses a message (ChannelFull) when the inbox holds the limit its process published, or,
with none published, the capacity of the channel sent to. The limit is the summed capacity
of the channels the process receives on, so that a process with many consumers is not
refused a failover's backlog as if it had one.

It is raised as soon as a new channel raises it: consumers of a burst of connects are sent
to at once, and each channel below its capacity must not be refused (seen: 79-89 of 100
sends to 50 new channels at 2 of their capacity of 10, while the limit waited for the next
upkeep tick). It is lowered only at the tick: lowering at once could refuse senders for
what the inbox already holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ._core import LayerCore
from ._recovery import log_failure
from ._shard import ShardConnections
from ._upkeep_steps import UpkeepSteps

LIMIT_REFRESH_S = 3.0  # an unchanged limit is published again this often
LIMIT_TTL_MS = 10_000  # and expires this long after the process stops publishing it
# A limit published this long ago is still in Redis for at least a refresh period, in which
# the tick publishes the current one: a channel that does not raise it need not publish.
_TRUSTED_S = LIMIT_TTL_MS / 1000 - LIMIT_REFRESH_S


class InboxLimits:
    """The limits of the inboxes an event loop receives from: what they are, from the
    channels it has buffers for, and what was published."""

    def __init__(
        self,
        core: LayerCore,
        shards: list[ShardConnections],
        steps: UpkeepSteps,
        closed: Callable[[], bool],
    ) -> None:
        self._core = core
        self._shards = shards
        self._steps = steps  # what publishing at once raises is reported as the tick's is
        self._closed = closed
        self._loop = asyncio.get_running_loop()
        self._limits: dict[str, int] = {}  # inbox -> summed capacity of its channels here
        self._published: dict[str, tuple[int, float]] = {}  # inbox -> (limit, monotonic)
        self._raised: set[str] = set()  # inboxes whose limit goes out at the next loop turn

    def current(self) -> dict[str, int]:
        """Per inbox: the summed capacity of its channels buffered here."""
        return dict(self._limits)

    def added(self, inbox: str, capacity: int) -> None:
        """A channel of ``inbox`` got its buffer. Once per channel, not per message: if the
        limit now exceeds what senders go by (the limit published, or, with none, the
        capacity of the channel they send to), it is published at the next loop turn, once
        however many channels a burst of connects opened in this one."""
        limit = self._limits[inbox] = self._limits.get(inbox, 0) + capacity
        published = self._published.get(inbox)
        if published is not None and time.monotonic() - published[1] < _TRUSTED_S:
            if limit <= published[0]:
                return
        elif limit <= capacity:
            return  # the inbox's only channel: senders go by its capacity already
        if not self._raised:
            self._loop.call_soon(self._publish_raised)
        self._raised.add(inbox)

    def removed(self, inbox: str, capacity: int) -> None:
        """A channel of ``inbox`` lost its buffer (swept); the tick lowers the limit."""
        limit = self._limits[inbox] - capacity
        if limit > 0:
            self._limits[inbox] = limit
        else:
            del self._limits[inbox]

    def refresh(self) -> None:
        """At each upkeep tick: publishes limits that changed (lowered, or raised where
        ``added`` found no need) and, every ``LIMIT_REFRESH_S``, those that did not."""
        now = time.monotonic()
        for inbox, limit in self._limits.items():
            published = self._published.get(inbox)
            if published and published[0] == limit and now - published[1] < LIMIT_REFRESH_S:
                continue
            self._publish(inbox, limit, now)

    def _publish_raised(self) -> None:
        """Publishes the limits ``added`` found raised, as they are now. The SET goes on the
        link after those published before it and ahead of later ones: a link writes a
        node's requests in the order submitted, failovers included, and on Cluster keeps
        the order within a slot through redirections (see ``CommandLink`` and
        ``ClusterRouter``). So Redis holds the last limit published, never an older one
        that arrived late."""
        raised, self._raised = self._raised, set()
        if self._closed():
            return
        with self._steps.step("inbox limits"):
            now = time.monotonic()
            for inbox in raised:
                limit = self._limits.get(inbox, 0)
                published = self._published.get(inbox)
                if limit and (
                    published is None or limit > published[0] or now - published[1] >= _TRUSTED_S
                ):
                    self._publish(inbox, limit, now)

    def _publish(self, inbox: str, limit: int, now: float) -> None:
        core = self._core
        key = core.keys.inbox_limit(inbox)
        link = self._shards[core.shard_index(inbox)].link
        link.submit("SET", key, limit, "PX", LIMIT_TTL_MS, key=key).add_done_callback(log_failure)
        self._published[inbox] = (limit, now)
