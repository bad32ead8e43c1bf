"""What the sandbox looks like from outside: each node's role, each sentinel's master, a phase.

Pure functions over raw replies (``ROLE``, ``SENTINEL GET-MASTER-ADDR-BY-NAME``, ``SENTINEL
REPLICAS``, decoded, without redis-py's reply parsing); ``None`` stands for a node that did
not answer. The phase says whether the demo may kill the master again:

``failing over``  the sentinels do not (yet) agree on a master that answers as one
``restarting``    a data node is dead after a failover; the launcher starts it again
``rejoining``     a node is back but not yet a linked replica in every sentinel's eyes
``healthy``       one master, two linked replicas, three sentinels agreeing
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

HEALTHY = "healthy"
FAILING_OVER = "failing over"
RESTARTING = "restarting"
REJOINING = "rejoining"


@dataclass(frozen=True)
class NodeView:
    name: str
    address: str
    pid: int | None
    role: str  # master, replica, starting (running, not answering) or down (no process)
    master: str | None = None  # a replica's master
    linked: bool = False  # a replica's link to its master is up

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "pid": self.pid, "role": self.role}


@dataclass(frozen=True)
class SentinelView:
    name: str
    address: str
    master: str | None  # the master it names
    replicas_ok: bool  # it sees two replicas, linked

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_view(name: str, address: str, pid: int | None, role_reply: Any) -> NodeView:
    if pid is None:
        return NodeView(name, address, None, "down")
    if not isinstance(role_reply, list) or not role_reply:
        return NodeView(name, address, pid, "starting")
    if role_reply[0] == "master":
        return NodeView(name, address, pid, "master")
    _, host, port, link, *_ = role_reply  # ["slave", host, port, "connected", offset]
    return NodeView(name, address, pid, "replica", f"{host}:{port}", link == "connected")


def sentinel_view(name: str, address: str, master_reply: Any, replicas_reply: Any) -> SentinelView:
    master = None
    if isinstance(master_reply, list) and len(master_reply) == 2:
        master = f"{master_reply[0]}:{master_reply[1]}"
    replicas = [_pairs(r) for r in replicas_reply] if isinstance(replicas_reply, list) else []
    linked = [
        r for r in replicas if r.get("flags") == "slave" and r.get("master-link-status") == "ok"
    ]
    return SentinelView(name, address, master, len(replicas) == 2 and len(linked) == 2)


def agreed_master(sentinels: list[SentinelView]) -> str | None:
    """The master every answering sentinel names, if they agree."""
    named = Counter(s.master for s in sentinels if s.master is not None)
    return next(iter(named)) if len(named) == 1 else None


def phase(nodes: list[NodeView], sentinels: list[SentinelView]) -> str:
    master = agreed_master(sentinels)
    current = next((n for n in nodes if n.address == master), None)
    if current is None or current.role != "master":
        return FAILING_OVER
    if any(n.role == "down" for n in nodes):
        return RESTARTING
    replicas = [n for n in nodes if n is not current]
    linked = all(n.role == "replica" and n.master == master and n.linked for n in replicas)
    if not linked or not all(s.replicas_ok for s in sentinels):
        return REJOINING
    return HEALTHY


def _pairs(flat: Any) -> dict[str, Any]:
    """``[k1, v1, k2, v2, ...]`` as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False)) if isinstance(flat, list) else {}
