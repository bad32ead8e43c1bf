"""A Cluster router's links: one per node, made on first use, retired once it serves no slot.

After a failover the old master comes back as a replica, and a reshard may empty a master:
the process must keep a few connections, not one to every node it ever used. A node whose
link was retired is still asked for the slot map (its vote keeps a restarted master from
being believed), and gets a fresh link if a request needs it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, ItemsView

from ._link import CommandLink

logger = logging.getLogger("channels_ha.cluster")

_MAX_CLOSE_ROUNDS = 100  # bounds close()'s loop over links
# A link to a node that owns no slot is closed once idle; one still busy is looked at again
# this often, for at most this many rounds (the next slot map starts over).
_RETIRE_CHECK_S = 0.5
_MAX_RETIRE_ROUNDS = 100
# A node that owns no slot but takes ASK redirections (a slot migrating onto a master that
# owns none yet) keeps its link until this long after the last one: otherwise every map read
# closed it and the next ASK opened another (seen: a new connection at each map read, about
# one a second through a stalled migration, each loading every script). ASKs further apart
# open at most one connection per this span; idle that long, the link is closed.
_ASK_TARGET_KEEP_S = 10.0
# Nodes whose links were closed are still asked for the slot map (their vote keeps a
# restarted master from being believed); the oldest are forgotten beyond this many.
_MAX_FORMER_NODES = 16


class NodeLinks:
    """The links of one router, by node address (``host:port``)."""

    def __init__(
        self,
        make: Callable[[str], CommandLink],
        masters: Callable[[], set[str]],
        close_timeout_s: float,
    ) -> None:
        self._make = make
        self._masters = masters  # the masters of the router's last map, and MOVED's
        self._close_timeout_s = close_timeout_s
        self._links: dict[str, CommandLink] = {}
        self._former: dict[str, None] = {}  # nodes whose links were retired, oldest first
        self._retired: set[CommandLink] = set()  # taken out of _links, not closed yet
        self._retiring: asyncio.Task[None] | None = None  # see retire_soon
        self._asked: dict[str, float] = {}  # ASK target -> monotonic time of the last ASK
        self._retire_timer: asyncio.TimerHandle | None = None  # when an ASK target rests
        self._closed = False

    def get(self, address: str) -> CommandLink:
        """The open link to the node at ``address``, made if need be."""
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = self._make(address)
            self._former.pop(address, None)
        return link

    def items(self) -> ItemsView[str, CommandLink]:
        return self._links.items()

    def address_of(self, link: CommandLink) -> str | None:
        """The node of ``link``; None once it is retired."""
        return next((a for a, candidate in self._links.items() if candidate is link), None)

    def known(self) -> list[str]:
        """Every node with a link, then the nodes whose links were retired."""
        return [*self._links, *(a for a in self._former if a not in self._links)]

    def note_ask(self, target: str) -> None:
        """An ASK redirection's target counts as in use for ``_ASK_TARGET_KEEP_S`` even
        though its node may own no slot yet (then call ``retire_later``)."""
        self._asked[target] = time.monotonic()

    def unsettled(self) -> list[asyncio.Future[object]]:
        links = (*self._links.values(), *self._retired)
        return [future for link in links for future in link.unsettled()]

    # -- retiring --------------------------------------------------------------------------------

    def retire_soon(self) -> None:
        """Closes, in the background, the links to nodes the slot map no longer names."""
        if self._closed:
            return
        if self._retiring is None and self._stale_links():
            self._retiring = asyncio.get_running_loop().create_task(self._retire_links())
        self.retire_later()

    def retire_later(self) -> None:
        """Looks again when the first ASK target kept now may be idle, even if no map read
        comes. A timer already set is early enough: every ASK extends a target's keep."""
        if self._retire_timer is not None or self._closed:
            return
        now, unmapped = time.monotonic(), self._unmapped()
        self._asked = {a: at for a, at in self._asked.items() if self._resting(a, now)}
        kept = [at for address, at in self._asked.items() if address in unmapped]
        if kept:
            delay_s = min(kept) + _ASK_TARGET_KEEP_S - now
            loop = asyncio.get_running_loop()
            self._retire_timer = loop.call_later(delay_s, self._retire_now)

    def _retire_now(self) -> None:
        self._retire_timer = None
        self.retire_soon()

    def _resting(self, address: str, now: float) -> bool:
        """Whether the node took an ASK redirection less than ``_ASK_TARGET_KEEP_S`` ago."""
        asked = self._asked.get(address)
        return asked is not None and now - asked < _ASK_TARGET_KEEP_S

    def _unmapped(self) -> list[str]:
        # The masters, not the owners: a slot whose owner went missing has none, and its
        # master may come back; a master named by MOVED counts until the next map.
        masters = self._masters()
        return [address for address in self._links if address not in masters]

    def _stale_links(self) -> list[tuple[str, CommandLink]]:
        """The links to retire: to nodes that own no slot and took no ASK lately."""
        now = time.monotonic()
        unmapped = [a for a in self._unmapped() if not self._resting(a, now)]
        return [(address, self._links[address]) for address in unmapped]

    async def _retire_links(self) -> None:
        """Retires each stale link once it has nothing unsettled. Its requests must be
        answered or handed back first: a slot held for them waits on this link."""
        try:
            for _ in range(_MAX_RETIRE_ROUNDS):
                idle: list[CommandLink] = []
                busy: list[asyncio.Future[object]] = []
                for address, link in self._stale_links():
                    unsettled = link.unsettled()
                    if unsettled:
                        busy += unsettled
                    else:
                        idle.append(link)
                        self._retire(address, link)
                if not idle and not busy:
                    return
                for link in idle:
                    await link.close(self._close_timeout_s)
                    self._retired.discard(link)
                if busy:
                    await asyncio.wait(busy, timeout=_RETIRE_CHECK_S)
        finally:
            self._retiring = None

    def _retire(self, address: str, link: CommandLink) -> None:
        """Takes the link out of routing (a request for its node gets a fresh link), and
        keeps asking its node for the slot map."""
        del self._links[address]
        self._asked.pop(address, None)
        self._retired.add(link)
        self._former.pop(address, None)
        self._former[address] = None
        while len(self._former) > _MAX_FORMER_NODES:
            del self._former[next(iter(self._former))]
        logger.info(
            "Closing the connection to %s, which serves no slot now",
            address,
            extra={"event": "link_retired", "node": address},
        )

    # -- closing ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """No more retiring: the router is closing (then cancel ``retiring``)."""
        self._closed = True
        if self._retire_timer is not None:
            self._retire_timer.cancel()

    @property
    def retiring(self) -> asyncio.Task[None] | None:
        return self._retiring

    async def close(self, deadline: float) -> None:
        """Closes every link, retired ones included, by ``deadline`` (monotonic)."""
        closed: set[CommandLink] = set()
        for _ in range(_MAX_CLOSE_ROUNDS):  # a reader's unblock may still open a link
            links = (*self._links.values(), *self._retired)
            left = [link for link in links if link not in closed]
            if not left:
                break
            for link in left:
                await link.close(max(deadline - time.monotonic(), 0.0))
                closed.add(link)
