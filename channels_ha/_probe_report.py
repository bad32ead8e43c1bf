"""What a live probe found, as immutable records with a text and a JSON rendering.

Kept apart from the probing itself so the Django ``status`` command and the health view can
render reports without touching the network. Nothing here holds a password: the probe never
puts one in a record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._sentinel_refusals import RefusalKind

__all__ = [
    "ClusterReport",
    "MasterReport",
    "NodeReport",
    "ProbeReport",
    "ReplicaView",
    "SentinelReport",
]


@dataclass(frozen=True)
class NodeReport:
    """One data node asked directly: does it answer, as what, which version, how fast."""

    address: str
    reachable: bool
    error: str | None = None
    role: str | None = None
    version: str | None = None
    rtt_ms: float | None = None
    maxmemory_policy: str | None = None
    # client-output-buffer-limit for normal clients, as "hard soft seconds" in bytes; None
    # when unlimited (0 0 0, the default) or when CONFIG GET is not allowed
    normal_output_limit: str | None = None
    # whether a master took the write check (see _probe_write); None when it was not made,
    # write_error then saying why (None too for a node that is no master)
    writable: bool | None = None
    write_error: str | None = None

    def text(self) -> str:
        if not self.reachable:
            return f"{self.address}: unreachable ({self.error})"
        return f"{self.address}: role {self.role}, Redis {self.version}, PING {self.rtt_ms} ms"


@dataclass(frozen=True)
class ReplicaView:
    """A replica as one sentinel sees it (``SENTINEL REPLICAS``)."""

    address: str
    flags: str
    link: str


@dataclass(frozen=True)
class SentinelReport:
    """One sentinel: reachable or not, and its view of the monitored master; or, reachable,
    what of the configuration it refused (``refused``: "credentials", "permission" or
    "master", an unknown master name; ``error`` says it and what to check)."""

    address: str
    reachable: bool
    error: str | None = None
    master: str | None = None
    master_flags: str | None = None
    quorum: int | None = None
    down_after_ms: int | None = None
    other_sentinels: int | None = None
    replicas: tuple[ReplicaView, ...] = ()
    refused: RefusalKind | None = None

    def text(self) -> str:
        if not self.reachable:
            return f"{self.address}: unreachable ({self.error})"
        if self.refused:
            return f"{self.address}: reachable but {self.error}"
        return (
            f"{self.address}: master {self.master} ({self.master_flags}), quorum {self.quorum}, "
            f"{self.other_sentinels} other sentinels, {len(self.replicas)} replicas"
        )


@dataclass(frozen=True)
class ClusterReport:
    """The cluster as its first answering node describes it."""

    state: str
    slots_covered: int
    masters: tuple[NodeReport, ...]
    replicas: tuple[str, ...]


@dataclass(frozen=True)
class ProbeReport:
    """The outcome of a probe: ``ok`` unless a problem keeps the layer from working now.

    ``warnings`` are degradations that do not (a sentinel down, a replica unlinked): the
    layer works, but a failover may not. ``sentinels_agree`` is None when no sentinel named a
    master (and outside Sentinel).
    """

    mode: str
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    master: NodeReport | None = None
    master_name: str | None = None
    sentinels: tuple[SentinelReport, ...] = ()
    sentinels_agree: bool | None = None
    cluster: ClusterReport | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data, ``ok`` included."""
        return {"ok": self.ok, **asdict(self)}

    def to_text(self) -> str:
        """The report as lines for a terminal, verdict last."""
        lines = [
            f"mode: {self.mode}" + (f" (master {self.master_name})" if self.master_name else "")
        ]
        lines += _sentinel_lines(self) + _cluster_lines(self.cluster)
        if self.master is not None:
            lines.append(f"master {self.master.text()}")
        lines += [f"warning: {warning}" for warning in self.warnings]
        lines += [f"problem: {problem}" for problem in self.problems]
        lines.append("status: OK" if self.ok else "status: FAILED")
        return "\n".join(lines)


@dataclass(frozen=True)
class MasterReport:
    """A fast answer to "is there a writable master right now?", the health check's question.

    ``master`` is the master's address; on Cluster it is the node that answered, and ``ok``
    means that node sees every slot served (``cluster_state:ok``). ``writable``: whether the
    master took the write check (``_probe_write``); None when it was not made (on Cluster,
    on a node that is no master, or for a user the ACL forbids it).
    """

    mode: str
    ok: bool
    master: str | None = None
    role: str | None = None
    rtt_ms: float | None = None
    writable: bool | None = None
    cluster_state: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return asdict(self)


def _sentinel_lines(report: ProbeReport) -> list[str]:
    if not report.sentinels:
        return []
    reachable = sum(sentinel.reachable for sentinel in report.sentinels)
    if report.sentinels_agree is None:
        agree = "none names a master"
    else:
        agree = "agree on the master" if report.sentinels_agree else "DISAGREE on the master"
    lines = [f"sentinels: {reachable} of {len(report.sentinels)} reachable, {agree}"]
    lines += [f"  {sentinel.text()}" for sentinel in report.sentinels]
    seen = next((s for s in report.sentinels if s.replicas), None)
    if seen is not None:
        lines.append(f"replicas (as {seen.address} sees them):")
        lines += [f"  {r.address}: {r.flags}, link {r.link}" for r in seen.replicas]
    return lines


def _cluster_lines(cluster: ClusterReport | None) -> list[str]:
    if cluster is None:
        return []
    lines = [f"cluster_state: {cluster.state}", f"slots covered: {cluster.slots_covered} of 16384"]
    lines += [f"  master {node.text()}" for node in cluster.masters]
    lines += [f"  replica {address}" for address in cluster.replicas]
    return lines
