"""After a master came back without its data, group_send must know of the grace period as
soon as anything read after the epoch check could let it go on."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis
from asgiref.sync import async_to_sync

from channels_ha import RedisChannelLayer
from channels_ha._buffers import now_ms
from channels_ha._constants import RESTART_GRACE_S
from channels_ha._recovery import check_epoch, recovered
from channels_ha._session import Session
from channels_ha.sandbox import StandaloneTopology, TopologyFactory

from .conftest import LayerFactory, read_every_epoch


async def test_grace_period_is_known_when_the_epoch_check_reads_as_done(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A request written just before the epoch check (as one held during the reconnect is)
    gets its reply in the same read as the check's GET. The task it wakes runs before the
    GET's callbacks; ``recovered`` must still wait for the comparison, or a group_send would
    read a member list that nobody re-asserted yet (a message lost to every member)."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology)
    await layer.group_add("room", "member")  # connected; this server's epoch is known
    session = layer._session()
    shard = session._shards[0]
    info = shard.link.server
    assert info is not None
    key = shard.epoch_key(session.core.keys, info)
    assert key is not None
    session.resync.epochs[(0, shard.node_of(info))] = (key, b"1")  # it knew another: data lost
    # The first write of a loop iteration goes out at once and the rest together: the PING
    # and the check's SET and GET share one write, so their replies share one read.
    opener = shard.link.submit("ECHO", "opener", key="room")
    before = shard.link.submit("PING", key="room")
    shard.add_epoch_check(check_epoch(session.core, shard, info, True, session.resync.epochs))
    assert await opener == b"opener"
    assert await before == b"PONG"
    await recovered(shard)
    assert shard.stats.recovering_until > 0, "recovered() returned before the comparison"
    assert time.time() >= shard.stats.recovering_until


async def _data_began_again(layer: RedisChannelLayer, began_s_ago: float) -> Session:
    """A layer whose master's epoch says its data began ``began_s_ago``, while the process
    knew another one: what a restart empty looks like to it."""
    await layer.group_add("room", "member")
    session = layer._session()
    shard = session._shards[0]
    info = shard.link.server
    assert info is not None
    key = shard.epoch_key(session.core.keys, info)
    assert key is not None
    session.resync.epochs[(0, shard.node_of(info))] = (key, b"1")
    await shard.link.submit("SET", key, now_ms() - int(began_s_ago * 1000), key=key)
    return session


@pytest.mark.parametrize(("began_s_ago", "waits"), [(5.0, True), (60.0, False)])
async def test_the_grace_period_counts_from_a_late_notice(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    began_s_ago: float,
    waits: bool,
) -> None:
    """A restart empty noticed seconds late gets a full grace period, one noticed late by an idle
    process none."""
    session = await _data_began_again(make_layer(redis_sandbox_factory("standalone")), began_s_ago)
    shard = session._shards[0]
    assert shard.link.server is not None
    noticed = time.time()
    check = check_epoch(session.core, shard, shard.link.server, True, session.resync.epochs)
    assert check is not None
    await check
    if waits:
        assert shard.stats.recovering_until >= noticed + RESTART_GRACE_S
    else:
        assert shard.stats.recovering_until < noticed


async def test_a_loss_noticed_by_the_epoch_watch_gets_the_grace_period(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A restart empty noticed first by the periodic epoch read makes group_send wait too."""
    layer = make_layer(redis_sandbox_factory("standalone"))
    session = await _data_began_again(layer, 1.0)
    shard = session._shards[0]
    noticed = time.time()
    assert await read_every_epoch(layer)
    assert shard.stats.recovering_until >= noticed + RESTART_GRACE_S


@pytest.mark.parametrize("command", ["FLUSHALL", "FLUSHDB"])
@pytest.mark.parametrize("sync", [False, True], ids=["event-loop", "async_to_sync"])
async def test_a_group_send_just_after_a_flush_by_hand_still_reaches_the_members(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory, command: str, sync: bool
) -> None:
    """FLUSHALL or FLUSHDB (a Django cache's clear() on a shared database) loses the data
    with no reconnect to notice it: a group_send right after must not find the group empty
    and send to nobody, also from sync code (an event loop per call, nothing remembered)."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    member = make_layer(topology)
    sender = make_layer(topology, prefix=member.prefix)

    async def group_send(message: dict[str, str]) -> None:
        if sync:
            await asyncio.to_thread(async_to_sync(sender.group_send), "room", message)
        else:
            await sender.group_send("room", message)

    channel = await member.new_channel()
    await member.group_add("room", channel)
    waiting = asyncio.create_task(member.receive(channel))  # a live member
    await group_send({"type": "before"})
    assert (await waiting)["type"] == "before"
    waiting = asyncio.create_task(member.receive(channel))
    admin = topology.node.async_client()
    try:
        await admin.execute_command(command)
    finally:
        await admin.aclose()
    await group_send({"type": "after"})
    assert (await asyncio.wait_for(waiting, 10))["type"] == "after"


@pytest.mark.serial  # times itself within a second or so
async def test_a_group_that_empties_the_ordinary_way_costs_no_wait(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """On a Redis whose data began seconds ago, a group whose last member left reads empty:
    that is no loss, and group_send must not wait out a grace period (a review found my first
    check taking any young epoch for one)."""
    topology = redis_sandbox_factory("standalone")  # its epoch is seconds old
    member = make_layer(topology)
    sender = make_layer(topology, prefix=member.prefix)
    channel = await member.new_channel()
    await member.group_add("room", channel)
    await sender.group_send("room", {"type": "while-a-member"})
    assert (await member.receive(channel))["type"] == "while-a-member"
    await member.group_discard("room", channel)
    started = time.monotonic()
    await sender.group_send("room", {"type": "to-nobody"})
    assert time.monotonic() - started < RESTART_GRACE_S / 2
    assert sender._session()._shards[0].stats.recovering_until == 0


async def test_a_background_request_cut_by_close_is_not_logged_as_a_failure(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The epoch check's SET NX and GET, unanswered when close() gives up on them (the
    server paused), are cut by the layer itself: not 'Background Redis operation failed'."""
    topology = redis_sandbox_factory("standalone")
    layer = make_layer(topology)
    await layer.group_add("room", "member")  # connected; this server's epoch is known
    session = layer._session()
    shard = session._shards[0]
    assert shard.link.server is not None
    admin = redis.Redis.from_url(topology.url)
    admin.client_pause(10_000, all=False)  # writes wait: the SET NX, and the GET behind it
    try:
        check = check_epoch(session.core, shard, shard.link.server, False, {})
        assert check is not None
        with caplog.at_level(logging.WARNING, "channels_ha"):
            await layer.close()  # waits CLOSE_RETURN_TIMEOUT_S for them, then cuts them
        assert check.done()
    finally:
        admin.client_unpause()
        admin.close()
    failed = [r for r in caplog.records if "Background Redis operation" in r.getMessage()]
    assert not failed, [r.getMessage() for r in failed]
