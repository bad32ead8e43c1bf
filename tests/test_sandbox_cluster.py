"""Faults injected into a fresh cluster end as Redis Cluster promises: failover, MOVED, ASK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot

from channels_ha.sandbox import ClusterTopology, RedisNode, TopologyFactory

pytestmark = pytest.mark.slow


def _cluster(factory: TopologyFactory, **options: object) -> ClusterTopology:
    topology = factory("cluster", **options)
    assert isinstance(topology, ClusterTopology)
    return topology


@pytest.fixture(scope="module")
def migration_cluster() -> Iterator[ClusterTopology]:
    """A cluster for this module's slot migrations, kept apart from the shared one."""
    with ClusterTopology() as topology:
        topology.start()
        yield topology


def _on_node(node: RedisNode, *command: object) -> object:
    client = node.client(decode_responses=True)
    try:
        return client.execute_command(*command)
    finally:
        client.close()


def test_kill_master_promotes_its_replica(redis_sandbox_factory: TopologyFactory) -> None:
    """Killing a master makes its replica take over its slots, and the cluster stays ok."""
    topology = _cluster(redis_sandbox_factory)
    old = topology.masters()[0]
    old.kill()
    new = topology.wait_for_new_master(old)
    assert new is not old
    assert new in topology.masters()
    for node in topology.nodes:
        if node.running:
            assert "cluster_state:ok" in str(_on_node(node, "CLUSTER", "INFO"))
    topology.wait_until_healthy()
    assert str(_on_node(old, "ROLE")[0]) == "slave"  # type: ignore[index]


def test_migrate_slot_moves_keys_and_redirects(migration_cluster: ClusterTopology) -> None:
    """``migrate_slot`` moves a slot's keys; the old owner then answers MOVED."""
    topology = migration_cluster
    slot = key_slot(b"{user1}.a")
    source = topology.node_for_slot(slot)
    for key in ("{user1}.a", "{user1}.b"):
        _on_node(source, "SET", key, "value")
    target = next(node for node in topology.masters() if node is not source)
    topology.migrate_slot(slot, target)
    assert topology.node_for_slot(slot) is target
    assert _on_node(target, "CLUSTER", "COUNTKEYSINSLOT", slot) == 2
    with pytest.raises(redis.exceptions.MovedError):
        _on_node(source, "GET", "{user1}.a")


def test_unfinished_migration_answers_ask(migration_cluster: ClusterTopology) -> None:
    """With ``finish=False`` the old owner answers ASK for moved keys until the migration ends."""
    topology = migration_cluster
    slot = key_slot(b"{user2}.a")
    source = topology.node_for_slot(slot)
    _on_node(source, "SET", "{user2}.a", "value")
    target = next(node for node in topology.masters() if node is not source)
    topology.migrate_slot(slot, target, finish=False)
    with pytest.raises(redis.exceptions.AskError):
        _on_node(source, "GET", "{user2}.a")
    topology.finish_slot_migration(slot, target)
    assert topology.node_for_slot(slot) is target


def test_tls_cluster_serves_a_cluster_client(redis_sandbox_factory: TopologyFactory) -> None:
    """A TLS-only cluster serves redis-py's cluster client given the sandbox's CA."""
    topology = _cluster(redis_sandbox_factory, tls=True)
    assert topology.url.startswith("rediss+cluster://")
    host, port = topology.connection_config["startup_nodes"][0]
    client = redis.cluster.RedisCluster(
        host=host, port=port, ssl=True, ssl_ca_certs=topology.connection_config["ssl_ca_certs"]
    )
    for index in range(20):
        client.set(f"key{index}", index)
    assert client.get("key7") == b"7"
    client.close()


async def test_await_new_master_in_a_cluster(redis_sandbox_factory: TopologyFactory) -> None:
    """The asyncio wait returns the replica that took over a killed master's slots."""
    topology = _cluster(redis_sandbox_factory)
    old = (await topology.amasters())[1]
    old.kill()
    new = await topology.await_new_master(old)
    assert new is not old
    client = redis.asyncio.cluster.RedisCluster(host=new.host, port=new.port)
    assert await client.set("after", "failover") is True
    await client.aclose()


def test_add_master_joins_an_empty_master_a_reshard_fills_and_empties(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """``add_master`` joins a master that owns no slot, known to every node; a slot moves
    onto it and back (then it owns none again, and may turn into a replica)."""
    topology = _cluster(redis_sandbox_factory)
    added = topology.add_master()
    assert added not in topology.masters()
    assert str(_on_node(added, "ROLE")[0]) == "master"  # type: ignore[index]
    slot = key_slot(b"{grown}.a")
    source = topology.node_for_slot(slot)
    _on_node(source, "SET", "{grown}.a", "value")
    topology.migrate_slot(slot, added)
    assert topology.node_for_slot(slot) is added
    assert _on_node(added, "GET", "{grown}.a") == "value"
    topology.migrate_slot(slot, source)
    assert added not in topology.masters()
    assert _on_node(source, "GET", "{grown}.a") == "value"
