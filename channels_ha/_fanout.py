"""Where the copies of a ``group_send`` go, remembered per group.

A ``group_send`` stores one copy per process inbox and one per normal channel, batched into
one PUSH per shard (per slot on Cluster). Working out those targets walks every member, and
groups are sent to far more often than they change, so the targets are kept per group and
reused for as long as Redis returns the same member list.

With the targets goes the group's membership token (see GROUP_PUSH in ``_scripts``) when one
PUSH can carry them all: the next ``group_send`` then skips reading the members and lets the
server check that the plan still holds.

The plans are the process's, shared by the layer's event loops: sync code (``async_to_sync``:
a Django view, a Celery task) runs each call in a session of its own, which would otherwise
read the members every time. A plan holds plain values only (keys, kinds, capacities: what
any session would work out from the same members), and each one pairs a member list with the
token read with it, so whichever thread's plan is kept is one the server can check; one found
stale costs a read of the members, as in one event loop. The threads share them behind a
lock, held for a few dict operations and never across an ``await``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

# How much is remembered at once, in groups and in members over all groups; past either the
# memory starts over (a process that sends to more than this recomputes, which is only what
# it did before).
MAX_GROUPS_REMEMBERED = 1024
MAX_MEMBERS_REMEMBERED = 100_000


class Target(NamedTuple):
    """One copy of a group message: the list it goes to and what the PUSH script needs."""

    unit: tuple[int, int]  # (shard, slot): targets of one unit share one PUSH
    key: str  # the list
    aux: str  # the inbox limit; "" for a normal channel (its dedupe key depends on the sender)
    kind: str  # the PUSH script's target kind
    named: str | list[str]  # the member channel(s) this copy is for
    capacity: int


class Plan(NamedTuple):
    members: list[bytes]  # as Redis returned them
    targets: list[Target]
    token: str | None  # the membership token they stand for, if one PUSH carries them all


class FanoutPlans:
    """The targets of each group, recomputed only when its member list changes."""

    __slots__ = ("_lock", "_members", "_plans")

    def __init__(self) -> None:
        self._plans: dict[str, Plan] = {}
        self._members = 0  # remembered over all groups
        self._lock = threading.Lock()

    def targets(
        self,
        group: str,
        members: list[bytes],
        resolve: Callable[[list[str]], list[Target]],
        token: str | None = None,
        unit: tuple[int, int] | None = None,
    ) -> list[Target]:
        """The targets of ``members`` of ``group`` (worked out by ``resolve`` if they are
        not those remembered), remembered with their membership ``token`` if they all
        belong to ``unit`` (the group's own shard), which one GROUP_PUSH can then cover."""
        with self._lock:
            known = self._plans.get(group)
        if known is not None and known.members == members:
            targets = known.targets
        else:  # outside the lock: a large group takes a while, and other groups need not wait
            targets = resolve([member.decode() for member in members])
        self._remember(group, Plan(members, targets, token if _all_in(targets, unit) else None))
        return targets

    def _remember(self, group: str, plan: Plan) -> None:
        with self._lock:
            known = self._plans.pop(group, None)
            if known is not None:
                self._members -= len(known.members)
            elif len(self._plans) >= MAX_GROUPS_REMEMBERED:
                self._forget_all()
            if self._members + len(plan.members) > MAX_MEMBERS_REMEMBERED:
                self._forget_all()
            self._plans[group] = plan
            self._members += len(plan.members)

    def tokened(self, group: str) -> Plan | None:
        """The remembered plan of ``group``, if it has a token to check it by."""
        with self._lock:
            plan = self._plans.get(group)
        return plan if plan is not None and plan.token is not None else None

    def distrust(self, group: str, plan: Plan) -> None:
        """Forgets the token of ``plan``, which the server found stale, unless another
        event loop replaced the plan of ``group`` meanwhile (with a newer token, likely)."""
        with self._lock:
            if self._plans.get(group) is plan:
                self._plans[group] = plan._replace(token=None)

    def forget(self) -> None:
        """Forgets every plan: flush() deleted the groups."""
        with self._lock:
            self._forget_all()

    def _forget_all(self) -> None:
        self._plans.clear()
        self._members = 0


def _all_in(targets: list[Target], unit: tuple[int, int] | None) -> bool:
    return unit is not None and all(target.unit == unit for target in targets)
