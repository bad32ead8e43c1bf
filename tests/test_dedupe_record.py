"""The PUSH script's de-duplication record of a normal channel: a bounded bit window.

Until 3b3d015 the record was a hash with a field per gap, up to 8,192 of them (~400 KB per
sender and channel where a full channel refused a sender for long); it is now the highest
number and one bit per number below it. The old script, kept in push_3b3d015.lua, runs beside
the new one here, on records of their own, and the two must decide alike wherever the window
reaches.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import cast

import pytest
import redis

from channels_ha._scripts import PUSH
from channels_ha._sequence import MAX_GAPS

pytestmark = pytest.mark.redis_topologies("standalone")

OLD_PUSH = (Path(__file__).parent / "push_3b3d015.lua").read_text()
FULL, PUSHED, COPY = 0, 1, 2
ROOMY = 10**9  # a capacity never reached: capacity 0 refuses every message
TTL_MS = 600_000
STEPS = 4_000
RECORD_LIMIT = 1 << 10  # bytes (MEMORY USAGE) a record may take


class _Push:
    """One script's PUSH of numbered messages to one normal channel, from one sender."""

    def __init__(self, client: redis.Redis, source: str, name: str) -> None:
        self.sha = client.script_load(source)
        base = f"test{uuid.uuid4().hex[:10]}:{{normal}}:{name}"
        self.keys = (f"{base}:list", f"{base}:record", f"{base}:wake")

    def queue(self, pipe: redis.client.Pipeline, seq: int, full: bool) -> None:
        pipe.evalsha(self.sha, 3, *self.keys, *_arguments(seq, full))


def _arguments(seq: int, full: bool) -> tuple[int | str, ...]:
    element = f"{9_999_999_999_999}{seq}"  # expires in the year 2286
    return TTL_MS, 0, TTL_MS, 0 if full else ROOMY, seq, element, "c"


class _Window:
    """The rule of the PUSH script's comment: what the record must decide."""

    def __init__(self) -> None:
        self.highest = 0
        self.gaps: set[int] = set()

    def push(self, seq: int, full: bool) -> int:
        if seq > self.highest:
            self.gaps.update(range(max(self.highest + 1, seq - MAX_GAPS), seq))
            self.gaps = {gap for gap in self.gaps if gap >= seq - MAX_GAPS}
            self.highest = seq
        elif self.highest - seq > MAX_GAPS or seq not in self.gaps:
            return COPY
        else:
            self.gaps.discard(seq)
        if full:
            self.gaps.add(seq)
            return FULL
        return PUSHED


def _steps(seed: int) -> list[tuple[int, bool]]:
    """(number, refused for capacity) of a sender's pushes: mostly in order, with jumps small
    and past the window, retries of recent numbers, numbers around the window's edge and
    further back, and a quarter refused."""
    rng = random.Random(seed)
    steps: list[tuple[int, bool]] = []
    highest = 0
    for _ in range(STEPS):
        draw = rng.random()
        if draw < 0.45:
            seq = highest + 1
        elif draw < 0.50:
            seq = highest + rng.randint(2, MAX_GAPS + 100)
        elif draw < 0.53:
            seq = highest + rng.randint(MAX_GAPS + 1, 5 * MAX_GAPS)
        elif draw < 0.80 and steps:
            seq = rng.choice(steps[-2 * MAX_GAPS :])[0]
        elif draw < 0.90:
            seq = max(1, highest - MAX_GAPS + rng.randint(-3, 3))
        else:
            seq = max(1, highest - rng.randint(0, 3 * MAX_GAPS))
        steps.append((seq, rng.random() < 0.25))
        highest = max(highest, seq)
    return steps


def _run(client: redis.Redis, push: _Push, steps: list[tuple[int, bool]]) -> list[int]:
    statuses: list[int] = []
    for start in range(0, len(steps), 500):
        pipe = client.pipeline(transaction=False)
        for seq, full in steps[start : start + 500]:
            push.queue(pipe, seq, full)
        statuses += [reply[0] for reply in pipe.execute()]
    return statuses


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_window_decides_as_the_hash_did(master_client: redis.Redis, seed: int) -> None:
    """In order, gaps, reordered retries, refusals, jumps within and past the window, copies:
    the new record decides by the rule, and as the old hash did for every number up to
    MAX_GAPS below the highest. Further back the old hash could still hold a gap (it kept
    the newest MAX_GAPS to 2 * MAX_GAPS of them, however old); the window calls it a copy."""
    steps = _steps(seed)
    old = _run(master_client, _Push(master_client, OLD_PUSH, "old"), steps)
    new_push = _Push(master_client, PUSH.source, "new")
    new = _run(master_client, new_push, steps)
    window, differences = _Window(), []
    for step, ((seq, full), was, now) in enumerate(zip(steps, old, new, strict=True)):
        behind = window.highest - seq
        assert now == window.push(seq, full), f"step {step}: {seq} ({behind} behind)"
        if behind <= MAX_GAPS and was != now:
            differences.append((step, seq, behind, was, now))
    assert differences == []
    assert set(new) == {FULL, PUSHED, COPY}
    assert cast(int, master_client.memory_usage(new_push.keys[1])) < RECORD_LIMIT


def test_a_gap_at_the_window_edge_survives_refusals(master_client: redis.Redis) -> None:
    """A number skipped by a jump is still a gap exactly MAX_GAPS below the highest, after a
    run of refusals (seen: the old hash trimmed it away after 4,096 refusals and answered
    "copy", so send() returned for a message never stored)."""
    push = _Push(master_client, PUSH.source, "edge")
    first = MAX_GAPS + 2  # a jump: 2 to first - 1 are gaps
    highest = first + MAX_GAPS - 1
    steps = [(seq, True) for seq in range(first, highest + 1)] + [(highest - MAX_GAPS, False)]
    statuses = _run(master_client, push, steps)
    assert statuses[:-1] == [FULL] * MAX_GAPS
    assert statuses[-1] == PUSHED


def test_old_and_new_records_are_never_mistaken(master_client: redis.Redis) -> None:
    """Each version's clients name records apart (``:d:`` a hash, ``:s:`` a string), and
    should a script ever meet the other's record it fails on its type, not misjudging a
    number."""
    old, new = _Push(master_client, OLD_PUSH, "old"), _Push(master_client, PUSH.source, "new")
    for push in (old, new):
        _run(master_client, push, [(5, False)])
    for push, other in ((old, new), (new, old)):
        keys = (push.keys[0], other.keys[1], push.keys[2])
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            master_client.evalsha(push.sha, 3, *keys, *_arguments(6, False))
