"""Where the copies of a ``group_send`` go, remembered per group.

A ``group_send`` stores one copy per process inbox and one per normal channel, batched into
one PUSH per shard (per slot on Cluster). Working out those targets walks every member, and
groups are sent to far more often than they change, so the targets are kept per group and
reused for as long as Redis returns the same member list.

With the targets goes the group's membership token (see GROUP_PUSH in ``_scripts``) when one
PUSH can carry them all: the next ``group_send`` then skips reading the members and lets the
server check that the plan still holds.
"""

from __future__ import annotations

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

    __slots__ = ("_members", "_plans", "_resolve")

    def __init__(self, resolve: Callable[[list[str]], list[Target]]) -> None:
        self._resolve = resolve
        self._plans: dict[str, Plan] = {}
        self._members = 0  # remembered over all groups

    def targets(
        self,
        group: str,
        members: list[bytes],
        token: str | None = None,
        unit: tuple[int, int] | None = None,
    ) -> list[Target]:
        """The targets of ``members`` of ``group``, remembered with their membership
        ``token`` if they all belong to ``unit`` (the group's own shard), which one
        GROUP_PUSH can then cover."""
        known = self._plans.get(group)
        if known is not None and known.members == members:
            targets = known.targets
            token = token if _all_in(targets, unit) else None
            if known.token != token:
                self._plans[group] = known._replace(token=token)
            return targets
        targets = self._resolve([member.decode() for member in members])
        token = token if _all_in(targets, unit) else None
        if known is not None:
            self._members -= len(known.members)
        elif len(self._plans) >= MAX_GROUPS_REMEMBERED:
            self._forget_all()
        if self._members + len(members) > MAX_MEMBERS_REMEMBERED:
            self._forget_all()
        self._plans[group] = Plan(members, targets, token)
        self._members += len(members)
        return targets

    def tokened(self, group: str) -> Plan | None:
        """The remembered plan of ``group``, if it has a token to check it by."""
        plan = self._plans.get(group)
        return plan if plan is not None and plan.token is not None else None

    def distrust(self, group: str) -> None:
        """Forgets the token of ``group``: the server found the plan stale."""
        plan = self._plans.get(group)
        if plan is not None and plan.token is not None:
            self._plans[group] = plan._replace(token=None)

    def _forget_all(self) -> None:
        self._plans.clear()
        self._members = 0


def _all_in(targets: list[Target], unit: tuple[int, int] | None) -> bool:
    return unit is not None and all(target.unit == unit for target in targets)
