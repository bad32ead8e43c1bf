"""Sentinels pointed at another master without a failover (``SENTINEL REMOVE`` and ``MONITOR``:
an operator moving Redis to new nodes): nothing is announced, and the old master keeps its
role, its server run and its replicas. A long-lived event loop (an ASGI worker) leaves it
within MASTER_RECHECK_INTERVAL_S (1 s here), and only when the sentinels consistently name
another master that answers as one; a failover with the check running every 0.25 s still
loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import pytest

from channels_ha import RedisChannelLayer, _recheck
from channels_ha._constants import SENTINEL_WATCH_DELAY_S
from channels_ha._keys import KeyLayout
from channels_ha._link import CommandLink
from channels_ha._shard import ShardConnections
from channels_ha.sandbox import RedisNode, SentinelTopology, TopologyFactory

from .conftest import LayerFactory, finish_traffic, start_traffic
from .test_failover import SENTINEL_FAULTS, replicas_caught_up
from .test_hints import received_until, repoint_sentinels, run_on, sync_calls

RECHECK_S = 1.0  # MASTER_RECHECK_INTERVAL_S in these tests
MOVE_MARGIN_S = 2.0  # the lookup, the ROLE check and reconnecting, on a busy machine
FIRST_CHECK_S = SENTINEL_WATCH_DELAY_S + RECHECK_S + MOVE_MARGIN_S  # from the first connection
RECEIVE_S = 10.0
POLL_S = 0.05  # the recheck has no hook to await: its effects are polled
PASSWORD = "data-secret"


def shard_of(layer: RedisChannelLayer) -> ShardConnections:
    return layer._session()._shards[0]


def port_of(shard: ShardConnections) -> int | None:
    server = shard.connected_to()
    return None if server is None else server.endpoint.port


def on_every_connection(shard: ShardConnections) -> set[int | None]:
    """The ports of the command link's and the readers' open connections."""
    link = shard.link
    assert isinstance(link, CommandLink)
    servers = [link.live_server]
    servers += [reader.live_server for reader in shard.readers()]
    return {None if server is None else server.endpoint.port for server in servers}


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == name]


async def logged(caplog: pytest.LogCaptureFixture, text: str, within_s: float) -> None:
    """Waits until a record saying ``text`` was logged."""
    deadline = time.monotonic() + within_s
    while not any(text in record.getMessage() for record in caplog.records):
        assert time.monotonic() < deadline, f"nothing logged {text!r} within {within_s} s"
        await asyncio.sleep(POLL_S)


async def moved_to(shard: ShardConnections, node: RedisNode, within_s: float) -> None:
    """Waits until the shard's open connections are on ``node``."""
    started = time.monotonic()
    while port_of(shard) != node.port:
        assert time.monotonic() - started < within_s, f"still on {port_of(shard)}"
        await asyncio.sleep(POLL_S)


async def sends_land_on(layer: RedisChannelLayer, node: RedisNode, within_s: float) -> int:
    """Sends numbers to "jobs", one every 0.1 s, until ``node`` holds that list; returns the
    last number sent."""
    key = KeyLayout(layer.prefix).channel("jobs")
    started = time.monotonic()
    for number in range(1, 1 + int(within_s / 0.1)):
        await layer.send("jobs", {"type": "n", "n": number})
        if await asyncio.to_thread(holds_key, node, key):
            print(f"{layer.prefix} wrote to {node.name} {time.monotonic() - started:.1f} s on")
            return number
        await asyncio.sleep(0.1)  # time itself is under test
    raise AssertionError(f"still not writing to {node.name} {time.monotonic() - started:.1f} s on")


def holds_key(node: RedisNode, key: str) -> bool:
    client = node.client()
    try:
        return bool(client.exists(key))
    finally:
        client.close()


async def detach(node: RedisNode, master: RedisNode, others: Iterable[RedisNode]) -> None:
    """Makes ``node`` a master of its own, holding what ``master`` had."""
    await replicas_caught_up(master, list(others))
    await asyncio.to_thread(run_on, [node], "REPLICAOF", "NO", "ONE")


async def receiving_on_own_channel(
    make_layer: LayerFactory, topology: SentinelTopology
) -> tuple[RedisChannelLayer, str, RedisNode, RedisNode, RedisNode]:
    """A long-lived layer that received on its own channel (its inbox reader connected),
    its channel, and the data nodes: the master it is on, then the two others."""
    layer = make_layer(topology)
    mine = await layer.new_channel()
    await layer.send(mine, {"type": "n", "n": 0})
    assert (await layer.receive(mine))["n"] == 0
    old = await topology.acurrent_master()
    new, other = [node for node in topology.data_nodes if node is not old]
    return layer, mine, old, new, other


async def test_a_long_lived_loop_leaves_a_master_the_sentinels_stopped_naming(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen: the long-lived layer's sends kept landing on the old master (30 s on), where
    no process connecting since reads. Now its command link and both readers move within
    the interval: its sends reach a receiver of another process, and a group_send there
    reaches a membership it added on the old master only (re-asserted on the new one)."""
    monkeypatch.setattr(_recheck, "MASTER_RECHECK_INTERVAL_S", RECHECK_S)
    topology = redis_sandbox_factory("sentinel", password=PASSWORD, sentinel_password="s-secret")
    assert isinstance(topology, SentinelTopology)
    layer = make_layer(topology)  # this event loop's, living on
    mine = await layer.new_channel()
    await layer.send(mine, {"type": "n", "n": 0})
    await layer.send("tasks", {"type": "n", "n": 0})
    assert (await layer.receive(mine))["n"] == (await layer.receive("tasks"))["n"] == 0
    old = await topology.acurrent_master()
    new, other = [node for node in topology.data_nodes if node is not old]
    assert on_every_connection(shard_of(layer)) == {old.port}
    # The check begins with the watch: a loop that lived a second (so never a sync call).
    await asyncio.wait_for(shard_of(layer).watch_subscribed(), SENTINEL_WATCH_DELAY_S + 5)
    await detach(new, old, [new, other])
    await layer.group_add("late", mine)  # on the old master only
    master_name = layer.configs[0].master_name  # type: ignore[attr-defined]
    await asyncio.to_thread(repoint_sentinels, topology, master_name, new)
    number = await sends_land_on(layer, new, RECHECK_S + MOVE_MARGIN_S)
    other_process = make_layer(topology, prefix=layer.prefix)
    assert (await received_until(other_process, "jobs", number, 50))[-1] == number
    await other_process.group_send("late", {"type": "n", "n": 1})
    assert (await asyncio.wait_for(layer.receive(mine), RECEIVE_S))["n"] == 1
    await other_process.send("tasks", {"type": "n", "n": 1})
    assert (await asyncio.wait_for(layer.receive("tasks"), RECEIVE_S))["n"] == 1
    assert on_every_connection(shard_of(layer)) == {new.port}
    moves = [getattr(record, "new_master", None) for record in events(caplog, "master_repointed")]
    assert moves == [f"{new.host}:{new.port}"]


async def test_a_loop_that_leaves_last_reasserts_what_it_added_meanwhile(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the sentinels disagree (an operator half-way), the long-lived loop stays; a
    sync call of the same process (an event loop of its own) goes where most of them point,
    and meets the new server run first. A membership the long-lived loop adds after that
    lands on the old master; once the sentinels agree, the loop moves and re-asserts it
    all the same. Seen (without that): the group_send never reached it."""
    monkeypatch.setattr(_recheck, "MASTER_RECHECK_INTERVAL_S", RECHECK_S)
    caplog.set_level(logging.DEBUG, logger="channels_ha.layer")
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    layer, mine, old, new, other = await receiving_on_own_channel(make_layer, topology)
    shard = shard_of(layer)
    await detach(new, old, [new, other])
    master_name = layer.configs[0].master_name  # type: ignore[attr-defined]
    first, second, third = topology.sentinels
    await asyncio.to_thread(repoint_sentinels, topology, master_name, new, [first, second])
    await asyncio.to_thread(repoint_sentinels, topology, master_name, old, [third])
    await sync_calls(layer.send, [1], "jobs")  # the process meets the new server run
    assert await asyncio.to_thread(holds_key, new, KeyLayout(layer.prefix).channel("jobs"))
    await layer.group_add("late", mine)  # this loop is still on the old master
    await logged(caplog, "the sentinels name different masters", FIRST_CHECK_S)
    assert port_of(shard) == old.port
    await asyncio.to_thread(repoint_sentinels, topology, master_name, new, [third])
    await moved_to(shard, new, RECHECK_S + MOVE_MARGIN_S)  # the inbox reader, at least
    other_process = make_layer(topology, prefix=layer.prefix)
    await other_process.group_send("late", {"type": "n", "n": 1})
    assert (await asyncio.wait_for(layer.receive(mine), RECEIVE_S))["n"] == 1


async def test_sentinels_naming_a_replica_move_nothing_until_it_is_a_master(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sentinels all naming a server that answers ROLE slave: the connections stay on the
    master they have; once it is promoted, they move."""
    monkeypatch.setattr(_recheck, "MASTER_RECHECK_INTERVAL_S", RECHECK_S)
    caplog.set_level(logging.DEBUG, logger="channels_ha.layer")
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    layer = make_layer(topology)
    await layer.send("tasks", {"type": "n", "n": 0})
    shard = shard_of(layer)
    old = await topology.acurrent_master()
    replica = next(node for node in topology.data_nodes if node is not old)
    master_name = layer.configs[0].master_name  # type: ignore[attr-defined]
    await asyncio.to_thread(repoint_sentinels, topology, master_name, replica)
    await logged(caplog, "is a slave, not the master", FIRST_CHECK_S)
    assert port_of(shard) == old.port
    assert not events(caplog, "master_repointed")
    await asyncio.to_thread(run_on, [replica], "REPLICAOF", "NO", "ONE")
    await sends_land_on(layer, replica, RECHECK_S + MOVE_MARGIN_S)


@pytest.mark.parametrize("fault_name", ["sentinel-failover", "sigstop", "kill"])
async def test_a_failover_with_the_check_running_often_loses_nothing(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault_name: str,
) -> None:
    """The check every 0.25 s, in each of three processes, through a failover: the
    sentinels disagree or flag the master meanwhile, so it moves nothing, and nothing is
    lost or received twice."""
    monkeypatch.setattr(_recheck, "MASTER_RECHECK_INTERVAL_S", 0.25)
    caplog.set_level(logging.DEBUG, logger="channels_ha.layer")
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    layers: list[RedisChannelLayer] = []

    def recorded(topology: SentinelTopology, **options: Any) -> RedisChannelLayer:
        layers.append(make_layer(topology, **options))
        return layers[-1]

    traffic, _ = await start_traffic(topology, recorded)
    for layer in layers:  # the check begins with the watch
        await asyncio.wait_for(shard_of(layer).watch_subscribed(), SENTINEL_WATCH_DELAY_S + 5)
    await SENTINEL_FAULTS[fault_name](topology)()
    await finish_traffic(traffic)
    assert not events(caplog, "master_repointed")
    declined = [r.getMessage() for r in caplog.records if "stay where they are" in r.getMessage()]
    print(f"{len(declined)} rounds declined, e.g. {sorted(set(declined))[:3]}")


async def test_a_reader_left_behind_moves_though_the_link_is_on_the_named_master(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process met the new master first (a sync call), then the long-lived loop's command
    link lost its connection and made another, to the master the sentinels name now: the
    same server run as far as the process knows, so nothing told the inbox reader, still on
    the old master. Seen: the check looked at the command link only, found it where the
    sentinels point, and left the reader there for good: a message to the loop's channel,
    written to the new master, was never received."""
    monkeypatch.setattr(_recheck, "MASTER_RECHECK_INTERVAL_S", 3600.0)  # rounds run here
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    layer, mine, old, new, other = await receiving_on_own_channel(make_layer, topology)
    shard = shard_of(layer)
    await asyncio.wait_for(shard.watch_subscribed(), SENTINEL_WATCH_DELAY_S + 5)
    await detach(new, old, [new, other])
    master_name = layer.configs[0].master_name  # type: ignore[attr-defined]
    await asyncio.to_thread(repoint_sentinels, topology, master_name, new)
    await sync_calls(layer.send, [1], "jobs")  # the process meets the new server run
    link = shard.link
    assert isinstance(link, CommandLink)
    assert link.server is not None
    await asyncio.to_thread(run_on, [old], "CLIENT", "KILL", "ID", str(link.server.client_id))
    await layer.send("jobs", {"type": "n", "n": 2})  # on a new connection
    assert on_every_connection(shard) == {new.port, old.port}  # the link, the reader
    recheck = shard._recheck
    assert recheck is not None
    for _ in range(3):
        await recheck.check()
    other_process = make_layer(topology, prefix=layer.prefix)
    await other_process.send(mine, {"type": "n", "n": 3})
    assert (await asyncio.wait_for(layer.receive(mine), RECEIVE_S))["n"] == 3
    assert on_every_connection(shard) == {new.port}


async def test_a_failing_check_is_reported_once_a_minute_not_every_round(
    redis_sentinel: SentinelTopology,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in the check is logged as the upkeep's steps are (docs/operations.md: at most
    once a minute per step, with a count), and the rounds go on. Seen: one ERROR with a
    traceback every round (10 in 10 rounds)."""
    rounds = 10
    calls = 0
    done = asyncio.Event()

    async def broken(self: _recheck.MasterRecheck) -> None:
        nonlocal calls
        calls += 1
        if calls >= rounds:
            done.set()
        raise RuntimeError("a bug in the check")

    monkeypatch.setattr(_recheck, "MASTER_RECHECK_INTERVAL_S", 0.01)
    monkeypatch.setattr(_recheck.MasterRecheck, "check", broken)
    layer = make_layer(redis_sentinel)
    await layer.send("tasks", {"type": "n"})  # the first connection starts the watch's delay
    await asyncio.wait_for(shard_of(layer).watch_subscribed(), SENTINEL_WATCH_DELAY_S + 5)
    await asyncio.wait_for(done.wait(), RECEIVE_S)
    failures = [
        r for r in events(caplog, "upkeep_failed") if getattr(r, "step", "") == "master recheck"
    ]
    assert len(failures) == 1, f"{len(failures)} ERROR lines in {calls} failing rounds"
    assert (await layer.receive("tasks"))["type"] == "n"
