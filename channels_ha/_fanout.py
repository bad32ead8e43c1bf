"""Where the copies of a ``group_send`` go, remembered per group.

A ``group_send`` stores one copy per process inbox and one per normal channel, batched into
one PUSH per shard (per slot on Cluster). Working out those targets walks every member, and
groups are sent to far more often than they change, so the targets are kept per group and
reused for as long as Redis returns the same member list.
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
    aux: str  # the inbox limit, or the normal channel's dedupe key
    kind: str  # the PUSH script's target kind
    named: str | list[str]  # the member channel(s) this copy is for
    capacity: int


class FanoutPlans:
    """The targets of each group, recomputed only when its member list changes."""

    __slots__ = ("_members", "_plans", "_resolve")

    def __init__(self, resolve: Callable[[list[str]], list[Target]]) -> None:
        self._resolve = resolve
        self._plans: dict[str, tuple[list[bytes], list[Target]]] = {}
        self._members = 0  # remembered over all groups

    def targets(self, group: str, members: list[bytes]) -> list[Target]:
        """The targets of ``members`` (as Redis returned them) of ``group``."""
        known = self._plans.get(group)
        if known is not None and known[0] == members:
            return known[1]
        targets = self._resolve([member.decode() for member in members])
        if known is not None:
            self._members -= len(known[0])
        elif len(self._plans) >= MAX_GROUPS_REMEMBERED:
            self._forget_all()
        if self._members + len(members) > MAX_MEMBERS_REMEMBERED:
            self._forget_all()
        self._plans[group] = (members, targets)
        self._members += len(members)
        return targets

    def _forget_all(self) -> None:
        self._plans.clear()
        self._members = 0
