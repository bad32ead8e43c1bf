"""Redis Cluster: the layer through master failures, freezes, slot moves and empty restarts.

Each test starts a fresh 3-master, 3-replica cluster, runs numbered traffic from one layer to
channels of two others (stand-ins for other processes), injects the fault on the master that
holds the receivers' inbox or the group, and checks that every message whose send returned
arrived exactly once, with no exception raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from channels_ha import RedisChannelLayer, RedisUnavailable
from channels_ha._cluster import ClusterRouter
from channels_ha._keys import KeyLayout
from channels_ha._resp import Endpoint
from channels_ha._server import ServerSettings
from channels_ha._slots import ask_slots, parse_slots, slot_of, tag_for_slot
from channels_ha._stats import ShardStats
from channels_ha.sandbox import ClusterTopology, RedisNode, TopologyFactory

from .conftest import (
    LayerFactory,
    finish_traffic,
    marker_is_next,
    read_every_epoch,
    start_traffic,
)

CLUSTER_DOWN_S = 2.0
RETIRE_WAIT_S = 10.0  # how long a demoted master may keep the layer's link
SYNC_POLLS = 200  # a replica's link to its master is up within 10 s


async def inbox_owner(cluster: ClusterTopology, layer: RedisChannelLayer) -> RedisNode:
    """The master holding ``layer``'s process inbox."""
    return await cluster.anode_for_slot(slot_of(inbox_key(layer)))


def inbox_key(layer: RedisChannelLayer) -> str:
    return KeyLayout(layer.prefix).inbox(f"specific.{layer.client_prefix}!")


async def group_owner(cluster: ClusterTopology, layer: RedisChannelLayer) -> RedisNode:
    return await cluster.anode_for_slot(slot_of(KeyLayout(layer.prefix).group("traffic")))


async def keys_left_but_kept(cluster: ClusterTopology, prefix: str) -> list[bytes]:
    """The layer's keys on every master, but for the epoch marks and the groups' discard
    records that flush() keeps."""
    left: list[bytes] = []
    for node in await cluster.amasters():
        client = node.client()
        try:
            left += client.scan_iter(match=f"{prefix}:*", count=100)
        finally:
            client.close()
    kept = (f"{prefix}:epoch".encode(), f"{prefix}:x:{{".encode())
    return [key for key in left if not key.startswith(kept)]


Target = Callable[[ClusterTopology, RedisChannelLayer], Awaitable[RedisNode]]
TARGETS: dict[str, Target] = {"inbox-master": inbox_owner, "group-master": group_owner}


@pytest.fixture
def cluster(redis_sandbox_factory: TopologyFactory) -> ClusterTopology:
    topology = redis_sandbox_factory("cluster")
    assert isinstance(topology, ClusterTopology)
    return topology


@pytest.mark.parametrize("target", list(TARGETS))
async def test_master_killed(
    cluster: ClusterTopology, make_layer: LayerFactory, target: str
) -> None:
    """kill -9 of a master: its replica takes over; nothing raised, lost or doubled."""
    traffic, receiver = await start_traffic(cluster, make_layer)
    victim = await TARGETS[target](cluster, receiver)
    victim.kill()
    await cluster.await_new_master(victim)
    await finish_traffic(traffic)


async def test_master_frozen(cluster: ClusterTopology, make_layer: LayerFactory) -> None:
    """A master frozen (SIGSTOP) past cluster-node-timeout is replaced; traffic goes on."""
    traffic, receiver = await start_traffic(cluster, make_layer)
    victim = await inbox_owner(cluster, receiver)
    victim.pause()
    try:
        await cluster.await_new_master(victim)
    finally:
        victim.resume()
    await finish_traffic(traffic)


@pytest.mark.parametrize("mode", ["send", "group"])
@pytest.mark.parametrize("finish_later", [False, True], ids=["moved", "ask-then-moved"])
async def test_slot_migrated_during_traffic(
    cluster: ClusterTopology, make_layer: LayerFactory, finish_later: bool, mode: str
) -> None:
    """Moving the inbox's slot to another master (MOVED, and ASK mid-way) loses nothing.

    While the slot is mid-migration, a script whose keys are split between the two masters
    gets TRYAGAIN and waits: the messages are delayed, not lost.
    """
    traffic, receiver = await start_traffic(cluster, make_layer, mode=mode)
    slot = slot_of(inbox_key(receiver))
    source = await cluster.anode_for_slot(slot)
    target = next(node for node in await cluster.amasters() if node is not source)
    await cluster.amigrate_slot(slot, target, finish=not finish_later)
    if finish_later:
        await asyncio.sleep(0.5)  # the slot stays mid-migration a while, as in a reshard
        await cluster.afinish_slot_migration(slot, target)
    assert (await cluster.anode_for_slot(slot)) is target
    await finish_traffic(traffic)


async def test_master_restarted_empty(
    cluster: ClusterTopology, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A master restarted without data gets its group memberships back; traffic goes on.
    The warning says group_send waits *at least* the grace period: the node answers
    CLUSTERDOWN first (seen: 4.3 s in all, where it said 2.0 s)."""
    traffic, receiver = await start_traffic(cluster, make_layer)
    victim = await group_owner(cluster, receiver)
    with caplog.at_level(logging.WARNING, logger="channels_ha.layer"):
        await victim.arestart_empty()
        await cluster.await_healthy()
        await finish_traffic(traffic)
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "data_lost"]
    assert said, "the loss of the master's data was not logged"
    assert all("group_send waits at least" in message for message in said), said


async def test_flush_scans_every_master(cluster: ClusterTopology, make_layer: LayerFactory) -> None:
    """flush() removes keys on every master (SCAN per node, never KEYS); the epochs and the
    discard records stay."""
    layer = make_layer(cluster)
    for number in range(30):
        await layer.group_add(f"group-{number}", f"member-{number}")
    await layer.flush()
    assert await keys_left_but_kept(cluster, layer.prefix) == []
    await layer.group_send("group-1", {"type": "nobody"})
    await marker_is_next(layer, layer, "member-1")


async def test_tls_cluster(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """On a TLS-only cluster (rediss+cluster://) traffic survives a master killed."""
    cluster = redis_sandbox_factory("cluster", tls=True)
    assert isinstance(cluster, ClusterTopology)
    assert cluster.url.startswith("rediss+cluster://")
    traffic, receiver = await start_traffic(cluster, make_layer)
    victim = await inbox_owner(cluster, receiver)
    victim.kill()
    await cluster.await_new_master(victim)
    await finish_traffic(traffic)


async def test_unreachable_cluster_gives_up_and_stops() -> None:
    """With no node reachable, a send fails after failover_timeout and nothing keeps spinning."""
    layer = RedisChannelLayer(hosts=["redis+cluster://127.0.0.1:1"], failover_timeout=1)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="failover_timeout"):
        await layer.send("nowhere", {"type": "x"})
    assert time.monotonic() - started < 5
    router = layer._session()._shards[0].router
    assert router is not None
    deadline = time.monotonic() + 5
    while router._dispatching is not None:
        assert time.monotonic() < deadline, "the router kept trying after giving up"
        await asyncio.sleep(0.05)  # polling private state: no event tells it stopped
    await layer.close()


async def test_close_drains_a_request_whose_link_is_connecting(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """close() lets a request for a master not connected yet go out, and leaves no task."""
    layer = make_layer(cluster)
    await layer.group_add("warm", "member")  # the slot map is known; one link is connected
    router = layer._session()._shards[0].router
    assert router is not None
    keys = KeyLayout(layer.prefix)
    warm_owner = router.owner_endpoint(slot_of(keys.group("warm")))
    names = (f"group-{n}" for n in range(1_000))
    other = next(n for n in names if router.owner_endpoint(slot_of(keys.group(n))) != warm_owner)
    before = asyncio.all_tasks()
    adding = asyncio.create_task(layer.group_add(other, "member"))
    await asyncio.sleep(0)  # routed to the other master's link, which starts connecting
    await layer.close()
    await adding  # drained, not failed
    left = {task for task in asyncio.all_tasks() - before if not task.done()}
    assert not left, left


async def test_a_frozen_node_leaves_no_unread_error_behind(
    cluster: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading the slot map while a node is frozen leaves no question to that node running,
    and so no 'exception was never retrieved' once it would have timed out."""
    reply_timeout_s = 0.3
    startup = [Endpoint(node.host, node.port) for node in cluster.nodes]
    router = ClusterRouter(
        startup,
        ServerSettings(reply_timeout_s=reply_timeout_s),
        ShardStats(),
        lambda _: None,
        lambda: None,
    )
    key = "{frozen}key"
    await router.submit("SET", key, "1", key=key)
    frozen = cluster.nodes[1]
    before = asyncio.all_tasks()
    frozen.pause()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            try:
                await router.locate(slot_of(key))  # what a reader reconnecting does
            finally:
                await router.close(1.0)
            left = {task for task in asyncio.all_tasks() - before if not task.done()}
            if left:  # let them time out (asyncio.wait reads no exception) ...
                await asyncio.wait(left, timeout=5 * reply_timeout_s)
            left_names = sorted(map(repr, left))
            del left  # ... and be collected: an unread exception is reported then
            gc.collect()
            await asyncio.sleep(0)
    finally:
        frozen.resume()
    assert not [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not left_names


async def test_a_slot_keeps_its_order_when_its_owner_changes_under_a_queued_request(
    cluster: ClusterTopology,
) -> None:
    """A request still queued for a slot's old master is stored before a newer one."""
    startup = [Endpoint(node.host, node.port) for node in cluster.nodes]
    settings = ServerSettings(reply_timeout_s=2.0)
    router = ClusterRouter(startup, settings, ShardStats(), lambda _: None, lambda: None)
    key = "{ordered}list"
    await router.submit("RPUSH", key, "warm", key=key)
    victim = await cluster.anode_for_slot(slot_of(key))
    old_link = router.link_at(Endpoint(victim.host, victim.port))
    victim.pause()
    try:
        new_master = await cluster.await_new_master(victim)
        # The state a busy router reaches (seen in a helper's runs): the old master's link
        # reconnecting, with a request of the slot queued, when the slot map moves the slot.
        old_link.drop_connection("the master stopped answering")
        for _ in range(100):  # the transport reports the loss on a later loop turn
            if old_link._protocol is None:
                break
            await asyncio.sleep(0)
        first = router.submit("RPUSH", key, "first", key=key)  # the map still names the old
        assert old_link._waiting.queue, "not queued on the old master's link"
        # A map read that got its answer (a full refresh would also wait for the frozen node).
        owners = await ask_slots(Endpoint(new_master.host, new_master.port), router._settings)
        answered = parse_slots(Endpoint(new_master.host, new_master.port), owners)
        router._apply_map(answered, quorum_s=0.0)
        second = router.submit("RPUSH", key, "second", key=key)
        await asyncio.gather(first, second)
    finally:
        victim.resume()
        await router.close(1.0)
    client = new_master.client()
    try:
        assert client.lrange(key, 0, -1) == [b"warm", b"first", b"second"]
    finally:
        client.close()


async def test_a_reader_refused_with_clusterdown_backs_off(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """A Cluster that lost a slot's owner still takes connections, and answers CLUSTERDOWN to
    every blocking pop: the reader must pause longer each time, not reconnect at once (seen:
    ~110 new connections per second and node, each with a slot-map read of every node)."""
    layer = make_layer(cluster)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "warm-up"})
    assert (await layer.receive(channel))["type"] == "warm-up"
    owner = await inbox_owner(cluster, layer)
    spare = (slot_of(inbox_key(layer)) + 8192) % 16384  # another slot, of another master
    spare_owner = await cluster.anode_for_slot(spare)
    receiving = asyncio.create_task(layer.receive(channel))
    clients = [node.async_client() for node in cluster.nodes]
    owner_client, spare_client = owner.async_client(), spare_owner.async_client()
    try:
        for client in clients:  # an unserved slot: "CLUSTERDOWN The cluster is down"
            await client.execute_command("CLUSTER", "DELSLOTS", spare)
        before = (await owner_client.info("stats"))["total_connections_received"]
        await asyncio.sleep(CLUSTER_DOWN_S)  # the span over which connections are counted
        opened = (await owner_client.info("stats"))["total_connections_received"] - before
        await spare_client.execute_command("CLUSTER", "ADDSLOTS", spare)
    finally:
        for client in [*clients, owner_client, spare_client]:
            await client.aclose()
    assert opened <= 50, f"{opened} connections to the inbox's master in {CLUSTER_DOWN_S} s"
    await layer.send(channel, {"type": "after"})
    assert (await asyncio.wait_for(receiving, 20))["type"] == "after"


async def test_a_reshard_is_not_taken_for_a_failover(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """Slots migrated between masters lose nothing (MIGRATE moves each key whole): no write
    again, no re-assertion, no wait in group_send. Seen: a master's first slot, where its
    epoch key lives, moved away and read as that master losing its data; 62 replays of the
    last 2 s of writes in one reshard."""
    layer = make_layer(cluster)
    await layer.group_add("resharded", "member")
    await layer.send("member", {"type": "before"})
    session = layer._session()
    shard = session._shards[0]
    router = shard.router
    assert router is not None
    await read_every_epoch(layer)  # every master's epoch seen
    source = (await cluster.amasters())[0]
    first = router.first_slot_at(f"{source.host}:{source.port}")
    assert first is not None
    target = next(node for node in await cluster.amasters() if node is not source)
    changes = shard.stats.server_changes
    channel_slot = slot_of(KeyLayout(layer.prefix).channel("member"))
    channel_owner = await cluster.anode_for_slot(channel_slot)
    elsewhere = next(node for node in await cluster.amasters() if node is not channel_owner)
    await cluster.amigrate_slot(channel_slot, elsewhere)
    await layer.send("member", {"type": "moved"})  # MOVED to a master the router knows
    assert shard.stats.server_changes == changes
    await cluster.amigrate_slot(first, target)
    await router._refresh_map()
    assert not await read_every_epoch(layer)
    assert shard.stats.server_changes == changes
    assert shard.stats.recovering_until < time.time()
    assert [(await layer.receive("member"))["type"] for _ in range(2)] == ["before", "moved"]


async def test_giving_up_on_a_down_cluster_says_how_long_and_why(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """Seen: 'waited 0.0 s ... last error: slot map unknown' after 30 s of CLUSTERDOWN."""
    layer = make_layer(cluster, failover_timeout=2)
    await layer.send("down", {"type": "warm-up"})  # the slot map read, the link open
    spare = (slot_of(KeyLayout(layer.prefix).channel("down")) + 8192) % 16384
    spare_owner = await cluster.anode_for_slot(spare)
    clients = [node.async_client() for node in cluster.nodes]
    spare_client = spare_owner.async_client()
    try:
        for client in clients:  # an unserved slot: "CLUSTERDOWN The cluster is down"
            await client.execute_command("CLUSTER", "DELSLOTS", spare)
        with pytest.raises(RedisUnavailable) as caught:
            await layer.send("down", {"type": "refused"})
        await spare_client.execute_command("CLUSTER", "ADDSLOTS", spare)
    finally:
        for client in [*clients, spare_client]:
            await client.aclose()
    message = str(caught.value)
    waited = float(message.split("waited ")[1].split(" s", maxsplit=1)[0])
    assert waited >= 1.9, message
    assert "CLUSTERDOWN" in message, message


async def test_giving_up_on_a_frozen_master_names_the_cluster_and_the_cause(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """Seen, past failover_timeout while a master was frozen: "... on single node
    tcp://...; last error: no connection attempt yet", from the link to its replacement,
    which the requests reached already overdue."""
    layer = make_layer(cluster, failover_timeout=1)
    await layer.send("frozen", {"type": "warm-up"})
    owner = await cluster.anode_for_slot(slot_of(KeyLayout(layer.prefix).channel("frozen")))
    owner.pause()
    try:
        with pytest.raises(RedisUnavailable) as caught:
            await layer.send("frozen", {"type": "refused"})
    finally:
        owner.resume()
    message = str(caught.value)
    assert "failover_timeout" in message, message
    assert "cluster" in message, message
    assert "single node" not in message, message
    assert "no connection attempt yet" not in message, message


@pytest.mark.serial  # times itself within a second or so
async def test_a_frozen_node_does_not_hold_up_the_slot_map(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """A stopped process still accepts connections: each slot-map read waited socket_timeout
    for its answer (seen: 8.2 s instead of 2.4 s to ride out a master's kill, because an
    unrelated replica was frozen). Once a map arrived, the read waits only briefly more."""
    layer = make_layer(cluster)
    await layer.send("mapped", {"type": "warm-up"})
    router = layer._session()._shards[0].router
    assert router is not None
    masters = await cluster.amasters()
    replica = next(node for node in cluster.nodes if node not in masters)
    replica.pause()
    try:
        started = time.monotonic()
        await router._refresh_map()
        took = time.monotonic() - started
    finally:
        replica.resume()
    assert took < 1.5, f"the slot-map read took {took:.1f} s"
    assert (await layer.receive("mapped"))["type"] == "warm-up"


async def layer_connections(node: RedisNode, layer: RedisChannelLayer) -> int:
    """How many connections ``layer`` (this process, by client name) holds to ``node``."""
    name = layer._session()._shards[0].spec.settings.client_name
    client = node.async_client()
    try:
        return sum(entry["name"] == name for entry in await client.client_list())
    finally:
        await client.aclose()


async def manual_failover(cluster: ClusterTopology, master: RedisNode, *options: str) -> RedisNode:
    """``CLUSTER FAILOVER`` on ``master``'s replica: both stay up, roles swapped."""
    slot = ClusterTopology._first_slot_of(master, await cluster.aslot_map())
    replica = await replica_in_sync(cluster, master)
    client = replica.async_client()
    try:
        await client.execute_command("CLUSTER", "FAILOVER", *options)
    finally:
        await client.aclose()
    for _ in range(SYNC_POLLS):
        if await cluster.anode_for_slot(slot) is replica:
            break
        await asyncio.sleep(0.05)  # polling: the promotion announces nothing
    await cluster.await_healthy()
    assert await cluster.anode_for_slot(slot) is replica, "the failover did not happen"
    return replica


async def replica_in_sync(cluster: ClusterTopology, master: RedisNode) -> RedisNode:
    """``master``'s replica, once its link is up (a replica just demoted still syncs, and a
    failover it asked for would time out)."""
    for node in cluster.nodes:
        client = node.async_client()
        try:
            for _ in range(SYNC_POLLS):
                replication = await client.info("replication")
                if replication["role"] != "slave" or replication["master_port"] != master.port:
                    break
                if replication["master_link_status"] == "up":
                    return node
                await asyncio.sleep(0.05)  # polling: the sync announces nothing
        finally:
            await client.aclose()
    raise AssertionError(f"{master.name} has no replica in sync")


async def test_a_demoted_master_keeps_no_link(
    cluster: ClusterTopology, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A master demoted to replica loses the layer's link once its requests are settled
    (seen: links kept for the process's life, one to every node after a few failovers); a
    request for it after it is promoted again opens a new link."""
    layer = make_layer(cluster)
    inbox_master = await inbox_owner(cluster, layer)
    victim = next(node for node in await cluster.amasters() if node is not inbox_master)
    group = tag_for_slot(ClusterTopology._first_slot_of(victim, await cluster.aslot_map()))
    await layer.group_add(group, "member")  # through the link to the victim
    assert await layer_connections(victim, layer) == 1
    with caplog.at_level(logging.INFO, logger="channels_ha.cluster"):
        await manual_failover(cluster, victim)
        await layer.group_add(group, "second")  # MOVED: the map is read again
        deadline = time.monotonic() + RETIRE_WAIT_S
        for _ in range(int(RETIRE_WAIT_S / 0.05)):
            if not await layer_connections(victim, layer) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # polling the server: no event tells the link closed
    assert await layer_connections(victim, layer) == 0, "the demoted master kept the link"
    retired = [r for r in caplog.records if getattr(r, "event", None) == "link_retired"]
    assert [getattr(r, "node", None) for r in retired] == [f"{victim.host}:{victim.port}"]
    # TAKEOVER: the masters just voted for this shard, and do not vote again that soon.
    await manual_failover(cluster, await cluster.anode_for_slot(slot_of(group)), "TAKEOVER")
    await layer.group_add(group, "third")  # MOVED to the retired node: a new link
    assert await layer_connections(victim, layer) == 1


async def test_a_flush_rides_through_a_master_failover(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """flush() SCANs each master; seen: a master killed (or failed over, which closes the
    link flush held) made it raise on an open layer. It now scans the replica that takes
    over instead, within failover_timeout."""
    layer = make_layer(cluster)
    for number in range(60):
        await layer.group_add(f"group-{number}", f"member-{number}")
    victim = next(iter(await cluster.amasters()))
    victim.kill()
    await layer.flush()  # the map still names the victim: its SCAN fails, then its replica's
    await cluster.await_healthy()
    assert await keys_left_but_kept(cluster, layer.prefix) == []


async def test_a_flush_first_thing_in_an_event_loop_reads_the_slot_map(
    cluster: ClusterTopology, make_layer: LayerFactory
) -> None:
    """Seen: flush() as the first call of a layer (async_to_sync(layer.flush)() in a
    management command) deleted nothing: no request had made it read the slot map."""
    writer = make_layer(cluster)
    for number in range(30):
        await writer.group_add(f"group-{number}", f"member-{number}")
    await make_layer(cluster, prefix=writer.prefix).flush()
    assert await keys_left_but_kept(cluster, writer.prefix) == []


ASK_ROUNDS = 6  # slot-map reads while a slot migrates onto a master that owns no slot
ASK_LINK_RETIRE_WAIT_S = 20.0  # the idle ASK target's link is closed within this


async def layer_connection_ids(node: RedisNode, layer: RedisChannelLayer) -> set[int]:
    """The ids of the connections ``layer`` holds to ``node`` (a new connection, a new id)."""
    name = layer._session()._shards[0].spec.settings.client_name
    client = node.async_client()
    try:
        return {int(e["id"]) for e in await client.client_list() if e["name"] == name}
    finally:
        await client.aclose()


def retired_nodes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The nodes whose links the router closed (``link_retired`` events), in order."""
    events = [r for r in caplog.records if getattr(r, "event", None) == "link_retired"]
    return [str(getattr(r, "node", "")) for r in events]


async def await_no_connection(node: RedisNode, layer: RedisChannelLayer, wait_s: float) -> None:
    """Polls ``node`` until ``layer`` holds no connection to it, for at most ``wait_s``."""
    deadline = time.monotonic() + wait_s
    for _ in range(int(wait_s / 0.05) + 1):
        if not await layer_connections(node, layer) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)  # polling the server: no event tells the link closed


async def test_an_ask_target_that_owns_no_slot_keeps_one_link_through_map_reads(
    cluster: ClusterTopology, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """While a slot migrates onto a master that owns no slot yet, its requests meet ASK and
    go to that master: a slot-map read (which names it nowhere) must not close that link.
    Seen: each read closed it and the next ASK opened another, a new connection a second
    through a stalled migration. Once the sends stop, the idle link is closed."""
    layer = make_layer(cluster)
    channel = "ask.churn"
    await layer.send(channel, {"type": "before"})  # the map read, the channel's keys written
    router = layer._session()._shards[0].router
    assert router is not None
    slot = slot_of(KeyLayout(layer.prefix).channel(channel))
    target = await cluster.aadd_master()
    address = f"{target.host}:{target.port}"
    await cluster.amigrate_slot(slot, target, finish=False)  # keys moved; the slot stays
    seen: set[int] = set()
    with caplog.at_level(logging.INFO, logger="channels_ha.cluster"):
        for number in range(ASK_ROUNDS):
            await layer.send(channel, {"type": f"during-{number}"})  # ASK to the target
            seen |= await layer_connection_ids(target, layer)
            await router.reread_map()  # as a reader reconnecting does, about once a second
        assert len(seen) == 1, f"{len(seen)} connections to the ASK target"
        assert retired_nodes(caplog) == [], "a map read closed the ASK target's link"
        await await_no_connection(target, layer, ASK_LINK_RETIRE_WAIT_S)  # no more sends
    assert await layer_connections(target, layer) == 0, "the idle ASK target kept its link"
    assert retired_nodes(caplog) == [address]


async def test_an_ask_target_that_died_leaves_no_unread_error_behind(
    cluster: ClusterTopology, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A send redirected with ASK to a node that died fails at failover_timeout; the ASKING
    written before each attempt fails with it, and nobody awaits that one: it must leave no
    "Future exception was never retrieved" behind (seen: 21 for one send with
    failover_timeout 3)."""
    layer = make_layer(cluster, failover_timeout=3)
    channel = "ask.orphan"
    await layer.send(channel, {"type": "before"})
    slot = slot_of(KeyLayout(layer.prefix).channel(channel))
    target = await cluster.aadd_master()
    await cluster.amigrate_slot(slot, target, finish=False)
    await layer.send(channel, {"type": "asked"})  # ASK to the target, which answers
    target.kill()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(RedisUnavailable):
            await layer.send(channel, {"type": "during"})
        await layer.close()
        gc.collect()  # an unread exception is reported when its future is collected
        await asyncio.sleep(0)
    unread = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unread, f"{len(unread)} exceptions never retrieved"


RESHARD_RETIRE_WAIT_S = 20.0  # a master a reshard emptied loses the link within this


async def test_a_reshard_onto_an_empty_master_and_back_keeps_then_closes_its_link(
    cluster: ClusterTopology, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A slot migrating onto a master that owns no slot: the link its ASKs opened serves it
    once it owns the slot. Migrated back, the master is empty: a reshard alone redirects
    with MOVED to masters the layer knows, and no slot map was read, so the link stayed
    open until something else read the map (a failover; maybe never). A MOVED now brings a
    map read soon after, which closes it."""
    layer = make_layer(cluster)
    channel = "resharded"
    await layer.send(channel, {"type": "before"})
    router = layer._session()._shards[0].router
    assert router is not None
    slot = slot_of(KeyLayout(layer.prefix).channel(channel))
    source = await cluster.anode_for_slot(slot)
    added = await cluster.aadd_master()
    await cluster.amigrate_slot(slot, added, finish=False)  # the cluster grows onto it
    await layer.send(channel, {"type": "asked"})  # ASK: a link to a node owning no slot
    asking = await layer_connection_ids(added, layer)
    await router.reread_map()
    await cluster.afinish_slot_migration(slot, added)
    await layer.send(channel, {"type": "moved-on"})  # MOVED to a new master: the map is read
    assert await layer_connection_ids(added, layer) == asking, "not the ASK target's link"
    await cluster.amigrate_slot(slot, source)  # and shrinks again: the new master is empty
    with caplog.at_level(logging.INFO, logger="channels_ha.cluster"):
        await layer.send(channel, {"type": "moved-back"})  # MOVED to a master it knows
        await await_no_connection(added, layer, RESHARD_RETIRE_WAIT_S)
    assert await layer_connections(added, layer) == 0, "the emptied master kept its link"
    assert retired_nodes(caplog) == [f"{added.host}:{added.port}"]
    received = [(await layer.receive(channel))["type"] for _ in range(4)]
    assert received == ["before", "asked", "moved-on", "moved-back"]


async def test_a_send_a_woken_old_master_acknowledged_is_written_again(
    cluster: ClusterTopology, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen master is replaced and woken while an idle process (no group, nothing sent
    lately: no epoch check, so its slot map still names that master) sends to one of its
    slots. The woken master acknowledges the send at once, still believing it is master,
    and loses it as it learns of its replacement: the send must be written again to the new
    master when the layer notices it (guard: the 2 s replay covers this)."""
    layer = make_layer(cluster)
    channel = "woken"
    await layer.send(channel, {"type": "warm-up"})
    assert (await layer.receive(channel))["type"] == "warm-up"
    session = layer._session()
    session.core.recent[0].clear()  # as after `expiry` without a send
    shard = session._shards[0]
    router = shard.router
    assert router is not None
    slot = slot_of(KeyLayout(layer.prefix).channel(channel))
    victim = await cluster.anode_for_slot(slot)
    address = f"{victim.host}:{victim.port}"
    victim.pause()
    try:
        await cluster.await_new_master(victim)
        assert router.owner_of(slot) == address, "the layer noticed the failover already"
        retries = shard.stats.retries
        sending = asyncio.create_task(layer.send(channel, {"type": "acknowledged"}))
        link = router.link_to(address)
        for _ in range(100):  # written within a few loop turns; no event says so
            if link.unsettled():
                break
            await asyncio.sleep(0.005)
        assert link.unsettled(), "the send never reached the old master's link"
        with caplog.at_level(logging.INFO, logger="channels_ha.layer"):
            victim.resume()  # well within SUSPECT_AFTER_S: its reply is not late
            await asyncio.wait_for(sending, 10)
            assert shard.stats.retries == retries, "not acknowledged by the woken master"
            received = await asyncio.wait_for(layer.receive(channel), 10)
    finally:
        victim.resume()
    assert received["type"] == "acknowledged"
    replayed = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "replayed"]
    assert replayed
    # Not "receivers drop those they had": across processes, normal channels may not.
    assert all("except on normal channels" in message for message in replayed), replayed


SLOW_COMMAND_S = 0.7  # over SUSPECT_AFTER_S: its reply is late, and held until checked


async def slow_then_counted(router: ClusterRouter, key: str) -> tuple[list[object], float]:
    """A command slower than SUSPECT_AFTER_S, and an INCR of ``key`` written right behind
    it (its reply held with the slow one's); their replies, and how long they took."""
    started = time.monotonic()
    slow = router.submit("DEBUG", "SLEEP", str(SLOW_COMMAND_S), key=key)
    counted = router.submit("INCR", key, key=key)
    replies = await asyncio.wait_for(asyncio.gather(slow, counted), 20)
    return replies, time.monotonic() - started


@pytest.mark.serial  # times itself within a second or so
async def test_a_slow_command_is_answered_when_the_router_knows_one_node(
    cluster: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """Given only the slot's master, the router asks the other masters of its slot map
    whether that master still owns the slot, and takes the late reply. Seen: nobody else
    was asked, so the connection was dropped and the commands written again, late again,
    until failover_timeout (the INCR ran 9 times, RedisUnavailable after 6.4 s)."""
    key = "{slow}counted"
    master = await cluster.anode_for_slot(slot_of(key))
    stats = ShardStats()
    settings = ServerSettings(failover_timeout_s=6.0)
    router = ClusterRouter(
        [Endpoint(master.host, master.port)], settings, stats, lambda _: None, lambda: None
    )
    try:
        await router.submit("SET", key, "0", key=key)
        with caplog.at_level(logging.INFO, logger="channels_ha"):
            replies, took = await slow_then_counted(router, key)
    finally:
        await router.close(1.0)
    assert replies == [b"OK", 1], "the INCR ran again"
    assert took < SLOW_COMMAND_S + 1.0, f"answered after {took:.1f} s"
    assert stats.reconnects == 0
    assert not [r for r in caplog.records if getattr(r, "event", None) == "connection_dropped"]


async def test_late_replies_nobody_can_vouch_for_are_not_taken(
    cluster: ClusterTopology,
) -> None:
    """Guard: no other node gives its slot map (each refuses CLUSTER SLOTS, as nodes cut
    off by a partition would not answer): whether the master still owns the slot is not
    known for reply_timeout, and its late replies are not taken. The connection is left
    and the requests written again (the layer's own writes are deduplicated; this raw INCR
    is not), where a demoted master's acknowledgement could lose a message."""
    key = "{slow}counted"
    master = await cluster.anode_for_slot(slot_of(key))
    others = [node for node in cluster.nodes if node is not master]
    stats = ShardStats()
    settings = ServerSettings(reply_timeout_s=1.0, failover_timeout_s=3.0)
    router = ClusterRouter(
        [Endpoint(master.host, master.port)], settings, stats, lambda _: None, lambda: None
    )
    try:
        await router.submit("SET", key, "0", key=key)
        await set_default_user(others, "-cluster|slots")
        with contextlib.suppress(RedisUnavailable):
            await slow_then_counted(router, key)
    finally:
        await set_default_user(others, "+cluster|slots")
        await router.close(1.0)
    assert stats.reconnects >= 1, "late replies taken with nobody to vouch for the master"


async def set_default_user(nodes: list[RedisNode], *rules: str) -> None:
    """``ACL SETUSER default`` with ``rules`` on each of ``nodes``."""
    for node in nodes:
        client = node.async_client()
        try:
            await client.execute_command("ACL", "SETUSER", "default", *rules)
        finally:
            await client.aclose()
