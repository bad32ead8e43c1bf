"""The requests of a Cluster slot held back while the slot changes owner, in order.

Order within a slot is kept as on a single node (receivers rely on it to recognise retried
copies): when a request of a slot comes back, the requests of that slot written after it
on the same link will come back too or complete there, and new requests of the slot wait
until they have, before all of them go to the new owner together.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ._link import CommandLink, Request
from .exceptions import LayerClosed, RedisUnavailable


@dataclass
class Held:
    """Requests of one slot waiting to be routed again, in order."""

    returned: deque[Request] = field(default_factory=deque)  # came back from a link
    newer: deque[Request] = field(default_factory=deque)  # submitted while held
    expected: set[Request] = field(default_factory=set)  # still due back from the old link
    not_before: float = 0.0  # monotonic; TRYAGAIN asks for a short pause


class HeldSlots(dict[int, Held]):
    """The held slots of one router, by slot (a dict: the router's look-up of every request
    costs no call); ``on_settled`` runs when a request they waited for completed on its old
    link."""

    def __init__(self, on_settled: Callable[[], None]) -> None:
        super().__init__()
        self._on_settled = on_settled

    def hold_new(self, request: Request) -> None:
        """Holds a new request of a slot that has no owner."""
        self[request.slot] = Held(newer=deque([request]))

    def hand_back(self, link: CommandLink, request: Request) -> Held:
        """Holds a request ``link`` handed back, and with it (the first time) the later
        requests of its slot still on that link."""
        held = self.get(request.slot)
        if held is None:
            held = self[request.slot] = Held()
            for later in link.inflight_in_slot(request.slot, after=request):
                held.expected.add(later)
                later.future.add_done_callback(functools.partial(self._settled, later))
        held.expected.discard(request)
        held.returned.append(request)
        return held

    def expect(self, request: Request) -> None:
        """Holds the slot of ``request``, still on a link other than its owner's, until it
        is answered there or handed back."""
        held = self.get(request.slot)
        if held is None:
            held = self[request.slot] = Held()
        if request not in held.expected:  # (one handed back is in no link)
            held.expected.add(request)
            request.future.add_done_callback(functools.partial(self._settled, request))

    def _settled(self, request: Request, _: object = None) -> None:
        """An expected request completed on its old link: one fewer to wait for."""
        held = self.get(request.slot)
        if held is not None and request in held.expected:
            held.expected.discard(request)
            self._on_settled()

    def release_ready(
        self, owners: Sequence[str | None], link_of: Callable[[str], CommandLink]
    ) -> None:
        """Sends each slot's requests to its owner, once it has one and waits for nothing."""
        now = time.monotonic()
        for slot, held in list(self.items()):
            owner = owners[slot]
            if owner is None or held.expected or held.not_before > now:
                continue
            del self[slot]
            link = link_of(owner)
            for request in (*held.returned, *held.newer):
                if not request.future.done():
                    link.submit_request(request)

    def fail_overdue(self, give_up: Callable[[float], RedisUnavailable]) -> None:
        """Fails requests past their deadline (with what ``give_up`` makes of the longest
        they were overdue) and forgets slots left with nothing to send."""
        now = time.monotonic()
        error: RedisUnavailable | None = None
        for slot, held in list(self.items()):
            for request in (*held.returned, *held.newer):
                if request.deadline <= now and not request.future.done():
                    error = error or give_up(now - request.deadline)
                    request.future.set_exception(error)
            if all(r.future.done() for r in (*held.returned, *held.newer, *held.expected)):
                del self[slot]

    def futures(self) -> list[asyncio.Future[object]]:
        """The futures of the requests held (not of those expected back)."""
        return [r.future for h in self.values() for r in (*h.returned, *h.newer)]

    def fail_all(self, reason: str) -> None:
        """At close: what is still held will not be sent."""
        for held in self.values():
            for request in (*held.returned, *held.newer):
                if not request.future.done():
                    request.future.set_exception(LayerClosed(reason))
        self.clear()
