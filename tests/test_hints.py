"""What a process remembers of a deployment between event loops: sync calls (async_to_sync, a
session per call) skip what an earlier call learned, and a hint found wrong costs nothing
but the lookup it saved."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import trustme
from asgiref.sync import async_to_sync

from channels_ha import RedisChannelLayer, _hints, parse_url
from channels_ha._connection import in_sync_replicas
from channels_ha._constants import HINT_PATIENCE_S
from channels_ha._hints import hints_for
from channels_ha._keys import KeyLayout
from channels_ha._scripts import ALL as ALL_SCRIPTS
from channels_ha._server import ServerSettings
from channels_ha._slots import slot_of
from channels_ha.sandbox import (
    ClusterTopology,
    RedisNode,
    SentinelTopology,
    StandaloneTopology,
    TopologyFactory,
)

from .conftest import LayerFactory
from .test_failover import replicas_caught_up
from .test_fork import in_forked_child

SYNC_CALLS = 20
RECEIVE_TIMEOUT_S = 10.0


def calls_of(nodes: Iterable[RedisNode], command: str) -> int:
    """How often ``command`` (``INFO commandstats`` name: ``script|load``) ran on the nodes
    since their last ``CONFIG RESETSTAT``."""
    total = 0
    for node in nodes:
        client = node.client()
        try:
            total += int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))
        finally:
            client.close()
    return total


def run_on(nodes: Iterable[RedisNode], *command: str) -> None:
    for node in nodes:
        client = node.client()
        try:
            client.execute_command(*command)
        finally:
            client.close()


def reset_stats(nodes: Iterable[RedisNode]) -> None:
    run_on(nodes, "CONFIG", "RESETSTAT")


def connections_accepted(nodes: Iterable[RedisNode]) -> int:
    total = 0
    for node in nodes:
        client = node.client()
        try:
            total += int(client.info("stats")["total_connections_received"])
        finally:
            client.close()
    return total


async def sync_calls(call: Callable[..., Any], numbers: Iterable[int], *args: Any) -> None:
    """``call(*args, {"n": number})`` through async_to_sync, one after the other, each in an
    event loop of its own, from a thread without one (a WSGI view, a Celery task)."""

    def run() -> None:
        for number in numbers:
            async_to_sync(call)(*args, {"type": "n", "n": number})

    await asyncio.to_thread(run)


async def received(layer: RedisChannelLayer, channel: str, count: int) -> list[int]:
    return [
        (await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S))["n"]
        for _ in range(count)
    ]


async def test_sync_calls_load_the_scripts_once_per_server_run(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Seen: 8 SCRIPT LOADs per sync call (every connection loaded every script). Only the
    first connection to a server run loads them now; after SCRIPT FLUSH (NOSCRIPT) and on a
    new server run at the same address they are loaded again, once, and no call fails."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    layer = make_layer(topology)
    nodes = topology.nodes
    await sync_calls(layer.send, range(SYNC_CALLS), "jobs")
    assert await asyncio.to_thread(calls_of, nodes, "script|load") == len(ALL_SCRIPTS)
    await asyncio.to_thread(run_on, nodes, "SCRIPT", "FLUSH")
    await asyncio.to_thread(reset_stats, nodes)
    await sync_calls(layer.send, range(SYNC_CALLS, SYNC_CALLS + 3), "jobs")
    assert await asyncio.to_thread(calls_of, nodes, "script|load") == len(ALL_SCRIPTS)
    assert await received(layer, "jobs", SYNC_CALLS + 3) == list(range(SYNC_CALLS + 3))
    await layer.close()  # this event loop's reader must not reconnect during the restart
    await nodes[0].arestart_empty()  # a new server run at the same address
    await sync_calls(layer.send, range(100, 103), "jobs")
    assert await asyncio.to_thread(calls_of, nodes, "script|load") == len(ALL_SCRIPTS)
    # (What the first call after the restart wrote again of the earlier ones is dropped.)
    assert await received(layer, "jobs", 3) == [100, 101, 102]


async def test_sync_calls_under_sentinel_ask_the_sentinels_once(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Seen: every sync call asked the three sentinels where the master is (a connection
    each) before connecting to it. The process now tries the master they named last, and
    sync calls from several threads at once share that."""
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    sender = make_layer(topology, capacity=1000)  # the concurrent calls send 160 at once
    receiver = make_layer(topology, prefix=sender.prefix, capacity=1000)
    channel = await receiver.new_channel()
    await receiver.group_add("room", channel)
    before = await asyncio.to_thread(connections_accepted, topology.sentinels)
    await sync_calls(sender.group_send, range(SYNC_CALLS), "room")
    opened = await asyncio.to_thread(connections_accepted, topology.sentinels) - before
    # One lookup (a connection per sentinel), a second one if a connection was slow; the
    # counting itself opens one per sentinel.
    assert opened <= 3 * len(topology.sentinels), opened
    assert await received(receiver, channel, SYNC_CALLS) == list(range(SYNC_CALLS))
    threads = [
        sync_calls(sender.group_send, range(n, n + 100 * SYNC_CALLS, 100), "room")
        for n in range(100, 108)
    ]
    await asyncio.gather(*threads)
    got = await received(receiver, channel, 8 * SYNC_CALLS)
    assert sorted(got) == sorted(n + 100 * i for n in range(100, 108) for i in range(SYNC_CALLS))


async def test_sync_calls_on_cluster_read_the_slot_map_once(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Seen: every sync call read the slot map from each of the 6 nodes (CLUSTER SLOTS) and
    loaded the scripts on each master it used. A call now starts from the process's last map
    and loads nothing; after a master is killed, the stale map is corrected and the calls go
    on, nothing raised or lost."""
    cluster = redis_sandbox_factory("cluster")
    assert isinstance(cluster, ClusterTopology)
    sender = make_layer(cluster)
    receiver = make_layer(cluster, prefix=sender.prefix)
    channel = await receiver.new_channel()
    await receiver.group_add("room", channel)
    await sync_calls(sender.group_send, range(1), "room")  # the process has a map, scripts
    await asyncio.to_thread(reset_stats, cluster.nodes)
    await sync_calls(sender.group_send, range(1, SYNC_CALLS), "room")
    assert await asyncio.to_thread(calls_of, cluster.nodes, "cluster|slots") == 0
    assert await asyncio.to_thread(calls_of, cluster.nodes, "script|load") == 0
    assert await received(receiver, channel, SYNC_CALLS) == list(range(SYNC_CALLS))
    victim = await cluster.anode_for_slot(slot_of(KeyLayout(sender.prefix).group("room")))
    victim.kill()
    await cluster.await_new_master(victim)
    await sync_calls(sender.group_send, range(SYNC_CALLS, SYNC_CALLS + 5), "room")
    assert await received(receiver, channel, 5) == list(range(SYNC_CALLS, SYNC_CALLS + 5))


async def test_a_sync_call_after_a_handover_goes_to_the_new_master(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A master handed over (SENTINEL FAILOVER) still answers ROLE ``master`` for seconds
    after the sentinels named its replica (seen: 2.1 s in the sandbox, 8 s and more with
    Sentinel's default periods), and what it takes meanwhile is discarded when it is
    demoted. A sync call made then must not believe the process's memory of it: its
    replicas left it. The message reaches the new master; nothing raised, nothing lost."""
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    sender = make_layer(topology)  # sync calls only: no event loop hears announcements
    # A configuration of its own (another failover_timeout), so that its announcements do
    # not make the sender's process forget the old master: the hint itself is under test.
    receiver = make_layer(topology, prefix=sender.prefix, failover_timeout=29)
    channel = await receiver.new_channel()
    await receiver.group_add("room", channel)
    await sync_calls(sender.group_send, range(3), "room")
    assert await received(receiver, channel, 3) == [0, 1, 2]
    await receiver.close()  # no reader of its may pop from the old master meanwhile
    known = hints_for(sender.configs[0]).master.get()
    old = await topology.acurrent_master()
    assert known is not None
    assert known.port == old.port
    # The group must be on the replica promoted (seen: a replica of a fresh sandbox still
    # at offset 0 for a moment, though linked; promoted, it lost the group).
    await replicas_caught_up(old, [node for node in topology.data_nodes if node is not old])
    await topology.afailover()
    new = await topology.await_new_master(old)
    assert await asyncio.to_thread(role_of, old) == "master"  # not demoted yet
    await sync_calls(sender.group_send, [3], "room")
    await topology.await_healthy()  # the old master demoted: what it took is gone
    assert await received(receiver, channel, 1) == [3]
    known = hints_for(sender.configs[0]).master.get()
    assert known is None or known.port == new.port


def role_of(node: RedisNode) -> str:
    client = node.client()
    try:
        role: bytes | str = client.execute_command("ROLE")[0]
    finally:
        client.close()
    return role.decode() if isinstance(role, bytes) else role


def test_hints_are_shared_by_equal_configurations_only() -> None:
    """Keyed by the configuration's value: another layer on an equal configuration shares
    them; other credentials (or any other setting) share nothing; no repr shows them."""
    url = "redis://:secret-one@127.0.0.1:6390/0"
    assert hints_for(parse_url(url)) is hints_for(parse_url(url))
    assert hints_for(parse_url(url)) is not hints_for(parse_url(url.replace("one", "two")))
    assert hints_for(parse_url(url)) is not hints_for(parse_url(url.replace("/0", "/1")))
    settings = ServerSettings(hints=hints_for(parse_url(url)))
    assert "secret" not in repr(settings) + repr(hints_for(parse_url(url)))


def test_in_sync_replicas_are_those_online_and_acknowledging() -> None:
    """A replica still syncing, or silent for longer than REPLICA_LAG_MAX_S (a partition),
    does not count: the set is what tells a master handed over from one that was not."""
    info = (
        b"# Replication\r\nrole:master\r\nconnected_slaves:4\r\n"
        b"slave0:ip=10.0.0.2,port=6379,state=online,offset=10,lag=0\r\n"
        b"slave1:ip=10.0.0.3,port=6379,state=online,offset=10,lag=2\r\n"
        b"slave2:ip=10.0.0.4,port=6379,state=wait_bgsave,offset=0,lag=0\r\n"
        b"slave3:ip=10.0.0.5,port=6379,state=online,offset=2,lag=3\r\n"
        b"master_replid:abc\r\n"
    )
    assert in_sync_replicas(info) == {"10.0.0.2:6379", "10.0.0.3:6379"}
    assert in_sync_replicas(b"# Replication\r\nrole:master\r\nconnected_slaves:0\r\n") == set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_without_its_parents_hints(
    redis_standalone: StandaloneTopology,
) -> None:
    """A child forked after the parent's calls (gunicorn --preload, Celery prefork) starts
    with no hints: a thread of the parent may have held one of their locks at the fork. Its
    own calls work, and remember for it."""
    layer = RedisChannelLayer(hosts=[redis_standalone.url], prefix="forked-hints")
    asyncio.run(send_and_close(layer))
    parent_hints = hints_for(layer.configs[0])
    address = redis_standalone.nodes[0]
    where = f"tcp://{address.host}:{address.port}"
    assert parent_hints.scripts.run_at(where) is not None

    def child() -> dict[str, Any]:
        child_hints = hints_for(layer.configs[0])
        report: dict[str, Any] = {
            "fresh": child_hints is not parent_hints
            and child_hints.scripts.run_at(where) is None
            and layer._core.shards[0].settings.hints is child_hints,
        }
        asyncio.run(send_and_close(layer))
        report["remembers"] = child_hints.scripts.run_at(where) is not None
        return report

    said = in_forked_child(child)
    assert said == {"fresh": True, "remembers": True}
    assert hints_for(layer.configs[0]) is parent_hints  # the parent's are its own still


async def send_and_close(layer: RedisChannelLayer) -> None:
    await layer.send("hinted", {"type": "n"})
    await layer.close()


async def sync_call_times(
    call: Callable[..., Any], numbers: Iterable[int], *args: Any
) -> list[float]:
    """Like :func:`sync_calls`; how long each call took (seconds)."""

    def run() -> list[float]:
        times = []
        for number in numbers:
            started = time.monotonic()
            async_to_sync(call)(*args, {"type": "n", "n": number})
            times.append(round(time.monotonic() - started, 2))
        return times

    return await asyncio.to_thread(run)


async def received_until(layer: RedisChannelLayer, channel: str, last: int, most: int) -> list[int]:
    """The numbers received on ``channel`` up to ``last`` (at most ``most`` messages): a
    failover may have lost, or a new server run had written again, some before it."""
    got: list[int] = []
    for _ in range(most):
        got.append((await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT_S))["n"])
        if got[-1] == last:
            break
    return got


async def test_a_sync_call_after_a_frozen_cluster_master_was_replaced_is_not_held(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Seen: a sync call starting from the process's slot map went straight to the master it
    names, frozen (SIGSTOP: it accepts connections, answers nothing) and replaced meanwhile,
    and waited reply_timeout (5 s) for its handshake. A node named only by a remembered map
    gets HINT_PATIENCE_S; then the call reads the map, as it would have without one."""
    cluster = redis_sandbox_factory("cluster")
    assert isinstance(cluster, ClusterTopology)
    sender = make_layer(cluster)
    await sync_calls(sender.send, range(3), "jobs")  # the process has a map
    old = await cluster.anode_for_slot(slot_of(KeyLayout(sender.prefix).channel("jobs")))
    old.pause()
    try:
        await cluster.await_new_master(old)
        times = await sync_call_times(sender.send, range(3, 7), "jobs")
    finally:
        old.resume()
    # Patience, then a map read (which waits 0.25 s for the frozen node): about 0.5 s.
    assert max(times) < 4 * HINT_PATIENCE_S + 0.5, times
    receiver = make_layer(cluster, prefix=sender.prefix)
    got = await received_until(receiver, "jobs", 6, 7)
    assert [n for n in got if n >= 3] == [3, 4, 5, 6]


async def test_a_slow_cluster_node_named_by_the_remembered_map_still_gets_the_call(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """A node that answers later than HINT_PATIENCE_S but is still the master (paused for
    0.6 s, less than the cluster's node timeout) is not failed for it: the call reads the
    map, which names the node again, and waits for it as it always did."""
    cluster = redis_sandbox_factory("cluster")
    assert isinstance(cluster, ClusterTopology)
    sender = make_layer(cluster)
    await sync_calls(sender.send, range(1), "jobs")
    owner = await cluster.anode_for_slot(slot_of(KeyLayout(sender.prefix).channel("jobs")))
    owner.pause()
    asyncio.get_running_loop().call_later(0.6, owner.resume)  # the slowness under test
    times = await sync_call_times(sender.send, [1], "jobs")
    assert times[0] >= 0.5, times  # it did wait for the node
    receiver = make_layer(cluster, prefix=sender.prefix)
    assert await received(receiver, "jobs", 2) == [0, 1]


def repoint_sentinels(
    topology: SentinelTopology,
    master_name: str,
    node: RedisNode,
    sentinels: Iterable[RedisNode] | None = None,
) -> None:
    """Points the sentinels (all, or ``sentinels``) at another master with no failover
    (``SENTINEL REMOVE``, then ``MONITOR``, and the data nodes' password: an operator moving
    the deployment): nothing is announced."""
    for sentinel in topology.sentinels if sentinels is None else sentinels:
        client = sentinel.client()
        try:
            client.execute_command("SENTINEL", "REMOVE", master_name)
            client.execute_command("SENTINEL", "MONITOR", master_name, node.host, node.port, 2)
            if topology.password is not None:
                client.execute_command(
                    "SENTINEL", "SET", master_name, "auth-pass", topology.password
                )
        finally:
            client.close()


def holds_keys(node: RedisNode) -> bool:
    client = node.client()
    try:
        return int(client.dbsize()) > 0
    finally:
        client.close()


@pytest.mark.serial  # times itself within a second or so
async def test_a_master_the_sentinels_stopped_naming_is_left_once_the_hint_is_old(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sentinels pointed at another master without a failover, while the old one runs on
    with the same replicas: the process's memory of it passes every check (same server run,
    same replicas), and nothing is announced. Seen: sync calls stayed on the old master for
    good. A hint older than HINT_MAX_AGE_S (1 s here) is not used: the sentinels are asked."""
    monkeypatch.setattr(_hints, "HINT_MAX_AGE_S", 1.0)
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    elsewhere = redis_sandbox_factory("standalone")
    assert isinstance(elsewhere, StandaloneTopology)
    sender = make_layer(topology)
    await sync_calls(sender.send, range(3), "jobs")
    assert hints_for(sender.configs[0]).master.get() is not None
    master_name = sender.configs[0].master_name  # type: ignore[attr-defined]
    await asyncio.to_thread(repoint_sentinels, topology, master_name, elsewhere.node)
    repointed = time.monotonic()
    number = 3
    for number in range(3, 53):  # a call every 0.1 s, for 5 s at most
        await sync_calls(sender.send, [number], "jobs")
        if await asyncio.to_thread(holds_keys, elsewhere.node):
            break
        await asyncio.sleep(0.1)  # the hint ages: time itself is under test
    moved_after_s = time.monotonic() - repointed
    assert moved_after_s < 1.0 + 1.0, f"still on the old master {moved_after_s:.1f} s later"
    receiver = make_layer(elsewhere, prefix=sender.prefix)
    assert (await received_until(receiver, "jobs", number, 50))[-1] == number


async def test_sync_calls_on_cluster_read_the_slot_map_again_once_it_is_old(
    redis_sandbox_factory: TopologyFactory,
    make_layer: LayerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slot map a process remembers is used for HINT_MAX_AGE_S (1 s here) at most: what
    the nodes never redirect (a master added that the process's keys do not use) is learned
    by the next call after that."""
    monkeypatch.setattr(_hints, "HINT_MAX_AGE_S", 1.0)
    cluster = redis_sandbox_factory("cluster")
    assert isinstance(cluster, ClusterTopology)
    sender = make_layer(cluster)
    await sync_calls(sender.send, range(1), "jobs")
    await asyncio.to_thread(reset_stats, cluster.nodes)
    await sync_calls(sender.send, range(1, 3), "jobs")
    assert await asyncio.to_thread(calls_of, cluster.nodes, "cluster|slots") == 0
    await asyncio.sleep(1.0)  # the map ages: time itself is under test
    await sync_calls(sender.send, range(3, 4), "jobs")
    assert await asyncio.to_thread(calls_of, cluster.nodes, "cluster|slots") > 0


def rotate_server_certificate(topology: SentinelTopology, node: RedisNode) -> None:
    """A new CA, trusted from now on (appended to the clients' CA file), signs the node's
    new certificate: a context built before trusts only the old CA."""
    assert topology.tls is not None
    authority = trustme.CA(organization_name="rotated")
    authority.cert_pem.write_to_path(str(topology.tls.ca_cert), append=True)
    leaf = authority.issue_cert("127.0.0.1", "localhost")
    cert = topology.tls.server_cert.with_name("rotated.pem")
    key = topology.tls.server_key.with_name("rotated.key")
    for index, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert), append=index > 0)
    leaf.private_key_pem.write_to_path(str(key))
    run_on([node], "CONFIG", "SET", "tls-cert-file", str(cert), "tls-key-file", str(key))


async def test_a_remembered_master_is_reached_with_the_tls_settings_of_the_layer_using_it(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """Seen: the remembered master carried the SSL context of the layer that learned it; a
    layer built after a certificate rotation (same files, equal configuration) tried it with
    the old context, failed, and asked the sentinels. It now uses its own."""
    topology = redis_sandbox_factory("sentinel", tls=True)
    assert isinstance(topology, SentinelTopology)
    before = make_layer(topology)
    await sync_calls(before.send, range(1), "jobs")
    assert hints_for(before.configs[0]).master.get() is not None
    master = await topology.acurrent_master()
    await asyncio.to_thread(rotate_server_certificate, topology, master)
    after = make_layer(topology, prefix=before.prefix)
    assert hints_for(after.configs[0]) is hints_for(before.configs[0])
    counted = await asyncio.to_thread(connections_accepted, topology.sentinels)
    await sync_calls(after.send, range(1, 2), "jobs")
    opened = await asyncio.to_thread(connections_accepted, topology.sentinels) - counted
    assert opened == len(topology.sentinels), opened  # the count's own connections only
    assert await received(after, "jobs", 2) == [0, 1]
