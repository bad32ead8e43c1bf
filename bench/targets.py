"""The Redis each benchmark runs on: a sandbox topology, started for the run and always stopped.

``cluster`` is accepted already: channels_redis cannot run on Redis Cluster, so only channels-ha
is measured there (the ratio columns stay empty), once the layer supports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from channels_ha.sandbox import RedisNode, Topology, start_topology

from .layers import CHANNELS_HA

TOPOLOGIES = ("standalone", "tls", "sentinel", "cluster")
DEFAULT_TOPOLOGIES = ("standalone", "tls", "sentinel")
# Layers that can run on a topology, where not all of them can.
ONLY_LAYERS = {"cluster": (CHANNELS_HA,)}


@dataclass(frozen=True)
class Target:
    """A running topology, as the workloads see it."""

    kind: str
    topology: Topology

    @property
    def url(self) -> str:
        return self.topology.url

    def masters(self) -> list[RedisNode]:
        """The data nodes that take writes: every master of a Cluster, else the one master."""
        finder = getattr(self.topology, "current_master", None)
        if finder is not None:
            return [finder()]
        masters = getattr(self.topology, "masters", None)
        if masters is not None:
            return list(masters())
        return [self.topology.nodes[0]]

    def sentinels(self) -> list[RedisNode]:
        """The sentinels, on Sentinel; none elsewhere."""
        return list(getattr(self.topology, "sentinels", []))

    def master(self) -> RedisNode:
        """The master the reference rows measure (the first one on Cluster)."""
        return self.masters()[0]

    def runs(self, layer: str) -> bool:
        return layer in ONLY_LAYERS.get(self.kind, (layer,))


@contextmanager
def started(kind: str) -> Iterator[Target]:
    """Starts the topology ``kind``; stops it on the way out, whatever happened."""
    topology = start_topology(kind)
    try:
        yield Target(kind, topology)
    finally:
        topology.stop()
