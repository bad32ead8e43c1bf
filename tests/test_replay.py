"""What a process writes again after a master restarted empty (see channels_ha._replay).

The replay buffer's clock is moved on or stopped by the test (it is the only clock of
``channels_ha._replay``); Redis, the upkeep and the messages' own expiry keep the real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import Any

import pytest

from channels_ha import RedisChannelLayer, _replay
from channels_ha._constants import REPLAY_MAX_BYTES
from channels_ha.sandbox import TopologyFactory

from .conftest import LayerFactory

BODY = "x" * (1 << 20)  # a large message: 1 MiB
GROUP_INBOXES = 4  # other processes' consumers in the group: one copy of the body each


class ReplayClock:
    """Stands in for the ``time`` module of channels_ha._replay (which uses only
    ``monotonic``): shifted ahead, or stopped."""

    def __init__(self) -> None:
        self.shift_s = 0.0
        self.stopped_at: float | None = None

    def monotonic(self) -> float:
        if self.stopped_at is not None:
            return self.stopped_at
        return time.monotonic() + self.shift_s

    def stop(self) -> None:
        """Every write from now on is acknowledged in the same instant: none leaves the 2 s
        window, whatever the machine's speed (as on a fast one sending in a burst)."""
        self.stopped_at = self.monotonic()


@pytest.fixture
def replay_clock(monkeypatch: pytest.MonkeyPatch) -> ReplayClock:
    clock = ReplayClock()
    monkeypatch.setattr(_replay, "time", clock)
    return clock


async def test_an_idle_sender_writes_again_past_a_minute_within_its_expiry(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory, replay_clock: ReplayClock
) -> None:
    """Seen: with ``expiry=300``, a process idle for over 60 s stopped checking whether its
    master lost its data (it had "nothing to replay"), so a message it sent 61 s before the
    master restarted empty, alive for 4 more minutes, never came back."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology, expiry=300)
    receiver = make_layer(topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    await sender.send(channel, {"type": "sent.before"})  # not received yet
    replay_clock.shift_s = 61.0  # the sender idle since, for 61 s
    await topology.nodes[0].arestart_empty()
    received = await asyncio.wait_for(receiver.receive(channel), 5)  # epoch checks: every 1 s
    assert received == {"type": "sent.before"}


async def _send_large(
    mode: str, sender: RedisChannelLayer, channel: str, group: str, count: int
) -> tuple[int, int]:
    """Sends ``count`` large messages; returns the bytes of the last request and of all those
    kept for writing again."""
    for number in range(count):
        message = {"type": "big", "n": number, "body": BODY}
        if mode == "send":
            await sender.send(channel, message)
        else:
            await sender.group_send(group, message)
    requests = sender._core.recent[0].requests()
    return len(requests[-1][1]), sum(len(request) for _, request in requests)


SMALL_CAP = 10 << 20  # a replay_max_bytes below the default: 10 sends of 1 MiB, less overhead


def _cap_options(cap: int) -> dict[str, int]:
    """The layer options that give a layer ``cap``: the default is not passed at all."""
    return {} if cap == REPLAY_MAX_BYTES else {"replay_max_bytes": cap}


@pytest.mark.parametrize("cap", [REPLAY_MAX_BYTES, SMALL_CAP], ids=["default", "small"])
@pytest.mark.parametrize("mode", ["send", "group_send"])
async def test_large_messages_keep_the_replay_buffer_within_its_byte_cap(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    replay_clock: ReplayClock,
    mode: str,
    cap: int,
) -> None:
    """Seen: 40 sends of 1 MiB held 40 MiB for writing again, 16 group_sends of 1 MiB to 4
    processes 64 MiB (a group_send's request has one copy per receiving process): up to
    100,000 requests of any size. The oldest go once the cap (32 MiB, or replay_max_bytes)
    is reached; the newest stay."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology, **_cap_options(cap))
    for number in range(GROUP_INBOXES):
        await sender.group_add("big", f"specific.other{number}!consumer")
    replay_clock.stop()
    per_request = len(BODY) * (1 if mode == "send" else GROUP_INBOXES)
    count = cap // per_request + 8
    size, held = await _send_large(mode, sender, "big-channel", "big", count)
    assert held <= cap, f"{held / 2**20:.1f} MiB held"
    assert held > cap - 2 * size, "dropped more than needed"


@pytest.mark.parametrize("cap", [REPLAY_MAX_BYTES, SMALL_CAP], ids=["default", "small"])
async def test_past_the_byte_cap_the_newest_messages_still_come_back(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    replay_clock: ReplayClock,
    caplog: pytest.LogCaptureFixture,
    cap: int,
) -> None:
    """After a master restarted empty, the sender writes again the newest writes the cap held,
    in order; the older ones are not written again, and are counted and logged."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology, **_cap_options(cap))
    receiver = make_layer(topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    replay_clock.stop()
    count = cap // len(BODY) + 8
    with caplog.at_level(logging.WARNING, logger="channels_ha.layer"):
        await _send_large("send", sender, channel, "", count)
    kept = len(sender._core.recent[0].requests())
    assert kept < count, f"kept all {count}"
    (logged,) = [r for r in caplog.records if getattr(r, "event", None) == "replay_dropped"]
    assert logged.messages == 1  # type: ignore[attr-defined]  # the first drop: at once
    await topology.nodes[0].arestart_empty()
    received = [(await asyncio.wait_for(receiver.receive(channel), 10))["n"] for _ in range(kept)]
    assert received == list(range(count - kept, count))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(receiver.receive(channel), 0.5)
    assert sender.statistics().shards[0].replay_dropped == count - kept


async def test_a_write_larger_than_the_cap_does_not_push_out_the_others(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    replay_clock: ReplayClock,
) -> None:
    """A single write over the byte cap is not kept, and only it: the writes kept before it
    still come back after a master restarted empty (seen: it pushed them all out first,
    then itself, and none came back)."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology)
    receiver = make_layer(topology, prefix=sender.prefix)
    small, large = await receiver.new_channel(), await receiver.new_channel()
    replay_clock.stop()
    for number in range(3):
        await sender.send(small, {"type": "small", "n": number})
    await sender.send(large, {"type": "big", "body": "x" * (REPLAY_MAX_BYTES + (1 << 20))})
    kept = len(sender._core.recent[0].requests())
    await topology.nodes[0].arestart_empty()
    received: list[object] = []
    with suppress(asyncio.TimeoutError):  # what did not come back is reported below
        for _ in range(3):
            received.append((await asyncio.wait_for(receiver.receive(small), 5))["n"])
    assert received == [0, 1, 2], f"kept {kept} writes; back: {received}"
    assert sender.statistics().shards[0].replay_dropped == 1


@pytest.mark.parametrize(("cap", "back"), [(REPLAY_MAX_BYTES, ["before", "after"]), (0, ["after"])])
async def test_a_cap_of_zero_keeps_nothing_to_write_again(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    caplog: pytest.LogCaptureFixture,
    cap: int,
    back: list[str],
) -> None:
    """With ``replay_max_bytes=0`` a message that a master restarted empty forgot before its
    receiver took it is gone (by default it is written again, ahead of the next send);
    nothing is kept, and nothing is counted or logged as dropped."""
    topology = redis_sandbox_factory("standalone")
    sender = make_layer(topology, **_cap_options(cap))
    receiver = make_layer(topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    with caplog.at_level(logging.WARNING, logger="channels_ha.layer"):
        await sender.send(channel, {"type": "before"})  # not received yet
    assert bool(sender._core.recent[0].requests()) == bool(cap)
    await topology.nodes[0].arestart_empty()
    await sender.send(channel, {"type": "after"})  # meets the new server run first
    received = [(await asyncio.wait_for(receiver.receive(channel), 5))["type"] for _ in back]
    assert received == back
    assert sender.statistics().shards[0].replay_dropped == 0
    assert not [r for r in caplog.records if getattr(r, "event", None) == "replay_dropped"]


WAIT_TIMEOUT_S = 1.0  # replica_ack_timeout: a WAIT on a server without replicas takes this long


async def test_a_push_written_again_with_its_wait_is_kept_once(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With replica_acks, a PUSH whose WAIT lost its connection goes again with a new WAIT
    (WAIT counts its own connection's writes); seen: both copies were kept for writing
    again, the write's bytes counted twice against the cap and the message written twice
    after a failover. One write is kept once, as its last copy."""
    topology = redis_sandbox_factory("standalone")  # no replica: each WAIT takes its timeout
    sender = make_layer(topology, replica_acks=1, replica_ack_timeout=WAIT_TIMEOUT_S)
    receiver = make_layer(topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    link = sender._session()._shards[0].link
    real_submit, waiting = link.submit, asyncio.Event()

    def submit(*args: Any, **options: Any) -> asyncio.Future[object]:
        if args[0] == "WAIT":
            waiting.set()
        return real_submit(*args, **options)

    monkeypatch.setattr(link, "submit", submit)
    sending = asyncio.create_task(sender.send(channel, {"type": "acked"}))
    await asyncio.wait_for(waiting.wait(), 5)
    server = link.live_server
    assert server is not None
    topology.nodes[0].client().client_kill_filter(_id=server.client_id)  # WAIT's connection
    await asyncio.wait_for(sending, 4 * WAIT_TIMEOUT_S + 5)
    assert sender.statistics().shards[0].reconnects == 1  # the PUSH went again, with a WAIT
    kept = [request for _, request in sender._core.recent[0].requests()]
    assert len(kept) == 1, f"kept {len(kept)} entries, {sum(map(len, kept))} bytes"
    assert sender._core.recent[0]._bytes == len(kept[0]) + _replay.ENTRY_OVERHEAD_BYTES
    assert (await asyncio.wait_for(receiver.receive(channel), 5))["type"] == "acked"
