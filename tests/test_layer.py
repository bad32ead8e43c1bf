"""The Channels layer specification, on every topology the layer supports."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import threading
import time

import channels_redis.core
import pytest
import redis
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from channels_ha import ConfigurationError, ForeignChannel, RedisChannelLayer
from channels_ha._constants import MAX_EXPIRY_S, MAX_OPTION_S
from channels_ha._keys import KeyLayout
from channels_ha.sandbox import Topology

from .conftest import LayerFactory

pytestmark = pytest.mark.redis_topologies("standalone", "tls", "sentinel", "cluster")

NOTHING_ARRIVES_S = 0.1


async def assert_nothing_arrives(layer: RedisChannelLayer, channel: str) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), NOTHING_ARRIVES_S)


async def test_send_receive_normal_channel(layer: RedisChannelLayer) -> None:
    """A message sent to a normal channel is received from it, unchanged."""
    message = {"type": "test.message", "text": "hello", "data": b"\x00\xff", "n": [1, 2.5]}
    await layer.send("test-channel", message)
    assert await layer.receive("test-channel") == message


async def test_send_receive_process_specific_channel(layer: RedisChannelLayer) -> None:
    """new_channel() names a channel of this process that receive() reads."""
    channel = await layer.new_channel()
    assert re.fullmatch(r"specific\.[0-9a-f]{32}![0-9a-f]{32}", channel)
    await layer.send(channel, {"type": "test.message", "value": 1})
    assert await layer.receive(channel) == {"type": "test.message", "value": 1}


async def test_messages_arrive_in_order(layer: RedisChannelLayer) -> None:
    """Messages on one channel are received in the order they were sent (FIFO)."""
    specific = await layer.new_channel()
    for channel in ("fifo", specific):
        for number in range(50):
            await layer.send(channel, {"type": "n", "n": number})
        received = [(await layer.receive(channel))["n"] for _ in range(50)]
        assert received == list(range(50))


async def test_process_specific_channels_do_not_mix(layer: RedisChannelLayer) -> None:
    """Two channels of one process share an inbox but each receives only its own messages."""
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.send(first, {"type": "to.first"})
    await layer.send(second, {"type": "to.second"})
    assert (await layer.receive(second))["type"] == "to.second"
    assert (await layer.receive(first))["type"] == "to.first"


async def test_receiving_on_another_layers_process_channel_is_refused(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """As channels_redis refuses it ("Wrong client prefix"): the receiver would otherwise pop
    the owner's whole inbox, and the owner's messages for its other channels with it."""
    owner, other = make_layer(redis_topology), make_layer(redis_topology)
    first, second = await owner.new_channel(), await owner.new_channel()
    await owner.send(first, {"type": "to.first"})
    await owner.send(second, {"type": "to.second"})
    with pytest.raises(ForeignChannel, match="process-specific channel of another"):
        await other.receive(first)
    with pytest.raises(ForeignChannel):
        await other.receive("hand.made!x")
    assert (await owner.receive(second))["type"] == "to.second"
    assert (await owner.receive(first))["type"] == "to.first"


async def test_channel_full_at_capacity(make_layer: LayerFactory, redis_topology: Topology) -> None:
    """A send to a channel holding `capacity` messages raises ChannelFull."""
    layer = make_layer(redis_topology, capacity=3)
    specific = await layer.new_channel()
    for channel in ("bounded", specific):
        for _ in range(3):
            await layer.send(channel, {"type": "fill"})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "overflow"})
        for _ in range(3):
            await layer.receive(channel)
        await layer.send(channel, {"type": "room.again"})
        assert (await layer.receive(channel))["type"] == "room.again"


async def test_channel_capacity_patterns(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """channel_capacity applies glob strings and compiled regexes before the default."""
    layer = make_layer(
        redis_topology,
        capacity=10,
        channel_capacity={"tiny-*": 1, re.compile(r"^two\."): 2},
    )
    await layer.send("tiny-a", {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send("tiny-a", {"type": "x"})
    for _ in range(2):
        await layer.send("two.b", {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send("two.b", {"type": "x"})
    for _ in range(5):
        await layer.send("default-c", {"type": "x"})


async def test_expired_messages_are_not_delivered(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A message older than `expiry` is dropped, and no longer counts toward capacity."""
    # expiry leaves "new" a second to be received: under a loaded suite a 0.2 s expiry let
    # it expire before its pop, and receive() then waited for the test's timeout.
    layer = make_layer(redis_topology, expiry=1, capacity=1)
    await layer.send("short-lived", {"type": "old"})
    await asyncio.sleep(1.1)  # the behaviour under test is the passage of time
    await layer.send("short-lived", {"type": "new"})
    assert (await asyncio.wait_for(layer.receive("short-lived"), 10))["type"] == "new"
    await assert_nothing_arrives(layer, "short-lived")


async def test_groups(layer: RedisChannelLayer) -> None:
    """group_send reaches every member once; a discarded channel gets nothing."""
    one, two, three = [await layer.new_channel() for _ in range(3)]
    for channel in (one, two, three, "group-normal"):
        await layer.group_add("room", channel)
    await layer.group_discard("room", three)
    await layer.group_send("room", {"type": "hello.room"})
    for channel in (one, two, "group-normal"):
        assert (await layer.receive(channel))["type"] == "hello.room"
    for channel in (one, two, three, "group-normal"):
        await assert_nothing_arrives(layer, channel)


async def test_group_send_follows_membership_changes(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Each group_send goes to the members of that moment, changes made by other processes
    included: the sender's remembered targets of a group never outlive its member list."""
    sender = make_layer(redis_topology)
    other = make_layer(redis_topology, prefix=sender.prefix)  # another process
    one, two = await sender.new_channel(), await other.new_channel()
    await sender.group_add("changing", one)
    await sender.group_send("changing", {"type": "first"})
    await other.group_add("changing", two)
    await sender.group_send("changing", {"type": "second"})
    await other.group_discard("changing", one)
    await sender.group_send("changing", {"type": "third"})
    got_one = [(await asyncio.wait_for(sender.receive(one), 5))["type"] for _ in range(2)]
    got_two = [(await asyncio.wait_for(other.receive(two), 5))["type"] for _ in range(2)]
    assert (got_one, got_two) == (["first", "second"], ["second", "third"])
    await assert_nothing_arrives(sender, one)
    await assert_nothing_arrives(other, two)


async def test_group_send_to_empty_group(layer: RedisChannelLayer) -> None:
    """group_send to a group nobody joined is not an error."""
    await layer.group_send("nobody-here", {"type": "void"})


async def test_group_expiry(make_layer: LayerFactory, redis_topology: Topology) -> None:
    """A membership older than group_expiry no longer receives group messages."""
    layer = make_layer(redis_topology, group_expiry=1)
    await layer.group_add("fleeting", "member-channel")
    await asyncio.sleep(1.1)  # the behaviour under test is the passage of time
    await layer.group_send("fleeting", {"type": "late"})
    await assert_nothing_arrives(layer, "member-channel")


async def test_one_copy_per_process_for_a_group(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A group_send to many channels of one process stores one message in its inbox."""
    sender = make_layer(redis_topology)
    receiver = make_layer(redis_topology, prefix=sender.prefix)
    channels = [await receiver.new_channel() for _ in range(50)]
    for channel in channels:
        await sender.group_add("crowd", channel)
    await sender.group_send("crowd", {"type": "fan.out"})
    inbox = KeyLayout(sender.prefix).inbox(channels[0].split("!")[0] + "!")
    assert master_client.llen(inbox) == 1
    for channel in channels:
        assert (await receiver.receive(channel))["type"] == "fan.out"


async def test_flush(layer: RedisChannelLayer) -> None:
    """flush() deletes queued messages and group memberships."""
    await layer.send("flushed", {"type": "gone"})
    await layer.group_add("flushed-group", "flushed-member")
    await layer.flush()
    await layer.group_send("flushed-group", {"type": "nobody"})
    await assert_nothing_arrives(layer, "flushed")
    await assert_nothing_arrives(layer, "flushed-member")


@pytest.mark.parametrize(
    "name", ["", "bad channel", "a" * 100, "semi;colon", "brace{", 42, None, ["unhashable"]]
)
async def test_invalid_channel_names_raise_type_error(
    layer: RedisChannelLayer, name: object
) -> None:
    """Invalid channel names are refused with TypeError, as every channel layer does."""
    rule = "Channel name must be a valid unicode string"
    with pytest.raises(TypeError, match=rule):
        await layer.send(name, {"type": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rule):
        await layer.receive(name)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rule):
        await layer.group_add("valid-group", name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "bad group", "b" * 100, "bang!", 7])
async def test_invalid_group_names_raise_type_error(layer: RedisChannelLayer, name: object) -> None:
    """Invalid group names are refused with TypeError."""
    with pytest.raises(TypeError):
        await layer.group_send(name, {"type": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("message", ["text", ["list"], None, 3])
async def test_non_dict_messages_raise_type_error(
    layer: RedisChannelLayer, message: object
) -> None:
    """Messages must be dicts."""
    with pytest.raises(TypeError):
        await layer.send("valid", message)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await layer.group_send("valid", message)  # type: ignore[arg-type]


@pytest.mark.redis_topologies("standalone")
async def test_the_key_channels_redis_reserves_is_refused_or_dropped(
    layer: RedisChannelLayer,
) -> None:
    """As in channels_redis, which routes by ``__asgi_channel__`` inside a message: send()
    refuses a message carrying it (there AssertionError; TypeError here, as for a non-dict),
    group_send() delivers the message without it. Seen: delivered as sent, both ways."""
    channel = await layer.new_channel()
    with pytest.raises(TypeError, match="__asgi_channel__"):
        await layer.send(channel, {"type": "x", "__asgi_channel__": "elsewhere"})
    await layer.group_add("reserved", channel)
    sent = {"type": "x", "__asgi_channel__": "elsewhere"}
    await layer.group_send("reserved", sent)
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "x"}
    assert sent == {"type": "x", "__asgi_channel__": "elsewhere"}  # the caller's, untouched


async def test_competing_receivers_each_message_once(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Several receivers (in two processes) on a normal channel share its messages exactly once."""
    first = make_layer(redis_topology)
    second = make_layer(redis_topology, prefix=first.prefix)
    received: list[int] = []
    count = 200

    async def drain(layer: RedisChannelLayer) -> None:
        while len(received) < count:
            message = await layer.receive("work-queue")
            received.append(message["n"])

    workers = [asyncio.create_task(drain(layer)) for layer in (first, first, second, second)]
    for number in range(count):
        await first.send("work-queue", {"type": "job", "n": number})
    done, pending = await asyncio.wait(workers, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert done
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert sorted(received) == list(range(count))


async def test_cancelled_receive_loses_nothing(layer: RedisChannelLayer) -> None:
    """Cancelling receive() loses no message, for its own channel or another one."""
    mine, other = await layer.new_channel(), await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(mine))
    await asyncio.sleep(0)  # let the receive start waiting
    await layer.send(other, {"type": "for.other"})
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await layer.send(mine, {"type": "for.mine"})
    assert (await layer.receive(other))["type"] == "for.other"
    assert (await layer.receive(mine))["type"] == "for.mine"


async def test_cancelled_receive_on_normal_channel_returns_message(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A normal-channel message popped for a receiver that was cancelled goes back to Redis."""
    first = make_layer(redis_topology)
    second = make_layer(redis_topology, prefix=first.prefix)
    for _ in range(20):
        waiting = asyncio.create_task(first.receive("handover"))
        await first.send("handover", {"type": "x"})
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        if not waiting.cancelled():
            continue  # delivered before the cancellation: nothing to hand over
        message = await asyncio.wait_for(second.receive("handover"), 5)
        assert message["type"] == "x"
        return
    pytest.fail("the cancellation never raced with a delivery in 20 attempts")


def test_async_to_sync_repeatedly(redis_topology: Topology) -> None:
    """Sync code can send and receive through async_to_sync, call after call."""
    layer = RedisChannelLayer(hosts=[redis_topology.url], prefix="syncuse")
    channel = async_to_sync(layer.new_channel)()
    for number in range(5):
        async_to_sync(layer.send)("sync-normal", {"type": "n", "n": number})
        async_to_sync(layer.send)(channel, {"type": "n", "n": number})
    for number in range(5):
        assert async_to_sync(layer.receive)("sync-normal")["n"] == number
        assert async_to_sync(layer.receive)(channel)["n"] == number
    async_to_sync(layer.flush)()


async def test_close_is_idempotent(layer: RedisChannelLayer) -> None:
    """close() may be called twice, close_pools() is its alias, and the layer works after."""
    await layer.send("reopen", {"type": "before"})
    await layer.close()
    await layer.close_pools()
    await layer.close()
    assert (await layer.receive("reopen"))["type"] == "before"


async def test_encryption(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """With symmetric_encryption_keys, Redis holds ciphertext; old keys still decrypt."""
    old = make_layer(redis_topology, symmetric_encryption_keys=["old-key"])
    await old.send("secret-channel", {"type": "secret", "text": "plaintext-marker"})
    stored = master_client.lrange(KeyLayout(old.prefix).channel("secret-channel"), 0, -1)
    assert stored
    assert b"plaintext-marker" not in stored[0]
    rotated = make_layer(
        redis_topology, prefix=old.prefix, symmetric_encryption_keys=["new-key", "old-key"]
    )
    assert (await rotated.receive("secret-channel"))["text"] == "plaintext-marker"


@pytest.mark.redis_topologies("standalone")
async def test_encryption_keys_from_any_iterable_and_bytearray(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """Keys as channels_redis takes them: any iterable, bytearray keys included. Seen: a
    generator was used up by the check of its keys, and the layer failed to build with
    cryptography's ValueError (a MultiFernet of no key); a bytearray key was refused."""
    sender = make_layer(
        redis_topology, symmetric_encryption_keys=(key for key in ["new-key", "old-key"])
    )
    receiver = make_layer(
        redis_topology,
        prefix=sender.prefix,
        symmetric_encryption_keys=map(bytearray, [b"other-key", b"new-key"]),
    )
    await sender.send("secret-channel", {"type": "secret"})
    assert (await receiver.receive("secret-channel"))["type"] == "secret"


def test_encryption_keys_that_yield_none_are_refused() -> None:
    """A generator of no key (built from an unset variable, say) is an error, as in
    channels_redis, not a layer that sends in plain text; an empty list means no encryption."""
    with pytest.raises(ConfigurationError, match="'symmetric_encryption_keys' yielded no key"):
        RedisChannelLayer(symmetric_encryption_keys=(key for key in [""] if key))
    RedisChannelLayer(symmetric_encryption_keys=[])  # builds: no encryption, as before


async def test_json_serializer(make_layer: LayerFactory, redis_topology: Topology) -> None:
    """serializer_format='json' round-trips JSON-compatible messages."""
    layer = make_layer(redis_topology, serializer_format="json")
    await layer.send("json-channel", {"type": "j", "nested": {"a": [1, "b"]}})
    assert await layer.receive("json-channel") == {"type": "j", "nested": {"a": [1, "b"]}}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"capacity": 0}, "'capacity' must be a positive integer"),
        ({"expiry": -1}, "'expiry' must be a positive number"),
        ({"serializer_format": "pickle"}, "'serializer_format' must be 'msgpack' or 'json'"),
        ({"symmetric_encryption_keys": "one-key"}, "must be a list of keys"),
        ({"prefix": "a{b}"}, "must not contain braces"),
        ({"failover_timeout": 0}, "'failover_timeout' must be a positive number"),
        ({"hosts": "redis://localhost"}, "must be a list of hosts"),
        ({"hosts": 5}, "'hosts' must be a list of hosts (Redis URLs, (host, port) pairs"),
        ({"hosts": {"address": "redis://localhost"}}, "got a single dict: wrap it in a list"),
        ({"failover_timeout": float("inf")}, "'failover_timeout' must be a positive number"),
        ({"failover_timeout": float("nan")}, "'failover_timeout' must be a positive number"),
        ({"replica_ack_timeout": -1}, "'replica_ack_timeout' must be a positive number"),
        ({"group_expiry": 10**30}, "'group_expiry' must be a positive number"),
        (
            {"expiry": 10**10},
            "'expiry' must be a positive number of seconds, finite and at most "
            "1,000,000,000 (about 31 years",
        ),
        ({"expiry": True}, "'expiry' must be a positive number"),
        ({"capacity": float("nan")}, "'capacity' must be a positive integer (got nan)"),
        ({"capacity": 2.5}, "'capacity' must be a positive integer"),
        ({"replica_acks": float("inf")}, "'replica_acks' must be an integer >= 0"),
        ({"replay_max_bytes": -1}, "'replay_max_bytes' must be an integer number of bytes >= 0"),
        ({"replay_max_bytes": True}, "'replay_max_bytes' must be an integer number of bytes"),
        ({"replay_max_bytes": 32e6}, "'replay_max_bytes' must be an integer number of bytes"),
        ({"replay_max_bytes": "32MiB"}, "or 0 to keep none (got '32MiB')"),
        ({"replay_max_bytes": None}, "such as 33554432 (32 MiB, the default)"),
        ({"channel_capacity": {"chat.*": "ten"}}, "\"channel_capacity['chat.*']\" must be a"),
        # Seen: these passed the build and failed at the first group_add (or the first send)
        # with a Lua or TypeError naming no option.
        ({"group_expiry": 3600.5}, "'group_expiry' must be a whole number of seconds"),
        ({"channel_capacity": {5: 3}}, "(a glob string or a compiled regex) to capacities"),
        ({"symmetric_encryption_keys": [123]}, "'symmetric_encryption_keys[0]' must be a string"),
    ],
)
def test_bad_options_are_clear_errors(options: dict[str, object], fragment: str) -> None:
    """Invalid options raise ConfigurationError naming the option and what was expected."""
    options.setdefault("hosts", ["redis://127.0.0.1:1"])
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        RedisChannelLayer(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "suggestion"),
    [("capcity", "capacity"), ("hots", "hosts"), ("failover_timout", "failover_timeout")],
)
def test_a_misspelt_option_is_named_with_a_suggestion(option: str, suggestion: str) -> None:
    """Seen: CONFIG {"capcity": 10} gave E002 with Python's bare "__init__() got an unexpected
    keyword argument". A ConfigurationError names the option, suggests the closest one and
    lists them all, channels_redis's included."""
    with pytest.raises(ConfigurationError) as caught:
        RedisChannelLayer(hosts=["redis://127.0.0.1:1"], **{option: 10})
    message = str(caught.value)
    assert message.startswith(
        f"Channel layer option '{option}' is unknown (did you mean '{suggestion}'?); "
        "expected one of hosts, prefix, expiry,"
    )
    for name in inspect.signature(channels_redis.core.RedisChannelLayer).parameters:
        assert name in message  # and accepted, as the next test shows for the odd ones
    with pytest.raises(ConfigurationError, match="'on_disconnect' is unknown; expected one of"):
        RedisChannelLayer(on_disconnect=None)


def test_channels_redis_option_forms_are_accepted() -> None:
    """A tuple of hosts and whole-number floats, as settings files sometimes carry them."""
    layer = RedisChannelLayer(
        hosts=(("127.0.0.1", 1), {"address": "redis://127.0.0.1:2"}),
        capacity=100.0,  # type: ignore[arg-type]
        channel_capacity={"chat.*": 10.0, re.compile(r"^x\."): 5},  # type: ignore[dict-item]
        expiry=0.5,
        group_expiry=10**10,  # "never"
        failover_timeout=1,
        replica_ack_timeout=0.1,
    )
    assert len(layer.configs) == 2
    assert layer.get_capacity("chat.a") == 10
    for empty in ("", [], None):  # not given: the environment's Redis, as channels_redis's default
        assert len(RedisChannelLayer(hosts=empty).configs) == 1  # type: ignore[arg-type]


LONGEST_WAIT_S = 10.0  # for a message that arrives, which takes milliseconds


@pytest.mark.redis_topologies("standalone")
async def test_every_expiry_accepted_delivers_messages(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """An expiry is either refused when the layer is built, or its messages arrive: up to
    10**12 s was accepted, and from about 8.2e9 s on every message's expiry time overflowed
    its 13 digits, so that each was dropped as malformed (8.5e9, 1e10, 1e12: none of 3 arrived).
    The longest group_expiry, 10**12 s, keeps its members too."""
    accepted, refusals = [], []
    for expiry in (60, MAX_EXPIRY_S, 8.5e9, 10**10, 10**12):
        try:
            layer = make_layer(redis_topology, expiry=expiry, group_expiry=int(MAX_OPTION_S))
        except ConfigurationError as err:
            refusals.append(str(err))
            continue
        accepted.append(expiry)
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        for to in (channel, "long-lived"):
            await layer.send(to, {"type": "direct", "expiry": expiry})
        await layer.group_send("room", {"type": "grouped", "expiry": expiry})
        received = [
            await asyncio.wait_for(layer.receive(on), LONGEST_WAIT_S)
            for on in (channel, "long-lived", channel)
        ]
        assert [m["type"] for m in received] == ["direct", "direct", "grouped"], expiry
        assert layer.statistics().malformed_dropped == 0, expiry
    assert accepted == [60, MAX_EXPIRY_S]
    for refusal in refusals:
        assert refusal.startswith("Channel layer option 'expiry' must be"), refusal
        assert "at most 1,000,000,000" in refusal, refusal


async def test_connections_stay_bounded_in_a_burst(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """10,000 concurrent sends, a group_send and receives use at most 3 connections to Redis."""
    layer = make_layer(redis_topology, capacity=20_000)
    channel = await layer.new_channel()
    await layer.group_add("burst-group", channel)
    await layer.send("warm-normal", {"type": "x"})
    await layer.receive("warm-normal")  # opens the normal-channel reader as well
    name = f"channels-ha:{os.getpid()}:{layer.client_prefix[:8]}"
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            clients = master_client.client_list()
            peak = max(peak, sum(1 for c in clients if c.get("name") == name))
            stop.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        sends = [layer.send(channel, {"type": "burst", "n": n}) for n in range(10_000)]
        await asyncio.gather(*sends, layer.group_send("burst-group", {"type": "g"}))
        for _ in range(10_001):
            await layer.receive(channel)
    finally:
        stop.set()
        await asyncio.to_thread(sampler.join)
    assert 1 <= peak <= 3


@pytest.mark.parametrize("redis_topology", ["sentinel"], indirect=True)
async def test_replica_acknowledgements(
    make_layer: LayerFactory, redis_topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    """With replica_acks, a send returns once replicas hold it; a shortfall is logged."""
    acked = make_layer(redis_topology, replica_acks=2)
    await acked.send("acked", {"type": "x"})
    await acked.group_add("acked-group", "acked")
    await acked.group_send("acked-group", {"type": "y"})
    assert acked.statistics().replica_ack_shortfalls == 0
    greedy = make_layer(redis_topology, replica_acks=3, replica_ack_timeout=0.05)
    await greedy.send("greedy", {"type": "z"})
    assert greedy.statistics().replica_ack_shortfalls == 1
    assert "Only 2 of 3 replicas acknowledged" in caplog.text
    assert [(await acked.receive("acked"))["type"] for _ in range(2)] == ["x", "y"]


@pytest.mark.serial  # times itself within a second or so
async def test_second_normal_channel_is_served_promptly(layer: RedisChannelLayer) -> None:
    """A receive on a second normal channel does not wait for the first one's blocking pop."""
    first = asyncio.create_task(layer.receive("worker-a"))
    await layer.send("worker-a", {"type": "a"})  # the reader now blocks on worker-a
    assert (await first)["type"] == "a"
    waiting_a = asyncio.create_task(layer.receive("worker-a"))
    await layer.send("worker-b", {"type": "b"})
    started = time.monotonic()
    assert (await asyncio.wait_for(layer.receive("worker-b"), 5))["type"] == "b"
    assert time.monotonic() - started < 0.5
    waiting_a.cancel()
    await asyncio.gather(waiting_a, return_exceptions=True)


async def test_flush_is_not_undone(layer: RedisChannelLayer) -> None:
    """After flush(), a live consumer's group membership stays gone (no re-assertion)."""
    channel = await layer.new_channel()
    receiving = asyncio.create_task(layer.receive(channel))
    await layer.group_add("flushed-room", channel)
    await layer.flush()
    await asyncio.sleep(1.5)  # longer than a re-assertion check: the behaviour is its absence
    await layer.group_send("flushed-room", {"type": "after.flush"})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(receiving), 0.1)
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)


async def test_inbox_holds_capacity_per_channel(
    make_layer: LayerFactory, redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A process with 300 consumers takes a burst of one message each at capacity 100."""
    sender = make_layer(redis_topology, capacity=100)
    receiver = make_layer(redis_topology, prefix=sender.prefix, capacity=100)
    channels = [await receiver.new_channel() for _ in range(300)]
    waiting = [asyncio.create_task(receiver.receive(channel)) for channel in channels]
    limit_key = KeyLayout(sender.prefix).inbox_limit(channels[0].split("!")[0] + "!")
    deadline = time.monotonic() + 5
    while master_client.get(limit_key) != b"30000":
        assert time.monotonic() < deadline, "the receiver never published its inbox limit"
        await asyncio.sleep(0.05)  # polling Redis, which has no event for this
    await asyncio.gather(*(sender.send(c, {"type": "one"}) for c in channels))
    assert {(await task)["type"] for task in waiting} == {"one"}


async def test_close_leaves_no_task_behind(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """close() leaves no task behind, even one started by a connection made while it drains."""
    layer = make_layer(redis_topology)
    before = asyncio.all_tasks()
    sending = asyncio.create_task(layer.send("close-race", {"type": "x"}))
    await asyncio.sleep(0)  # the send waits for the first connection, still being made
    await layer.close()
    await sending  # drained by close(): it went out before the link closed
    left = {task for task in asyncio.all_tasks() - before if not task.done()}
    assert not left, left
