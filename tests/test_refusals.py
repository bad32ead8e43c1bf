"""What Redis refuses is a clear error, and is not asked again in a tight loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import pytest

from channels_ha import (
    RedisChannelLayer,
    RedisCommandError,
    RedisUnavailable,
    parse_connection_config,
)
from channels_ha._buffers import now_ms
from channels_ha._codec import encode_element
from channels_ha._session import Session
from channels_ha.sandbox import StandaloneTopology, Topology, TopologyFactory

from .conftest import LayerFactory

pytestmark = pytest.mark.redis_topologies("standalone")

PASSWORD = "limited-secret"
REFUSED_FOR_S = 2.0


async def test_a_user_refused_a_command_on_connecting_is_told_which_without_a_storm(
    redis_topology: Topology,
) -> None:
    """A user whose ACL lacks ROLE (in @dangerous, which hardening recipes remove) learns
    that the command, not the password, is the problem; and each send that fails does not
    open a connection at once (seen: 727 connections in 3 s)."""
    assert isinstance(redis_topology, StandaloneTopology)
    node = redis_topology.node
    admin = node.async_client()
    await admin.execute_command(
        "ACL", "SETUSER", "limited", "on", f">{PASSWORD}", "~*", "&*", "+@all", "-role"
    )
    url = f"redis://limited:{PASSWORD}@{node.host}:{node.port}/0"
    layer = RedisChannelLayer(hosts=[url], prefix=f"refused{uuid.uuid4().hex[:8]}")
    try:
        before = (await admin.info("stats"))["total_connections_received"]
        errors: list[str] = []
        deadline = time.monotonic() + REFUSED_FOR_S
        while time.monotonic() < deadline and len(errors) < 1000:
            with pytest.raises(RedisCommandError) as caught:
                await layer.send("refused", {"type": "x"})
            errors.append(str(caught.value))
        opened = (await admin.info("stats"))["total_connections_received"] - before
    finally:
        await layer.close()
        await admin.execute_command("ACL", "DELUSER", "limited")
        await admin.aclose()
    assert "accepted the credentials but refused a command" in errors[0], errors[0]
    assert "'role'" in errors[0]
    assert all(PASSWORD not in error for error in errors)
    assert len(errors) >= 3
    assert opened <= 12, f"{opened} connections for {len(errors)} refused sends"


async def test_messages_a_full_memory_refused_to_take_back_are_given_back_later(
    redis_topology: Topology, make_layer: LayerFactory
) -> None:
    """Normal-channel messages popped for receivers that then left go back to Redis; when
    Redis refuses that (OOM, NOPERM) they stay with the process and go back once it
    accepts, instead of being lost (seen: one message in five gone)."""
    assert isinstance(redis_topology, StandaloneTopology)
    popper = make_layer(redis_topology)
    receiver = make_layer(redis_topology, prefix=popper.prefix)
    await popper.send("given-back", {"type": "warm-up"})  # its link connected
    assert (await receiver.receive("given-back"))["type"] == "warm-up"
    session, core = popper._session(), popper._core
    expires = now_ms() + 60_000
    popped = [
        encode_element(expires, "a-sender", n, "given-back", core.codec.dumps({"n": n}))
        for n in range(1, 5)
    ]
    async with out_of_memory(redis_topology):
        session.receiver.deliver(core.keys.channel("given-back"), popped)  # nobody waits here
        await asyncio.wait(set(session.give_back.tasks))  # the return, refused
    await swept(session)
    received = [(await asyncio.wait_for(receiver.receive("given-back"), 5))["n"] for _ in range(4)]
    assert received == [1, 2, 3, 4]


async def test_a_refused_give_back_does_not_hold_up_the_channel_here(
    redis_topology: Topology, make_layer: LayerFactory
) -> None:
    """A receive() here does not pop a channel while its messages go back to Redis (they
    would come after the next one); when Redis refuses the give-back (OOM), receiving goes
    on at once and the refused message comes once Redis takes it back, late but once."""
    assert isinstance(redis_topology, StandaloneTopology)
    layer = make_layer(redis_topology)
    session, core = layer._session(), layer._core
    for n in (1, 2):
        await layer.send("held-back", {"n": n})
    refused = encode_element(
        now_ms() + 60_000, "a-sender", 1, "held-back", core.codec.dumps({"n": 0})
    )
    async with out_of_memory(redis_topology):
        session.receiver.deliver(core.keys.channel("held-back"), [refused])  # nobody waits here
        await asyncio.wait(set(session.give_back.tasks))  # the return, refused
        assert (await asyncio.wait_for(layer.receive("held-back"), 5))["n"] == 1  # not held
    await swept(session)
    received = [(await asyncio.wait_for(layer.receive("held-back"), 5))["n"] for _ in range(2)]
    assert received == [0, 2]


@pytest.mark.parametrize(
    ("wrong", "named", "not_named"),
    [
        ("sentinel_password", "'sentinel_password'", "check 'username'/'password'"),
        ("password", "check 'username'/'password'", "sentinel_password"),
    ],
    ids=["sentinels", "data-nodes"],
)
async def test_wrong_credentials_name_the_hop_whose_settings_they_are(
    redis_sandbox_factory: TopologyFactory, wrong: str, named: str, not_named: str
) -> None:
    """A password the sentinels refuse points at the sentinels' settings, not at 'password'
    (the data nodes'), and the other way round; no password is shown."""
    secrets = {"password": "data-secret", "sentinel_password": "sentinel-secret"}
    topology = redis_sandbox_factory("sentinel", tls=False, **secrets)
    options = {**topology.connection_config, wrong: "wrong-secret", "failover_timeout": 1}
    layer = RedisChannelLayer(config=parse_connection_config(options))
    try:
        with pytest.raises((RedisUnavailable, RedisCommandError)) as raised:
            await layer.send("refused", {"type": "x"})
    finally:
        await layer.close()
    message = str(raised.value)
    assert "WRONGPASS" in message
    assert named in message
    assert not_named not in message
    assert not any(secret in message for secret in [*secrets.values(), "wrong-secret"])


async def test_a_password_for_a_server_without_one_is_accepted_as_redis_py_does(
    redis_standalone: Topology,
) -> None:
    """Seen: a channels_redis URL carrying a password for a server whose default user has
    none (a development Redis) worked with channels_redis (redis-py 8 authenticates as
    ``default``) and every operation of channels-ha was refused."""
    url = redis_standalone.url.replace("redis://", "redis://:not-needed@", 1)
    layer = RedisChannelLayer(hosts=[url], failover_timeout=2)
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "hello"}
    finally:
        await layer.close()


async def test_out_of_memory_refuses_what_adds_data_not_what_removes_it(
    redis_topology: Topology, make_layer: LayerFactory
) -> None:
    """Past maxmemory (noeviction), Redis refuses writes that may grow its memory. Leaving a
    group, flush() and a group_send to a group without members go on, as in channels_redis
    4.3 (they refused with OOM, so a consumer's disconnect raised); sending and joining
    fail with Redis's OOM error."""
    assert isinstance(redis_topology, StandaloneTopology)
    layer = make_layer(redis_topology)
    kicker = make_layer(redis_topology, prefix=layer.prefix)  # another process
    channel, other = await layer.new_channel(), await layer.new_channel()
    for group in ("room", "kicked-from", "flushed"):
        await layer.group_add(group, channel)
    await layer.group_add("room", other)
    for group in ("kicked-from", "room"):  # plans of their members, kept
        await layer.group_send(group, {"type": "planned"})
    for receiving in (channel, channel, other):
        assert (await asyncio.wait_for(layer.receive(receiving), 5))["type"] == "planned"
    outcomes: dict[str, str] = {}

    async def attempt(name: str, operation: Awaitable[None]) -> None:
        try:
            await operation
        except RedisCommandError as err:
            outcomes[name] = str(err).split(" ", 1)[0]
        else:
            outcomes[name] = "ok"

    async with out_of_memory(redis_topology):
        await attempt("group_discard", layer.group_discard("room", other))
        await attempt("discard by another", kicker.group_discard("kicked-from", channel))
        await attempt("group_send, emptied", layer.group_send("kicked-from", {"type": "x"}))
        await attempt("group_send, no group", layer.group_send("nobody", {"type": "x"}))
        await attempt("send", layer.send(channel, {"type": "x"}))
        await attempt("group_send", layer.group_send("room", {"type": "x"}))
        await attempt("group_add", layer.group_add("room", other))
        await attempt("flush", kicker.flush())
    assert outcomes == {
        "group_discard": "ok",
        "discard by another": "ok",
        "group_send, emptied": "ok",
        "group_send, no group": "ok",
        "send": "OOM",
        "group_send": "OOM",
        "group_add": "OOM",
        "flush": "ok",
    }
    await layer.group_send("flushed", {"type": "after.flush"})  # the flush emptied it
    await layer.send(channel, {"type": "after.oom"})
    assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "after.oom"


@asynccontextmanager
async def out_of_memory(topology: StandaloneTopology) -> AsyncIterator[None]:
    """Redis refuses every write that may grow its memory (OOM) meanwhile."""
    admin = topology.node.async_client()
    try:
        await admin.config_set("maxmemory", 1)
        yield
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.aclose()


async def swept(session: Session) -> None:
    """What the upkeep does every few seconds (gives back again what Redis refused)."""
    session.upkeep.sweep()
    if session.give_back.tasks:
        await asyncio.wait(set(session.give_back.tasks))
