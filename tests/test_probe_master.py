"""The fast master probe behind the health checks: a writable master within one deadline."""

from __future__ import annotations

import time

from channels_ha import parse_url
from channels_ha._probe import probe_master
from channels_ha.sandbox import SentinelTopology, StandaloneTopology, Topology, TopologyFactory


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
