"""The topology kinds by name, and a factory that stops what it started."""

from __future__ import annotations

import logging
from typing import Any

from ..exceptions import SandboxError, SandboxPortTaken
from ._cluster import ClusterTopology
from ._defaults import PORT_TAKEN_TRIES
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

logger = logging.getLogger(__name__)


def start_topology(kind: str, **options: Any) -> Topology:
    """Start a topology by name (``"standalone"``, ``"tls"``, ``"sentinel"``, ``"cluster"``).

    ``options`` go to the topology's constructor: ``tls``, ``password`` and, for Sentinel,
    ``sentinel_password``. The caller stops the topology (or uses it as a context manager).
    """
    if kind not in TOPOLOGIES:
        raise SandboxError(f"unknown topology {kind!r}; choose one of {', '.join(TOPOLOGY_KINDS)}")
    for tries_left in range(PORT_TAKEN_TRIES - 1, 0, -1):
        try:
            return _started(TOPOLOGIES[kind](**options))  # fresh ports each time
        except SandboxPortTaken as err:
            # A process that is no sandbox bound a port between its allocation and the
            # node's start (sandboxes skip each other's ports: see _ports).
            logger.warning(
                "%s: a port was taken (%s); starting on fresh ports, %d tries left",
                kind,
                str(err).partition(";")[0],
                tries_left,
            )
    return _started(TOPOLOGIES[kind](**options))  # the last try raises what it meets


def _started(topology: Topology) -> Topology:
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
