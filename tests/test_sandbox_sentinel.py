"""Faults injected into a fresh Sentinel topology end in the failovers Redis promises."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from channels_ha.sandbox import SentinelTopology, TopologyFactory

pytestmark = pytest.mark.slow


def _sentinel(factory: TopologyFactory, **options: object) -> SentinelTopology:
    topology = factory("sentinel", **options)
    assert isinstance(topology, SentinelTopology)
    return topology


def _role(node: object) -> str:
    client = node.client(decode_responses=True)  # type: ignore[attr-defined]
    try:
        return str(client.execute_command("ROLE")[0])
    finally:
        client.close()


def test_kill_master_elects_a_replica(redis_sandbox_factory: TopologyFactory) -> None:
    """Killing the master with SIGKILL makes the sentinels promote a replica."""
    topology = _sentinel(redis_sandbox_factory)
    old = topology.current_master()
    old.kill()
    new = topology.wait_for_new_master(old)
    assert new is not old
    assert new in topology.data_nodes
    assert _role(new) == "master"


def test_pause_past_down_after_fails_over_and_resume_demotes(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """A master frozen past down-after is replaced; once thawed it becomes a replica."""
    topology = _sentinel(redis_sandbox_factory)
    old = topology.current_master()
    old.pause()
    new = topology.wait_for_new_master(old)
    topology.wait_until_healthy()  # resumes the old master and waits for its demotion
    assert not old.paused
    assert (_role(old), topology.current_master()) == ("slave", new)


def test_sentinel_failover_hands_over(redis_sandbox_factory: TopologyFactory) -> None:
    """``failover()`` (SENTINEL FAILOVER) moves the master role to a replica, twice in a row."""
    topology = _sentinel(redis_sandbox_factory)
    first = topology.current_master()
    topology.failover()
    second = topology.wait_for_new_master(first)
    topology.wait_until_healthy()
    topology.failover()
    third = topology.wait_for_new_master(second)
    assert second is not first
    assert third is not second


def test_restarted_replica_resyncs(redis_sandbox_factory: TopologyFactory) -> None:
    """A replica restarted empty comes back listening and copies the master's data again."""
    topology = _sentinel(redis_sandbox_factory)
    master = topology.current_master()
    client = master.client()
    client.set("key", "value")
    client.execute_command("WAIT", 2, 1000)
    client.close()
    replica = next(node for node in topology.data_nodes if node is not master)
    replica.restart_empty()
    topology.wait_until_healthy()
    copy = replica.client()
    assert copy.get("key") == b"value"
    copy.close()


def test_tls_and_passwords_serve_a_sentinel_client(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """With TLS everywhere and both passwords, a redis-py Sentinel client reaches the master."""
    topology = _sentinel(
        redis_sandbox_factory, tls=True, password="data pw", sentinel_password="sentinel pw"
    )
    config = topology.connection_config
    assert topology.url.startswith("rediss+sentinel://:data%20pw@")
    assert "sentinel_password=sentinel%20pw" in topology.url
    assert "ssl_ca_certs=" in topology.url
    tls = {"ssl": True, "ssl_ca_certs": config["ssl_ca_certs"]}
    manager = redis.sentinel.Sentinel(
        [tuple(address) for address in config["sentinels"]],
        sentinel_kwargs={"password": "sentinel pw", **tls},
    )
    master = manager.master_for(
        "mymaster",
        password="data pw",
        connection_class=redis.sentinel.SentinelManagedSSLConnection,
        **tls,
    )
    assert master.set("key", "value") is True
    master.close()
    for sentinel in manager.sentinels:
        sentinel.close()


@pytest.mark.serial  # times itself within a second or so
async def test_await_new_master_lets_traffic_run(redis_sandbox_factory: TopologyFactory) -> None:
    """While ``await_new_master`` waits, the event loop keeps running client traffic."""
    topology = _sentinel(redis_sandbox_factory)
    old = await topology.acurrent_master()
    manager = redis.asyncio.sentinel.Sentinel(
        [tuple(address) for address in topology.connection_config["sentinels"]]
    )
    client = manager.master_for("mymaster", socket_timeout=0.5)
    gaps: list[float] = []
    traffic = asyncio.create_task(_traffic(client, gaps))
    try:
        old.kill()
        new = await topology.await_new_master(old)
    finally:
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)
    await client.aclose()
    for sentinel in manager.sentinels:
        await sentinel.aclose()
    assert new is not old
    assert gaps
    assert max(gaps) < 1.0  # the loop was never blocked for long


async def _traffic(client: redis.asyncio.Redis, gaps: list[float]) -> None:
    """Write in a loop, ignoring the errors of the failover; record gaps between iterations."""
    last = time.monotonic()
    for index in range(100_000):
        try:
            await client.set("counter", index)
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            await asyncio.sleep(0.05)  # pacing retries while the master is gone
        now = time.monotonic()
        gaps.append(now - last)
        last = now
