"""The topology kinds by name, and a factory that stops what it started."""

from __future__ import annotations

from typing import Any

from ..exceptions import SandboxError
from ._cluster import ClusterTopology
from ._sentinel import SentinelTopology
from ._standalone import StandaloneTopology, TLSTopology
from ._topology import Topology

TOPOLOGIES: dict[str, type[Topology]] = {
    "standalone": StandaloneTopology,
    "tls": TLSTopology,
    "sentinel": SentinelTopology,
    "cluster": ClusterTopology,
}
#: Every topology kind, in the order tests are parametrized over them.
TOPOLOGY_KINDS = tuple(TOPOLOGIES)


def start_topology(kind: str, **options: Any) -> Topology:
    """Start a topology by name (``"standalone"``, ``"tls"``, ``"sentinel"``, ``"cluster"``).

    ``options`` go to the topology's constructor: ``tls``, ``password`` and, for Sentinel,
    ``sentinel_password``. The caller stops the topology (or uses it as a context manager).
    """
    if kind not in TOPOLOGIES:
        raise SandboxError(f"unknown topology {kind!r}; choose one of {', '.join(TOPOLOGY_KINDS)}")
    topology = TOPOLOGIES[kind](**options)
    topology.start()
    return topology


class TopologyFactory:
    """Starts fresh topologies on demand and stops them all at :meth:`stop_all`."""

    def __init__(self) -> None:
        self._started: list[Topology] = []

    def __call__(self, kind: str, **options: Any) -> Topology:
        """Start a topology, as :func:`start_topology` does, owned by this factory."""
        topology = start_topology(kind, **options)
        self._started.append(topology)
        return topology

    def stop_all(self) -> None:
        """Stop every topology this factory started. Idempotent."""
        while self._started:
            self._started.pop().stop()
