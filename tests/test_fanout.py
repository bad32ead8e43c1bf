"""The per-group memory of group_send targets: reused while the member list is the same,
recomputed when it changes, and bounded however many or large the groups are."""

from __future__ import annotations

from channels_ha._fanout import MAX_GROUPS_REMEMBERED, MAX_MEMBERS_REMEMBERED, FanoutPlans, Target


class Resolver:
    """Counts the member lists it is asked to resolve."""

    def __init__(self) -> None:
        self.resolved: list[list[str]] = []

    def __call__(self, members: list[str]) -> list[Target]:
        self.resolved.append(members)
        return [Target((0, 0), f"list:{m}", f"aux:{m}", "c", m, 100) for m in members]


def test_same_members_reuse_the_targets_and_changes_recompute_them() -> None:
    resolver = Resolver()
    plans = FanoutPlans()
    first = plans.targets("room", [b"a", b"b"], resolver)
    assert plans.targets("room", [b"a", b"b"], resolver) is first
    changed = plans.targets("room", [b"a", b"c"], resolver)
    assert [t.named for t in changed] == ["a", "c"]
    assert resolver.resolved == [["a", "b"], ["a", "c"]]


def test_memory_is_bounded_in_groups() -> None:
    resolver = Resolver()
    plans = FanoutPlans()
    for number in range(MAX_GROUPS_REMEMBERED + 1):
        plans.targets(f"group-{number}", [b"a"], resolver)
    plans.targets("group-0", [b"a"], resolver)  # forgotten when the memory started over
    assert len(resolver.resolved) == MAX_GROUPS_REMEMBERED + 2
    plans.targets(f"group-{MAX_GROUPS_REMEMBERED}", [b"a"], resolver)  # remembered since
    assert len(resolver.resolved) == MAX_GROUPS_REMEMBERED + 2


def test_memory_is_bounded_in_members() -> None:
    resolver = Resolver()
    plans = FanoutPlans()
    half = [b"m%d" % n for n in range(MAX_MEMBERS_REMEMBERED // 2 + 1)]
    plans.targets("one", half, resolver)
    plans.targets("two", half, resolver)  # over the bound together: "one" is forgotten
    plans.targets("two", half, resolver)
    assert len(resolver.resolved) == 2
    plans.targets("one", half, resolver)
    assert len(resolver.resolved) == 3


def test_a_stale_plan_is_distrusted_only_if_no_newer_one_replaced_it() -> None:
    """Event loops share the plans: one whose GROUP_PUSH was refused must not take the token
    of the plan another event loop stored meanwhile from a newer read."""
    resolver = Resolver()
    plans = FanoutPlans()
    plans.targets("room", [b"a"], resolver, "old", (0, 0))
    stale = plans.tokened("room")
    assert stale is not None
    plans.targets("room", [b"a", b"b"], resolver, "new", (0, 0))  # another event loop's read
    plans.distrust("room", stale)
    newer = plans.tokened("room")
    assert newer is not None
    assert newer.token == "new"
    plans.distrust("room", newer)
    assert plans.tokened("room") is None
