"""The live probe: connect to the Redis behind a configuration and report what answers.

``channels-ha check --connect`` and the Django ``status`` command are thin shells over
:func:`probe`; the health view uses :func:`channels_ha._probe_master.probe_master`. Both block,
running asyncio clients on an event loop of their own, and ask the sentinels (or the startup
nodes) at once, so nodes that hang cost a probe one wait, not one each. :func:`probe` bounds
every connection and command by ``timeout_s`` and never retries, so a probe of a dead
deployment ends within a few timeouts; the configuration's own timeouts apply when they are
shorter. Its report reads as if the nodes had been asked in turn.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from ._config import (
    ClusterConfig,
    NodeAddress,
    RedisConfig,
    SentinelConfig,
    SingleNodeConfig,
    split_host_port,
)
from ._constants import DEFAULT_PREFIX, INBOX_BATCH_SIZE
from ._probe_io import (
    PROBE_FAILURES,
    all_at_once,
    bounded_kwargs,
    data_kwargs,
    describe_error,
    node_address,
    probe_client,
    reply_pairs,
    run_blocking,
    settle_tasks,
    single_kwargs,
)
from ._probe_report import (
    ClusterReport,
    NodeReport,
    ProbeReport,
    ReplicaView,
    SentinelReport,
)
from ._probe_write import WriteCheck, check_write, probe_key, write_command
from ._redis_kwargs import sentinel_kwargs
from ._sentinel_refusals import ADVICE, redis_py_refusal, refusal_text, what_refused
from ._server import info_field, too_old
from ._slots import tag_for_slot
from ._tls import read_tls_files
from .exceptions import ConfigurationError

__all__ = ["PROBE_TIMEOUT_S", "probe"]

#: Bound on each connection attempt and each command of a probe.
PROBE_TIMEOUT_S = 2.0
_SLOTS = 16384


def probe(
    config: RedisConfig, timeout_s: float = PROBE_TIMEOUT_S, prefix: str = DEFAULT_PREFIX
) -> ProbeReport:
    """Connect to every node the configuration names and report what answers.

    A master that refuses writes (the write of a key under the layer's ``prefix`` that writes
    nothing, see ``_probe_write``: out of memory, ``min-replicas-to-write`` unmet) is a
    problem. Blocking, like the health view's probe. The sentinels (or the startup nodes, then the
    cluster's masters) are asked at once, so a probe with every sentinel frozen ends after one
    ``timeout_s``, not one per sentinel. A TLS file redis-py could not use (or a wrong
    ``ssl_password``) is the one problem, by name.
    """
    try:
        read_tls_files(config)
    except ConfigurationError as err:
        return ProbeReport(config.mode, problems=(str(err),))
    return run_blocking(_probe(config, timeout_s, prefix))


async def _probe(config: RedisConfig, timeout_s: float, prefix: str) -> ProbeReport:
    if isinstance(config, SentinelConfig):
        return await _probe_sentinel(config, timeout_s, prefix)
    if isinstance(config, ClusterConfig):
        return await _probe_cluster(config, timeout_s, prefix)
    return await _probe_single(config, timeout_s, prefix)


# -- one data node ---------------------------------------------------------------------------


async def _probe_node(kwargs: dict[str, Any], label: str, key: str) -> NodeReport:
    """PING (timed on an open connection), ROLE and version of one node; on a master, the
    write of ``key`` too."""
    write = WriteCheck(None)
    try:
        async with probe_client(kwargs) as client:
            await client.execute_command("PING")  # opens the connection: not part of the timing
            started = time.perf_counter()
            await client.execute_command("PING")
            rtt_ms = round((time.perf_counter() - started) * 1000, 3)
            role = str((await client.execute_command("ROLE"))[0])
            if role == "master":
                write = await check_write(client.execute_command(*write_command(key)))
            version = info_field(await client.execute_command("INFO", "server"), "redis_version")
            memory = await client.execute_command("INFO", "memory")
            policy = info_field(memory, "maxmemory_policy")
            if info_field(memory, "maxmemory") == "0":
                policy = None  # no limit: nothing is ever evicted, whatever the policy
            output_limit = await _normal_output_limit(client)
    except PROBE_FAILURES as err:
        return NodeReport(label, reachable=False, error=describe_error(err))
    return NodeReport(
        label,
        reachable=True,
        role=role,
        version=version,
        rtt_ms=rtt_ms,
        maxmemory_policy=policy,
        normal_output_limit=output_limit,
        writable=write.writable,
        write_error=write.detail,
    )


async def _normal_output_limit(client: Any) -> str | None:
    """The node's ``client-output-buffer-limit`` for normal clients ("hard soft seconds"),
    None when unlimited, or when the user may not run ``CONFIG GET`` (managed services
    often forbid it: a probe must not fail for a check it cannot make)."""
    try:
        # A raw reply, as the probe client's are: [name, "normal 0 0 0 replica ... pubsub ..."]
        reply = await client.execute_command("CONFIG", "GET", "client-output-buffer-limit")
    except redis.exceptions.ResponseError:
        return None
    words = str(reply[1]).split() if len(reply) == 2 else []
    if "normal" not in words:
        return None
    start = words.index("normal") + 1
    limit = words[start : start + 3]
    return None if all(word == "0" for word in limit) else " ".join(limit)


def _master_problems(node: NodeReport) -> list[str]:
    if not node.reachable:
        return [f"the master {node.address} is unreachable: {node.error}"]
    if node.role != "master":
        return [f"{node.address} is a {node.role}, not a master: writes would fail"]
    if too_old(node.version):
        return [f"{node.address} runs Redis {node.version}; channels-ha needs 7.0 or newer"]
    if node.writable is False:
        return [f"the master {node.address} refuses writes ({node.write_error}): sends fail"]
    return []


def _master_warnings(node: NodeReport | None) -> list[str]:
    """What makes Redis drop data without an error: an evicting memory policy (messages and
    group memberships), and an output buffer limit for normal clients (a reply larger than
    the hard one closes the connection before any of it leaves, and what a pop took is
    lost)."""
    if node is None:
        return []
    warnings = []
    if node.writable is None and node.write_error is not None:
        warnings.append(
            f"{node.address}: whether it takes writes was not checked: {node.write_error}"
        )
    if node.maxmemory_policy not in (None, "noeviction"):
        warnings.append(
            f"{node.address} has maxmemory-policy {node.maxmemory_policy}: when memory runs "
            "out, Redis evicts messages and group memberships without an error; set noeviction"
        )
    if node.normal_output_limit is not None:
        warnings.append(
            f"{node.address} has client-output-buffer-limit normal {node.normal_output_limit}: "
            "Redis closes a connection whose reply waiting to be sent grows past it (the hard "
            "limit at once, the soft one after its seconds), and what a pop took is lost "
            f"(one large message, or up to {INBOX_BATCH_SIZE} of a process's inbox); set "
            "client-output-buffer-limit normal 0 0 0 (the default)"
        )
    return warnings


async def _probe_single(config: SingleNodeConfig, timeout_s: float, prefix: str) -> ProbeReport:
    kwargs = single_kwargs(config, timeout_s)
    master = await _probe_node(kwargs, config.node_labels()[0], probe_key(prefix))
    return ProbeReport(
        "single",
        problems=tuple(_master_problems(master)),
        warnings=tuple(_master_warnings(master)),
        master=master,
    )


# -- sentinel --------------------------------------------------------------------------------


async def _probe_sentinel(config: SentinelConfig, timeout_s: float, prefix: str) -> ProbeReport:
    """Every sentinel at once, then the master most of them name."""
    kwargs = bounded_kwargs(sentinel_kwargs(config), timeout_s)
    sentinels = tuple(
        await all_at_once(_ask_sentinel(config, node, kwargs) for node in config.sentinels)
    )
    named = Counter(sentinel.master for sentinel in sentinels if sentinel.master is not None)
    master = None
    if named:
        label = named.most_common(1)[0][0]
        address = NodeAddress(**split_host_port(label, 0))
        kwargs = data_kwargs(config, address, timeout_s)
        master = await _probe_node(kwargs, label, probe_key(prefix))
    agree = len(named) == 1 if named else None  # None: no sentinel named a master
    problems, warnings = _sentinel_verdict(config, sentinels, agree is True, master)
    return ProbeReport(
        "sentinel",
        problems=tuple(problems),
        warnings=tuple(warnings),
        master=master,
        master_name=config.master_name,
        sentinels=sentinels,
        sentinels_agree=agree,
    )


# A Sentinel failover takes down-after-milliseconds plus this: the sentinels agree the master
# is down, elect a leader (after a random delay of up to 1 s) and promote a replica. Measured
# in the sandbox (down-after 1000 ms): 0.8-1.2 s past down-after, in six SIGKILLs of the master.
# docs/kubernetes.md and docs/failover.md state it; tests/test_kubernetes_docs.py holds them to it.
FAILOVER_ELECTION_S = 2.0


async def _ask_sentinel(
    config: SentinelConfig, node: NodeAddress, kwargs: dict[str, Any]
) -> SentinelReport:
    """One sentinel's view of the master: its address, state, quorum and replicas."""
    name = config.master_name
    try:
        async with probe_client({**kwargs, "host": node.host, "port": node.port}) as client:
            view = reply_pairs(await client.execute_command("SENTINEL", "MASTER", name))
            replicas = await client.execute_command("SENTINEL", "REPLICAS", name)
    except PROBE_FAILURES as err:
        refusal = redis_py_refusal(str(node), err)
        if refusal is not None:  # it answered: the configuration is what it turned away
            text = refusal_text(refusal, name)
            return SentinelReport(str(node), reachable=True, error=text, refused=refusal.kind)
        return SentinelReport(str(node), reachable=False, error=describe_error(err))
    return SentinelReport(
        str(node),
        reachable=True,
        master=str(node_address(view["ip"], view["port"])),
        master_flags=view.get("flags"),
        quorum=int(view["quorum"]),
        down_after_ms=int(view["down-after-milliseconds"]),
        other_sentinels=int(view["num-other-sentinels"]),
        replicas=tuple(_replica(reply_pairs(entry)) for entry in replicas),
    )


def _replica(view: dict[str, str]) -> ReplicaView:
    address = str(node_address(view["ip"], view["port"]))
    return ReplicaView(address, view.get("flags", "?"), view.get("master-link-status", "?"))


def _sentinel_verdict(
    config: SentinelConfig,
    sentinels: tuple[SentinelReport, ...],
    agree: bool,
    master: NodeReport | None,
) -> tuple[list[str], list[str]]:
    """Problems (the layer cannot work now) and warnings (a failover may not work).

    A sentinel that refused the credentials, or knows no such master, answered: it is told
    apart from one that did not, and the settings to check are named."""
    answering = [sentinel for sentinel in sentinels if sentinel.master is not None]
    if not answering or master is None:
        return [_no_master_named(config, sentinels)], []
    problems = [] if agree else ["the sentinels name different masters"]
    warnings = [f"sentinel {s.address} {_failed(s)}" for s in sentinels if s not in answering]
    quorum = max(sentinel.quorum or 0 for sentinel in answering)
    if len(answering) < quorum:
        warnings.append(
            f"{len(answering)} sentinels name the master, fewer than the quorum {quorum}"
        )
    warnings += [
        f"{answering[0].address} sees replica {r.address} with flags {r.flags}, link {r.link}"
        for r in answering[0].replicas
        if r.flags != "slave" or r.link != "ok"
    ]
    warnings += _failover_too_slow(config, answering)
    return problems + _master_problems(master), warnings + _master_warnings(master)


def _failed(sentinel: SentinelReport) -> str:
    """Why a sentinel named no master: it refused (reachable), or did not answer."""
    if sentinel.refused:
        return f"is reachable but {sentinel.error}"
    return f"is unreachable: {sentinel.error}"


def _no_master_named(config: SentinelConfig, sentinels: tuple[SentinelReport, ...]) -> str:
    """The problem when no sentinel named a master: none answered, or those that did turned
    the configuration away (how many, how, and which settings to check)."""
    name, total = config.master_name, len(sentinels)
    refused = Counter(sentinel.refused for sentinel in sentinels if sentinel.refused)
    if not refused:
        return f"no sentinel answered for master {name!r}"
    how = [
        f"{count} of {total} {_said(what_refused(kind, name), count)}"
        for kind, count in refused.items()
    ]
    unreachable = total - sum(refused.values())
    if unreachable:
        how.append(f"{unreachable} of {total} unreachable")
    advice = "; ".join(ADVICE[kind] for kind in refused)
    return f"no sentinel named master {name!r}: {', '.join(how)}; {advice}"


def _said(said: str, count: int) -> str:
    """What ``count`` sentinels did: "refused authentication", "do not know master 'x'"."""
    return said if count == 1 else said.replace("does not", "do not", 1)


def _failover_too_slow(config: SentinelConfig, reachable: list[SentinelReport]) -> list[str]:
    """A failover takes down-after-milliseconds plus an election (FAILOVER_ELECTION_S): beyond
    failover_timeout, the layer gives up before the new master exists."""
    down_after_s = max((s.down_after_ms or 0) for s in reachable) / 1000
    if down_after_s + FAILOVER_ELECTION_S < config.failover_timeout_s:
        return []
    needed_s = down_after_s + FAILOVER_ELECTION_S
    return [
        f"sentinel down-after-milliseconds is {down_after_s * 1000:.0f}: a failover takes "
        f"longer than failover_timeout ({config.failover_timeout_s:g} s); lower "
        f"down-after-milliseconds or raise failover_timeout above {needed_s:g} s"
    ]


# -- cluster ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClusterNode:
    """One line of ``CLUSTER NODES``.

    Read instead of ``CLUSTER SLOTS``, which leaves out replicas that have not yet replicated
    a byte (a fresh, idle cluster would seem to have none).
    """

    id: str
    address: NodeAddress
    flags: frozenset[str]
    master_id: str
    slots: int
    first_slot: int | None  # where the write check's key goes


async def _probe_cluster(config: ClusterConfig, timeout_s: float, prefix: str) -> ProbeReport:
    view, unreachable = await _first_view(config, timeout_s)
    if view is None:
        return ProbeReport(
            "cluster", problems=(f"no startup node answered: {'; '.join(unreachable)}",)
        )
    problems, warnings, cluster = await _cluster_report(config, *view, timeout_s, prefix)
    warnings = (*(f"startup node {entry} is unreachable" for entry in unreachable), *warnings)
    return ProbeReport("cluster", problems, warnings, cluster=cluster)


async def _first_view(
    config: ClusterConfig, timeout_s: float
) -> tuple[tuple[str, list[_ClusterNode]] | None, list[str]]:
    """The view of the first listed startup node that answers, and the failures of those
    before it: all are asked at once, and the ones after it are dropped unread, as if they had
    been asked in turn."""
    asks = [
        asyncio.create_task(_cluster_view(data_kwargs(config, node, timeout_s)))
        for node in config.startup_nodes
    ]
    unreachable: list[str] = []
    try:
        for node, ask in zip(config.startup_nodes, asks, strict=True):
            try:
                return await ask, unreachable
            except PROBE_FAILURES as err:
                unreachable.append(f"{node} ({describe_error(err)})")
    finally:
        await settle_tasks(asks)
    return None, unreachable


async def _cluster_view(kwargs: dict[str, Any]) -> tuple[str, list[_ClusterNode]]:
    async with probe_client(kwargs) as client:
        state = info_field(await client.execute_command("CLUSTER", "INFO"), "cluster_state")
        nodes = [
            _cluster_node(line)
            for line in str(await client.execute_command("CLUSTER", "NODES")).splitlines()
            if line.strip()
        ]
    return state or "unknown", nodes


def _cluster_node(line: str) -> _ClusterNode:
    """``<id> <ip:port@bus[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``"""
    fields = line.split()
    host, _, port = fields[1].split("@")[0].rpartition(":")
    flags = frozenset(fields[2].split(","))
    slots = fields[8:]
    return _ClusterNode(
        fields[0], node_address(host, port), flags, fields[3], _slot_count(slots), _first(slots)
    )


def _first(ranges: list[str]) -> int | None:
    """The first slot of ``CLUSTER NODES`` ranges; None for a node without one."""
    owned = [entry for entry in ranges if not entry.startswith("[")]
    return int(owned[0].partition("-")[0]) if owned else None


def _slot_count(ranges: list[str]) -> int:
    """Slots in ``CLUSTER NODES`` ranges (``a-b`` or ``a``); ``[...]`` migration marks skipped."""
    count = 0
    for entry in ranges:
        if not entry.startswith("["):
            first, _, last = entry.partition("-")
            count += int(last or first) - int(first) + 1
    return count


async def _cluster_report(
    config: ClusterConfig, state: str, nodes: list[_ClusterNode], timeout_s: float, prefix: str
) -> tuple[tuple[str, ...], tuple[str, ...], ClusterReport]:
    """Problems, warnings and the cluster section, from one node's ``CLUSTER NODES``; the
    masters it names are asked at once, each writing a key in a slot it owns."""
    owners = [node for node in nodes if node.slots]
    covered = sum(node.slots for node in owners)
    masters = tuple(
        await all_at_once(
            _probe_node(
                data_kwargs(config, n.address, timeout_s),
                str(n.address),
                probe_key(prefix, None if n.first_slot is None else tag_for_slot(n.first_slot)),
            )
            for n in owners
        )
    )
    cluster = ClusterReport(state, covered, masters, _replica_labels(nodes))
    problems = [] if state == "ok" else [f"cluster_state is {state}"]
    if covered != _SLOTS:
        problems.append(f"only {covered} of {_SLOTS} slots are covered")
    problems += [problem for master in masters for problem in _master_problems(master)]
    failing = [node for node in nodes if node.flags & {"fail", "fail?"}]
    warnings = [
        f"node {node.address} is flagged {','.join(sorted(node.flags))}" for node in failing
    ]
    warnings += [warning for master in masters for warning in _master_warnings(master)]
    return tuple(problems), tuple(warnings), cluster


def _replica_labels(nodes: list[_ClusterNode]) -> tuple[str, ...]:
    addresses = {node.id: str(node.address) for node in nodes}
    replicas = [node for node in nodes if "slave" in node.flags]
    return tuple(
        f"{n.address} (replica of {addresses.get(n.master_id, n.master_id)})" for n in replicas
    )
