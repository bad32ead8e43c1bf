"""A retried send whose first copy landed is delivered once.

A retry happens when a connection breaks after Redis ran a command but before its reply
arrived; faults cannot produce that moment on demand, so these tests write the very same
request twice, which is exactly what the link does on a retry.
"""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from typing import cast

import pytest
from channels.exceptions import ChannelFull

from channels_ha import RedisChannelLayer
from channels_ha import _core as core_module
from channels_ha import _sequence as sequence
from channels_ha._buffers import now_ms
from channels_ha._codec import encode_element
from channels_ha.sandbox import Topology

from .conftest import LayerFactory, marker_is_next, run_switching_often

pytestmark = pytest.mark.redis_topologies("standalone", "sentinel", "cluster")


async def _send_twice(layer: RedisChannelLayer, channel: str) -> list[object]:
    push = layer._session().pusher.prepare_send(channel, {"type": "once"})
    return [await push.link.submit_packed(push.packed, push.key) for _ in range(2)]


async def test_process_specific_duplicate_dropped_by_receiver(layer: RedisChannelLayer) -> None:
    """Both copies reach the inbox; the receiving process delivers one and counts the other."""
    channel = await layer.new_channel()
    assert await _send_twice(layer, channel) == [[1], [1]]
    assert (await layer.receive(channel))["type"] == "once"
    await marker_is_next(layer, layer, channel)  # the copy was read before it
    assert layer.statistics().duplicates_dropped == 1


async def test_normal_channel_duplicate_refused_by_redis(layer: RedisChannelLayer) -> None:
    """The PUSH script refuses the second copy, so no competing receiver can get it."""
    assert await _send_twice(layer, "dedupe-normal") == [[1], [2]]
    assert (await layer.receive("dedupe-normal"))["type"] == "once"
    await marker_is_next(layer, layer, "dedupe-normal")


async def test_a_refused_push_written_again_is_judged_again(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A PUSH refused for capacity whose reply was lost is written again by the link; that
    copy must be refused (or stored) again, not counted as one already stored (seen: send()
    returned, and the message was never stored)."""
    layer = make_layer(redis_topology, capacity=1)
    await layer.send("full-normal", {"type": "first"})
    push = layer._session().pusher.prepare_send("full-normal", {"type": "second"})
    assert await push.link.submit_packed(push.packed, push.key) == [0]
    assert await push.link.submit_packed(push.packed, push.key) == [0]
    assert (await layer.receive("full-normal"))["type"] == "first"
    assert await push.link.submit_packed(push.packed, push.key) == [1]
    assert (await layer.receive("full-normal"))["type"] == "second"


async def test_a_stored_message_written_again_to_a_full_inbox_is_a_copy(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """The first write filled the inbox and its reply was lost: the write again must answer
    "copy", not "full" (seen: send() raised ChannelFull for a message that was delivered, so
    an application that retried got it twice). A new message is still refused."""
    layer = make_layer(redis_topology, capacity=1)
    channel = await layer.new_channel()
    assert await _send_twice(layer, channel) == [[1], [2]]
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "another"})
    assert (await layer.receive(channel))["type"] == "once"
    await marker_is_next(layer, layer, channel)


async def test_returned_messages_written_twice_are_stored_once(layer: RedisChannelLayer) -> None:
    """Messages given back to their list are stored once when the link writes the return twice."""
    channel, core, session = "dedupe-returned", layer._core, layer._session()
    key, shard = core.keys.channel(channel), core.shard_index(channel)
    expires = now_ms() + 60_000
    elements = [
        encode_element(expires, "a-returner", n, channel, core.codec.dumps({"type": "r", "n": n}))
        for n in (1, 2)
    ]
    await layer.send(channel, {"type": "r", "n": 3})  # already queued behind the returned ones
    for _ in range(2):
        await session.give_back.push_front(shard, key, elements, "one-return")
    link = session._shards[shard].link
    stored = cast(list[bytes], await link.submit("LRANGE", key, 0, -1, key=key))
    assert stored[:2] == elements
    assert len(stored) == 3
    assert [(await layer.receive(channel))["n"] for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("mode", ["send", "group_send"])
async def test_a_write_again_leaves_out_what_capacity_refused(
    make_layer: LayerFactory, redis_topology: Topology, mode: str
) -> None:
    """A send refused with ChannelFull, or a group_send copy skipped for a full inbox, is not
    written by the replay after a failover (seen: delivered later after all, after newer
    messages, and twice where the application retried); what was accepted still is."""
    receiver = make_layer(redis_topology, capacity=1)
    other = make_layer(redis_topology, prefix=receiver.prefix, capacity=1)  # room to spare
    filler = make_layer(redis_topology, prefix=receiver.prefix, capacity=1)
    sender = make_layer(redis_topology, prefix=receiver.prefix, capacity=1)
    channel, other_channel = await receiver.new_channel(), await other.new_channel()
    await receiver.group_add("replayed", channel)
    await other.group_add("replayed", other_channel)
    await filler.send(channel, {"type": "fill"})
    if mode == "send":
        with pytest.raises(ChannelFull):
            await sender.send(channel, {"type": "refused"})
        await sender.send(other_channel, {"type": "refused"})
    else:  # one PUSH of both inboxes (one per slot on Cluster): one full, one not
        await sender.group_send("replayed", {"type": "refused"})  # skipped where full
    assert (await receiver.receive(channel))["type"] == "fill"
    assert (await other.receive(other_channel))["type"] == "refused"
    session = sender._session()
    for shard in session._shards:
        session.resync.replay(shard)  # what meeting a new server run does
    for layer, target in ((receiver, channel), (other, other_channel)):
        await sender.send(target, {"type": "after"})
        assert (await layer.receive(target))["type"] == "after"
    assert other.statistics().duplicates_dropped == 1  # the accepted copy was written again


REFUSED = 10_000
RECORD_LIMIT = 1 << 10  # bytes (MEMORY USAGE) a sender's record of a channel may take


async def test_numbers_refused_for_capacity_do_not_pile_up(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Each refused number stays a gap (so that its retry is judged again); seen: one hash
    field per refusal for as long as the sender kept writing to the channel (40,000 fields
    after 50,000 sends to a channel with a slow consumer), then up to 8,192 of them, ~400 KB
    per sender and channel. The record is now a bit per number over the last 4,096."""
    layer = make_layer(redis_topology, capacity=1)
    await layer.send("refusing", {"type": "fill"})
    results = await asyncio.gather(
        *(layer.send("refusing", {"type": "x"}) for _ in range(REFUSED)), return_exceptions=True
    )
    assert all(isinstance(result, ChannelFull) for result in results)
    session = layer._session()
    link = session._shards[layer._core.shard_index("refusing")].link
    (key,) = await _scan(link, layer._core.keys.dedupe("refusing", "*"))  # this sender's
    size = cast(int, await link.submit("MEMORY", "USAGE", key, key=key))
    assert size < RECORD_LIMIT, f"the record takes {size:,} bytes"
    push = session.pusher.prepare_send("refusing", {"type": "latest"})  # the newest number
    assert (await layer.receive("refusing"))["type"] == "fill"
    assert await push.link.submit_packed(push.packed, push.key) == [1]


COMPETED = 3_000
MARKS_MEMORY_LIMIT = 32 << 10  # what the receivers' marks may hold after COMPETED messages


async def test_receivers_competing_for_a_channel_keep_small_marks(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Two processes take turns at one sender's messages on a worker channel: every number
    one takes is a gap the other never fills. Kept as a set of missing numbers, that was
    ~650 KB per (channel, sender) in each receiving process, and a sort per delivery; as
    bits over the last 4,096 numbers it is about 1 KB. Copies are still dropped."""
    sender = make_layer(redis_topology, capacity=2 * COMPETED)
    receivers = [make_layer(redis_topology, prefix=sender.prefix) for _ in range(2)]
    received: list[list[int]] = [[], []]

    async def receive(index: int) -> None:
        while True:
            message = await receivers[index].receive("competed")
            received[index].append(message["n"])
            await asyncio.sleep(0)  # the other receiver's turn

    tracemalloc.start()
    try:
        before = _marks_memory(tracemalloc.take_snapshot())
        tasks = [asyncio.create_task(receive(i)) for i in range(2)]
        for n in range(COMPETED):
            await sender.send("competed", {"type": "n", "n": n})
        deadline = asyncio.get_running_loop().time() + 30
        while len(received[0]) + len(received[1]) < COMPETED:
            assert asyncio.get_running_loop().time() < deadline, "messages did not arrive"
            await asyncio.sleep(0.05)
        held = _marks_memory(tracemalloc.take_snapshot()) - before
    finally:
        tracemalloc.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(received[0] + received[1]) == list(range(COMPETED))
    assert min(map(len, received)) > COMPETED // 10, "the receivers did not compete"
    assert held < MARKS_MEMORY_LIMIT, f"marks hold {held:,} bytes"


def _marks_memory(snapshot: tracemalloc.Snapshot) -> int:
    marks = tracemalloc.Filter(True, sequence.__file__)
    return sum(stat.size for stat in snapshot.filter_traces([marks]).statistics("filename"))


def test_marks_deliver_late_numbers_once_and_drop_copies() -> None:
    """The marks' rule, at the edges of their window: a number not seen yet is delivered
    once, however late (up to MAX_GAPS below the highest); a number seen, or further back
    than the window, is a copy."""
    marks = sequence.DeliveryMarks()
    assert not marks.is_copy("list", "sender", 5)  # 1 to 4 may still come
    assert not marks.is_copy("list", "sender", 3)
    assert marks.is_copy("list", "sender", 3)
    assert marks.is_copy("list", "sender", 5)
    top = 5 + sequence.MAX_GAPS
    assert not marks.is_copy("list", "sender", top)
    assert not marks.is_copy("list", "sender", 5 + 1)  # MAX_GAPS - 1 below: still a gap
    assert marks.is_copy("list", "sender", 4)  # further back than the window
    assert not marks.is_copy("list", "sender", top + 10 * sequence.MAX_GAPS)  # a jump
    assert marks.is_copy("list", "sender", top)
    assert not marks.is_copy("list", "other sender", 1)


RESUMED_AFTER = 1_000
NO_GAP_RECORD = 16  # bytes, at most, of a record with no gap: the highest number (see PUSH)


async def test_a_sender_back_after_receivers_forgot_it_starts_over(
    make_layer: LayerFactory, redis_topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that pauses longer than receivers and Redis remember its numbers, but not
    long enough to forget them itself, went on at the next number: every number before it
    became a gap in Redis (a hash of up to 4,097 fields written in one script call then, seen
    holding Redis up for 4 ms; bits now) and in each receiver. It now starts over under a new
    name once a list has been idle for half of what they remember. (What they remember is
    made short here: 2 s, from the layer's failover_timeout and expiry.)"""
    monkeypatch.setattr(core_module, "DEDUPE_MEMORY_MIN_S", 0.1)
    options = {"failover_timeout": 0.5, "expiry": 1, "capacity": 2 * RESUMED_AFTER}
    sender = make_layer(redis_topology, **options)
    receiver = make_layer(redis_topology, prefix=sender.prefix, **options)
    assert sender._core.dedupe_memory_s == 2.0
    for n in range(RESUMED_AFTER):
        await sender.send("resumed", {"type": "n", "n": n})
    assert [(await receiver.receive("resumed"))["n"] for _ in range(RESUMED_AFTER)] == list(
        range(RESUMED_AFTER)
    )
    await asyncio.sleep(sender._core.dedupe_memory_s * 1.5)
    await sender.send("resumed", {"type": "n", "n": RESUMED_AFTER})
    assert (await receiver.receive("resumed"))["n"] == RESUMED_AFTER
    session = sender._session()
    link = session._shards[0].link
    lengths = [
        cast(int, await link.submit("STRLEN", key, key=key))
        for key in await _scan(link, sender._core.keys.dedupe("resumed", "*"))
    ]
    assert lengths
    assert max(lengths) <= NO_GAP_RECORD, f"records of {lengths} bytes: gaps were marked"
    assert receiver.statistics().duplicates_dropped == 0


async def _scan(link: object, pattern: str) -> list[str]:
    """Keys matching ``pattern`` on the node of the normal channels' slot."""
    submit = link.submit  # type: ignore[attr-defined]
    keys: list[str] = []
    cursor = b"0"
    for _ in range(1_000):  # bounded: a sandbox holds few keys
        reply = await submit("SCAN", cursor, "MATCH", pattern, "COUNT", 1000, key=pattern)
        cursor, found = reply
        keys += [key.decode() for key in found]
        if cursor in (b"0", 0, "0"):
            return keys
    raise AssertionError("SCAN did not finish")


MARKED_BY_EACH_THREAD = 10_000
IN_STEP_EVERY = 500  # numbers each thread marks before waiting for the other


def test_marks_written_by_two_threads_at_once_keep_every_number_once() -> None:
    """Event loops in different threads (the ASGI server's and an async_to_sync call's)
    share the process's marks, and may pop from one list at once: each number is delivered
    once and a copy of each is dropped, however their marking interleaves. (The threads
    keep in step, well within the marks' window, as readers of one list do.) A guard: with
    the GIL it passed without the lock too (200,000 numbers, a switch every microsecond);
    it is for builds without the GIL."""
    marks = sequence.DeliveryMarks()
    delivered: list[list[int]] = [[], []]
    in_step = threading.Barrier(2, timeout=30)

    def mark(parity: int) -> None:  # the two readers take alternate numbers of one sender
        for seq in range(1 + parity, 2 * MARKED_BY_EACH_THREAD + 1, 2):
            if seq // 2 % IN_STEP_EVERY == 0:
                in_step.wait()
            if not marks.is_copy("list", "sender", seq):
                delivered[parity].append(seq)

    run_switching_often([threading.Thread(target=mark, args=(parity,)) for parity in (0, 1)])
    numbers = list(range(1, 2 * MARKED_BY_EACH_THREAD + 1))
    assert sorted(delivered[0] + delivered[1]) == numbers
    copies = numbers[-sequence.MAX_GAPS :]
    assert [seq for seq in copies if not marks.is_copy("list", "sender", seq)] == []
