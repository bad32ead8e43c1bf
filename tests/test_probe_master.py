"""The fast master probe behind the health checks: a writable master within one deadline."""

from __future__ import annotations

import time

import pytest

from channels_ha import parse_url
from channels_ha._probe_master import MASTER_PROBE_TIMEOUT_S, probe_master
from channels_ha._sources import parse_connection_config
from channels_ha.sandbox import (
    ClusterTopology,
    SentinelTopology,
    StandaloneTopology,
    Topology,
    TopologyFactory,
)

from .conftest import masters_of, nothing_left_open, refusing_writes, user_kept_to_prefix

# Its assertions time things within a second or so: run alone (see scripts/test).
pytestmark = pytest.mark.serial


def test_ok_on_every_topology(redis_topology: Topology) -> None:
    """Each healthy topology has a master answering ROLE and PING (Cluster: state ok)."""
    report = probe_master(parse_url(redis_topology.url))
    assert (report.ok, report.error) == (True, None), report
    assert report.rtt_ms is not None
    assert report.rtt_ms >= 0
    if redis_topology.kind == "cluster":
        assert report.cluster_state == "ok"
    else:
        assert report.role == "master"


def test_a_replica_is_not_a_master(redis_sentinel: SentinelTopology) -> None:
    """A single-node configuration pointing at a replica is not ok, and says why."""
    master = redis_sentinel.current_master()
    replica = next(node for node in redis_sentinel.data_nodes if node is not master)
    report = probe_master(parse_url(f"redis://{replica.host}:{replica.port}"))
    assert (report.ok, report.role) == (False, "slave")
    assert report.error == f"{replica.host}:{replica.port} is a slave, not a master"


def test_no_sentinel_answers(redis_standalone: StandaloneTopology) -> None:
    """When no sentinel names a master, the error lists what each one answered."""
    node = redis_standalone.node
    report = probe_master(parse_url(f"redis+sentinel://{node.host}:{node.port}/mymaster"))
    assert (report.ok, report.master) == (False, None)
    assert report.error is not None
    assert report.error.startswith(f"sentinel {node.host}:{node.port}: ResponseError")


def test_sentinels_not_knowing_the_master_name_say_so(redis_sentinel: SentinelTopology) -> None:
    """Seen: "ResponseError: No such master with that name" from each sentinel. Each is
    named reachable, not knowing the master, with the setting to check (the layer waits
    for such a master, as a deployment coming up, and raises nothing at once)."""
    config = parse_connection_config({**redis_sentinel.connection_config, "master_name": "x"})
    report = probe_master(config)
    assert (report.ok, report.master) == (False, None)
    assert report.error is not None
    assert report.error.count("is reachable but does not know master 'x'") == 3, report
    assert "check the master name" in report.error


def test_a_hung_master_is_bounded(redis_sandbox_factory: TopologyFactory) -> None:
    """A paused master fails the probe within its timeout instead of hanging."""
    topology = redis_sandbox_factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    topology.node.pause()
    started = time.monotonic()
    report = probe_master(parse_url(topology.url), timeout_s=0.3)
    assert time.monotonic() - started < 0.8
    assert report.ok is False
    assert report.error is not None
    assert "Timeout" in report.error
    topology.node.resume()


def test_a_frozen_sentinel_is_not_an_outage(redis_sandbox_factory: TopologyFactory) -> None:
    """Seen: 503 on every pod while the first sentinel was frozen (or its address blackholed),
    the layer working all along: it waited the whole timeout for that sentinel's answer. The
    others name the master; the frozen one is cut off, its connection closed."""
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    master = topology.current_master()
    topology.sentinels[0].pause()
    try:
        with nothing_left_open():
            started = time.monotonic()
            report = probe_master(parse_url(topology.url))
            took = time.monotonic() - started
    finally:
        topology.sentinels[0].resume()
    assert (report.ok, report.error) == (True, None), report
    assert (report.master, report.role) == (f"{master.host}:{master.port}", "master")
    assert took < MASTER_PROBE_TIMEOUT_S, f"the probe took {took:.2f} s"


def test_no_sentinel_answers_within_the_bound(redis_sandbox_factory: TopologyFactory) -> None:
    """With every sentinel frozen the probe fails in time, saying what each one did."""
    topology = redis_sandbox_factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    for sentinel in topology.sentinels:
        sentinel.pause()
    try:
        with nothing_left_open():
            started = time.monotonic()
            report = probe_master(parse_url(topology.url), timeout_s=0.5)
            took = time.monotonic() - started
    finally:
        for sentinel in topology.sentinels:
            sentinel.resume()
    assert took < 0.5 + 0.3, f"the probe took {took:.2f} s"
    assert (report.ok, report.master) == (False, None)
    assert report.error is not None
    said = report.error.split("; ")
    assert [part.split(": ")[0] for part in said] == [
        f"sentinel {sentinel.host}:{sentinel.port}" for sentinel in topology.sentinels
    ]
    assert all(": TimeoutError: " in part for part in said), report.error


def test_a_frozen_startup_node_is_not_an_outage(redis_sandbox_factory: TopologyFactory) -> None:
    """A frozen replica listed first among the startup nodes: every slot is still served, and
    the other nodes say so at once."""
    topology = redis_sandbox_factory("cluster")
    assert isinstance(topology, ClusterTopology)
    masters = topology.masters()
    replica = next(node for node in topology.nodes if node not in masters)
    others = [node for node in topology.nodes if node is not replica]
    config = parse_connection_config(
        {
            **topology.connection_config,
            "startup_nodes": [[node.host, node.port] for node in (replica, *others)],
        }
    )
    replica.pause()
    try:
        with nothing_left_open():
            started = time.monotonic()
            report = probe_master(config)
            took = time.monotonic() - started
    finally:
        replica.resume()
    assert (report.ok, report.error, report.cluster_state) == (True, None, "ok"), report
    assert report.master != f"{replica.host}:{replica.port}"
    assert took < MASTER_PROBE_TIMEOUT_S / 2, f"the probe took {took:.2f} s"


@pytest.mark.parametrize("refusal", ["oom", "noreplicas"])
@pytest.mark.parametrize("kind", ["standalone", "sentinel"])
def test_a_master_refusing_writes_is_not_ok(
    kind: str, refusal: str, request: pytest.FixtureRequest
) -> None:
    """Seen: ok (so 200) while every send failed, the master out of memory or short of
    replicas: ROLE and PING still answer. The write check is refused as sends are, within the
    bound, and leaves no key."""
    topology: Topology = request.getfixturevalue(f"redis_{kind}")
    (master,) = masters_of(topology)
    config = parse_url(topology.url)
    assert probe_master(config).writable is True
    with refusing_writes([master], refusal) as code:
        started = time.monotonic()
        report = probe_master(config)
        took = time.monotonic() - started
    assert (report.ok, report.role, report.writable) == (False, "master", False), report
    assert report.error == f"{master.host}:{master.port} refuses writes: {code} " + (
        "command not allowed when used memory > 'maxmemory'."
        if code == "OOM"
        else "Not enough good replicas to write."
    )
    assert took < MASTER_PROBE_TIMEOUT_S
    client = master.client()
    assert client.keys("asgi:probe*") == []
    client.close()
    assert probe_master(config).ok


def test_the_write_check_uses_the_layers_prefix(redis_sandbox_factory: TopologyFactory) -> None:
    """A user the ACL keeps to the layer's prefix takes the write under it; under a prefix it
    may not write, the check is not made, and that fails nothing (the layer works)."""
    config = parse_url(user_kept_to_prefix(redis_sandbox_factory("standalone").nodes[0]))
    assert probe_master(config, prefix="myapp").writable is True
    other = probe_master(config)
    assert (other.ok, other.writable, other.error) == (True, None, None)


def test_cluster_is_not_write_checked(redis_cluster: ClusterTopology) -> None:
    """On Cluster the probe asks one node whether every slot is served; it tries no write
    (that would take every master: ``status`` does it)."""
    report = probe_master(parse_url(redis_cluster.url))
    assert (report.ok, report.writable) == (True, None)
