"""What a process remembers of its channels stays bounded by its live ones under churn."""

from __future__ import annotations

import time

from channels_ha._groups import Memberships

LIVENESS_S = 0.05
DAY_S = 86_400.0


def _after_liveness(started: float) -> None:
    """Lets the liveness window pass: the very thing under test is time elapsing."""
    for _ in range(100):
        if time.monotonic() - started > LIVENESS_S:
            return
        time.sleep(LIVENESS_S / 5)
    raise AssertionError("the clock did not move")


def test_channels_that_left_their_groups_are_forgotten_once_not_live() -> None:
    """Seen: every WebSocket channel of the last day kept (group_expiry), ~220 bytes each,
    and scanned at every sweep, although only members are ever asked about."""
    memberships = Memberships(LIVENESS_S)
    started = time.monotonic()
    for number in range(1_000):  # consumers that connected, received, and left
        channel = f"specific.churn!{number}"
        memberships.added("room", channel)
        memberships.touch(channel)
        memberships.discarded("room", channel)
    memberships.added("room", "specific.churn!stays")
    memberships.touch("specific.churn!stays")
    assert memberships.remembered() == 1_001
    _after_liveness(started)
    memberships.forget_dead(DAY_S)
    assert memberships.remembered() == 1
    assert memberships.live_groups() == {}  # a member idle past liveness: not re-asserted
    memberships.touch("specific.churn!stays")
    assert memberships.live_groups() == {"room": ["specific.churn!stays"]}


def test_a_member_idle_for_less_than_the_group_expiry_is_kept() -> None:
    """A consumer busy for minutes is still in its groups in Redis: it must be re-asserted
    when it receives again, so its record outlives the liveness window."""
    memberships = Memberships(LIVENESS_S)
    started = time.monotonic()
    memberships.added("room", "specific.busy!1")
    memberships.touch("specific.busy!1")
    _after_liveness(started)
    memberships.forget_dead(DAY_S)
    assert memberships.remembered() == 1
    memberships.forget_dead(0.0)  # past the group expiry: Redis forgot it too
    assert memberships.remembered() == 0


def test_a_membership_joined_again_since_a_reassertion_began_is_kept() -> None:
    """A re-assertion reports the channel discarded elsewhere; a group_add made since it
    began may have reached Redis after it (another event loop's connection): kept."""
    memberships = Memberships(LIVENESS_S)
    memberships.added("room", "specific.kicked!1")
    began = time.monotonic()
    memberships.added("room", "specific.kicked!1")
    assert not memberships.forget("room", "specific.kicked!1", began)
    assert memberships.forget("room", "specific.kicked!1", time.monotonic())
    assert len(memberships) == 0


def test_a_membership_being_joined_is_not_forgotten() -> None:
    """While a group_add is under way, no re-assertion report can be about it; once it
    ended, it counts from then."""
    memberships = Memberships(LIVENESS_S)
    with memberships.joining("room", "specific.joining!1"):
        assert not memberships.forget("room", "specific.joining!1", time.monotonic() + 1)
        ended = time.monotonic()
    assert not memberships.forget("room", "specific.joining!1", ended)
    assert memberships.forget("room", "specific.joining!1", time.monotonic())


def test_the_record_a_join_cleared_lasts_as_long_as_the_membership() -> None:
    """The discard record a group_add cleared is told at each re-assertion while the
    membership lasts; not noted once the membership was discarded meanwhile, and gone with
    it (a later join of the channel cleared nothing)."""
    memberships = Memberships(LIVENESS_S)
    memberships.waiting = lambda channel: True  # (every channel live)
    memberships.added("room", "specific.back!1")
    memberships.cleared_record("room", "specific.back!1", "1700000600.5")
    assert memberships.live() == {"room": {"specific.back!1": "1700000600.5"}}
    memberships.discarded("room", "specific.back!1")
    memberships.cleared_record("room", "specific.back!1", "1700000601.5")
    memberships.added("room", "specific.back!1")
    assert memberships.live() == {"room": {"specific.back!1": ""}}
