"""Real Redis topologies on loopback ports, for tests, demos and benchmarks.

Start one with :func:`start_topology` (or a topology class and ``start()``), point a client
at ``topology.url`` or ``topology.connection_config``, inject faults through the nodes
(``kill()``, ``pause()``/``resume()``, ``restart_empty()``) and the topology (``failover()``,
``migrate_slot()``; ``add_master()`` grows a Cluster), and wait for the outcome
(``wait_for_new_master()``, ``wait_until_healthy()``). Every blocking call has an asyncio
twin that does not block the event loop: waits ``wait_X``/``wait_until_X`` become
``await_X``; other calls ``X`` become ``aX`` (``arestart_empty``, ``afailover``,
``amigrate_slot``, ``aadd_master``, ``acurrent_master``).

Processes never outlive their owner: ``stop()`` (or leaving the ``with`` block), interpreter
exit and, on Linux, even a ``kill -9`` of the interpreter stop them. A node's port stays
reserved, from other sandbox processes too, until its topology stops, so a node killed and
restarted gets it back; ``start_topology`` starts again on fresh ports if another program
takes one first. Needs ``redis-server`` (Redis >= 7.0) on PATH; TLS topologies need the
``channels-ha[sandbox]`` extra.

The pytest fixtures built on this module are in :mod:`channels_ha.sandbox.pytest_plugin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._certs import TLSFiles
    from ._cluster import ClusterTopology, SlotMap
    from ._kinds import TOPOLOGY_KINDS, TopologyFactory, start_topology
    from ._process import RedisNode
    from ._sentinel import SentinelTopology
    from ._standalone import StandaloneTopology, TLSTopology
    from ._topology import Topology
    from ._traffic import Traffic, TrafficReport

# Names are imported on first use (PEP 562), so that loading the pytest plugin, which every
# pytest run of a project with channels-ha installed does, costs no redis-py import.
_HOMES = {
    "TLSFiles": "._certs",
    "ClusterTopology": "._cluster",
    "SlotMap": "._cluster",
    "TOPOLOGY_KINDS": "._kinds",
    "TopologyFactory": "._kinds",
    "start_topology": "._kinds",
    "RedisNode": "._process",
    "SentinelTopology": "._sentinel",
    "StandaloneTopology": "._standalone",
    "TLSTopology": "._standalone",
    "Topology": "._topology",
    "Traffic": "._traffic",
    "TrafficReport": "._traffic",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())


__all__ = [
    "TOPOLOGY_KINDS",
    "ClusterTopology",
    "RedisNode",
    "SentinelTopology",
    "SlotMap",
    "StandaloneTopology",
    "TLSFiles",
    "TLSTopology",
    "Topology",
    "TopologyFactory",
    "Traffic",
    "TrafficReport",
    "start_topology",
]
