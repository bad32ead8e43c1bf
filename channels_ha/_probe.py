"""The live probe: connect to the Redis behind a configuration and report what answers.

``channels-ha check --connect`` and the Django ``status`` command are thin shells over
:func:`probe`, the health view over :func:`probe_master`. Both block, running asyncio clients
on an event loop of their own, and ask the sentinels (or the startup nodes) at once, so nodes
that hang cost a probe one wait, not one each. :func:`probe` bounds every connection and
command by ``timeout_s`` and never retries, so a probe of a dead deployment ends within a few
timeouts; the configuration's own timeouts apply when they are shorter. Its report reads as if
the nodes had been asked in turn. :func:`probe_master` asks only what a health check needs and
keeps every step within one overall deadline: a health check must not fail because one
sentinel hangs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from ._config import (
    ClusterConfig,
    NodeAddress,
    RedisConfig,
    SentinelConfig,
    SingleNodeConfig,
    split_host_port,
)
from ._probe_report import (
    ClusterReport,
    MasterReport,
    NodeReport,
    ProbeReport,
    ReplicaView,
    SentinelReport,
)
from ._redis_kwargs import client_kwargs, sentinel_kwargs
from ._server import _View, too_old
from ._tls import read_tls_files
from .exceptions import ConfigurationError

__all__ = ["MASTER_PROBE_TIMEOUT_S", "PROBE_TIMEOUT_S", "probe", "probe_master"]

#: Bound on each connection attempt and each command of a probe.
PROBE_TIMEOUT_S = 2.0
#: Bound on a whole :func:`probe_master`, every connection and command included.
MASTER_PROBE_TIMEOUT_S = 1.5
_SLOTS = 16384
_FAILED = (redis.RedisError, OSError)
T = TypeVar("T")


def probe(config: RedisConfig, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeReport:
    """Connect to every node the configuration names and report what answers.

    Blocking, like :func:`probe_master`. The sentinels (or the startup nodes, then the
    cluster's masters) are asked at once, so a probe with every sentinel frozen ends after one
    ``timeout_s``, not one per sentinel. A TLS file redis-py could not use (or a wrong
    ``ssl_password``) is the one problem, by name.
    """
    try:
        read_tls_files(config)
    except ConfigurationError as err:
        return ProbeReport(config.mode, problems=(str(err),))
    return _run(_probe(config, timeout_s))


async def _probe(config: RedisConfig, timeout_s: float) -> ProbeReport:
    if isinstance(config, SentinelConfig):
        return await _probe_sentinel(config, timeout_s)
    if isinstance(config, ClusterConfig):
        return await _probe_cluster(config, timeout_s)
    return await _probe_single(config, timeout_s)


# -- an event loop of its own ----------------------------------------------------------------


def _run(main: Coroutine[Any, Any, T]) -> T:
    """The result of ``main``, run on an event loop of its own; in a worker thread when this
    thread already runs a loop (a notebook, an async view), which then waits, as it always has
    for a blocking probe."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(main)
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(_run_here, main).result()


def _run_here(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        # Shuts the default executor down without waiting for a DNS lookup still running.
        loop.close()


async def _each(asks: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``asks``, run at once, in their order. Unlike ``gather``, none is left
    running when one fails or the caller is cancelled: each has closed its client first."""
    tasks = [asyncio.create_task(ask) for ask in asks]
    try:
        if tasks:
            await asyncio.wait(tasks)
    finally:
        await _settle(tasks)
    return [task.result() for task in tasks]


# -- clients ---------------------------------------------------------------------------------


def _bounded(kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Client arguments with both socket timeouts capped at ``timeout_s`` and no retries."""
    for key in ("socket_timeout", "socket_connect_timeout"):
        kwargs[key] = min(kwargs.get(key) or timeout_s, timeout_s)
    kwargs.pop("health_check_interval", None)
    # RESP2 works with every server version, and its replies have one shape to read.
    return {**kwargs, "retry": AsyncRetry(NoBackoff(), 0), "decode_responses": True, "protocol": 2}


def _data_kwargs(config: RedisConfig, address: NodeAddress, timeout_s: float) -> dict[str, Any]:
    kwargs = {**client_kwargs(config), "host": address.host, "port": address.port}
    return _bounded(kwargs, timeout_s)


def _single_kwargs(config: SingleNodeConfig, timeout_s: float) -> dict[str, Any]:
    if config.address is not None:
        return _data_kwargs(config, config.address, timeout_s)
    kwargs = {**client_kwargs(config), "unix_socket_path": config.unix_socket_path}
    kwargs = _bounded(kwargs, timeout_s)
    kwargs.pop("socket_keepalive", None)  # unix sockets reject it
    return kwargs


@asynccontextmanager
async def _aclient(kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    """An asyncio client returning raw replies (no redis-py parsing); closed on exit,
    cancellation included."""
    client = redis.asyncio.Redis(**kwargs)
    client.response_callbacks.clear()
    try:
        yield client
    finally:
        # To the end even if the ask is cancelled meanwhile: a pool cancelled while closing
        # cancels its connections' closing before it starts, and they stay open.
        await _finish(asyncio.ensure_future(client.aclose()))


def _error(err: BaseException) -> str:
    # redis-py's messages name the address and the failure, never the password; its asyncio
    # client gives only the number of a refused connect ("Error 111 ..."), so add the words.
    message = f"{type(err).__name__}: {err}"
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OSError) and cause.errno and cause.strerror:
        reason = os.strerror(cause.errno)
        if reason not in message:
            message = f"{message.rstrip('.')} ({reason})"
    return message


def _address(host: Any, port: Any) -> NodeAddress:
    return NodeAddress(host=str(host), port=int(port))


def _info_field(info: Any, name: str) -> str | None:
    for line in str(info).splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


# -- one data node ---------------------------------------------------------------------------


async def _probe_node(kwargs: dict[str, Any], label: str) -> NodeReport:
    """PING (timed on an open connection), ROLE and version of one node."""
    try:
        async with _aclient(kwargs) as client:
            await client.execute_command("PING")  # opens the connection: not part of the timing
            started = time.perf_counter()
            await client.execute_command("PING")
            rtt_ms = round((time.perf_counter() - started) * 1000, 3)
            role = str((await client.execute_command("ROLE"))[0])
            version = _info_field(await client.execute_command("INFO", "server"), "redis_version")
            memory = await client.execute_command("INFO", "memory")
            policy = _info_field(memory, "maxmemory_policy")
            if _info_field(memory, "maxmemory") == "0":
                policy = None  # no limit: nothing is ever evicted, whatever the policy
    except _FAILED as err:
        return NodeReport(label, reachable=False, error=_error(err))
    return NodeReport(
        label, reachable=True, role=role, version=version, rtt_ms=rtt_ms, maxmemory_policy=policy
    )


def _master_problems(node: NodeReport) -> list[str]:
    if not node.reachable:
        return [f"the master {node.address} is unreachable: {node.error}"]
    if node.role != "master":
        return [f"{node.address} is a {node.role}, not a master: writes would fail"]
    if too_old(node.version):
        return [f"{node.address} runs Redis {node.version}; channels-ha needs 7.0 or newer"]
    return []


def _master_warnings(node: NodeReport | None) -> list[str]:
    """An evicting memory policy drops messages and group memberships without an error."""
    if node is None or node.maxmemory_policy in (None, "noeviction"):
        return []
    return [
        f"{node.address} has maxmemory-policy {node.maxmemory_policy}: when memory runs out, "
        "Redis evicts messages and group memberships without an error; set noeviction"
    ]


async def _probe_single(config: SingleNodeConfig, timeout_s: float) -> ProbeReport:
    master = await _probe_node(_single_kwargs(config, timeout_s), config.node_labels()[0])
    return ProbeReport(
        "single",
        problems=tuple(_master_problems(master)),
        warnings=tuple(_master_warnings(master)),
        master=master,
    )


# -- sentinel --------------------------------------------------------------------------------


async def _probe_sentinel(config: SentinelConfig, timeout_s: float) -> ProbeReport:
    """Every sentinel at once, then the master most of them name."""
    kwargs = _bounded(sentinel_kwargs(config), timeout_s)
    sentinels = tuple(await _each(_ask_sentinel(config, node, kwargs) for node in config.sentinels))
    named = Counter(sentinel.master for sentinel in sentinels if sentinel.master is not None)
    master = None
    if named:
        label = named.most_common(1)[0][0]
        address = NodeAddress(**split_host_port(label, 0))
        master = await _probe_node(_data_kwargs(config, address, timeout_s), label)
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


FAILOVER_ELECTION_S = 5.0  # a generous bound on a Sentinel election after down-after


async def _ask_sentinel(
    config: SentinelConfig, node: NodeAddress, kwargs: dict[str, Any]
) -> SentinelReport:
    """One sentinel's view of the master: its address, state, quorum and replicas."""
    name = config.master_name
    try:
        async with _aclient({**kwargs, "host": node.host, "port": node.port}) as client:
            view = _pairs(await client.execute_command("SENTINEL", "MASTER", name))
            replicas = await client.execute_command("SENTINEL", "REPLICAS", name)
    except _FAILED as err:
        return SentinelReport(str(node), reachable=False, error=_error(err))
    return SentinelReport(
        str(node),
        reachable=True,
        master=str(_address(view["ip"], view["port"])),
        master_flags=view.get("flags"),
        quorum=int(view["quorum"]),
        down_after_ms=int(view["down-after-milliseconds"]),
        other_sentinels=int(view["num-other-sentinels"]),
        replicas=tuple(_replica(_pairs(entry)) for entry in replicas),
    )


def _pairs(reply: Any) -> dict[str, str]:
    """A flat ``[key, value, ...]`` reply (a map in RESP2) as a dict."""
    items = [str(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


def _replica(view: dict[str, str]) -> ReplicaView:
    address = str(_address(view["ip"], view["port"]))
    return ReplicaView(address, view.get("flags", "?"), view.get("master-link-status", "?"))


def _sentinel_verdict(
    config: SentinelConfig,
    sentinels: tuple[SentinelReport, ...],
    agree: bool,
    master: NodeReport | None,
) -> tuple[list[str], list[str]]:
    """Problems (the layer cannot work now) and warnings (a failover may not work)."""
    reachable = [sentinel for sentinel in sentinels if sentinel.reachable]
    if not reachable or master is None:
        return [f"no sentinel answered for master {config.master_name!r}"], []
    problems = [] if agree else ["the sentinels name different masters"]
    warnings = [
        f"sentinel {s.address} is unreachable: {s.error}" for s in sentinels if s not in reachable
    ]
    quorum = max(sentinel.quorum or 0 for sentinel in reachable)
    if len(reachable) < quorum:
        warnings.append(f"{len(reachable)} sentinels reachable, fewer than the quorum {quorum}")
    warnings += [
        f"{reachable[0].address} sees replica {r.address} with flags {r.flags}, link {r.link}"
        for r in reachable[0].replicas
        if r.flags != "slave" or r.link != "ok"
    ]
    warnings += _failover_too_slow(config, reachable)
    return problems + _master_problems(master), warnings + _master_warnings(master)


def _failover_too_slow(config: SentinelConfig, reachable: list[SentinelReport]) -> list[str]:
    """A failover takes down-after-milliseconds plus an election (a few seconds): beyond
    failover_timeout, the layer gives up before the new master exists."""
    down_after_s = max((s.down_after_ms or 0) for s in reachable) / 1000
    if down_after_s + FAILOVER_ELECTION_S <= config.failover_timeout_s:
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


async def _probe_cluster(config: ClusterConfig, timeout_s: float) -> ProbeReport:
    view, unreachable = await _first_view(config, timeout_s)
    if view is None:
        return ProbeReport(
            "cluster", problems=(f"no startup node answered: {'; '.join(unreachable)}",)
        )
    problems, warnings, cluster = await _cluster_report(config, *view, timeout_s)
    warnings = (*(f"startup node {entry} is unreachable" for entry in unreachable), *warnings)
    return ProbeReport("cluster", problems, warnings, cluster=cluster)


async def _first_view(
    config: ClusterConfig, timeout_s: float
) -> tuple[tuple[str, list[_ClusterNode]] | None, list[str]]:
    """The view of the first listed startup node that answers, and the failures of those
    before it: all are asked at once, and the ones after it are dropped unread, as if they had
    been asked in turn."""
    asks = [
        asyncio.create_task(_cluster_view(_data_kwargs(config, node, timeout_s)))
        for node in config.startup_nodes
    ]
    unreachable: list[str] = []
    try:
        for node, ask in zip(config.startup_nodes, asks, strict=True):
            try:
                return await ask, unreachable
            except _FAILED as err:
                unreachable.append(f"{node} ({_error(err)})")
    finally:
        await _settle(asks)
    return None, unreachable


async def _cluster_view(kwargs: dict[str, Any]) -> tuple[str, list[_ClusterNode]]:
    async with _aclient(kwargs) as client:
        state = _info_field(await client.execute_command("CLUSTER", "INFO"), "cluster_state")
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
    return _ClusterNode(fields[0], _address(host, port), flags, fields[3], _slot_count(fields[8:]))


def _slot_count(ranges: list[str]) -> int:
    """Slots in ``CLUSTER NODES`` ranges (``a-b`` or ``a``); ``[...]`` migration marks skipped."""
    count = 0
    for entry in ranges:
        if not entry.startswith("["):
            first, _, last = entry.partition("-")
            count += int(last or first) - int(first) + 1
    return count


async def _cluster_report(
    config: ClusterConfig, state: str, nodes: list[_ClusterNode], timeout_s: float
) -> tuple[tuple[str, ...], tuple[str, ...], ClusterReport]:
    """Problems, warnings and the cluster section, from one node's ``CLUSTER NODES``; the
    masters it names are asked at once."""
    owners = [node for node in nodes if node.slots]
    covered = sum(node.slots for node in owners)
    masters = tuple(
        await _each(
            _probe_node(_data_kwargs(config, n.address, timeout_s), str(n.address)) for n in owners
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


# -- master only (health checks) -------------------------------------------------------------


def probe_master(config: RedisConfig, timeout_s: float = MASTER_PROBE_TIMEOUT_S) -> MasterReport:
    """Whether a writable master answers ROLE and PING, all within ``timeout_s``.

    Blocking: it runs an event loop of its own (best called from a thread without one). The
    sentinels (or the cluster's startup nodes) are asked at once, so one that hangs costs
    the probe part of its time, not all of it; every connection is closed before it returns.
    """
    return _run(_master_report(config, timeout_s))


async def _master_report(config: RedisConfig, timeout_s: float) -> MasterReport:
    deadline = _now() + timeout_s
    if isinstance(config, SentinelConfig):
        return await _master_via_sentinels(config, deadline)
    if isinstance(config, ClusterConfig):
        return await _cluster_state(config, deadline)
    kwargs_for = functools.partial(_single_kwargs, config)
    return await _check_master("single", config.node_labels()[0], kwargs_for, deadline)


#: Share of the probe's time the sentinels all get to answer; then the answers in hand decide
#: (or the first to come, if none has), and the master gets the rest.
_SENTINEL_SHARE = 0.5
_OUT_OF_TIME = "the health probe ran out of time"


def _now() -> float:
    return asyncio.get_running_loop().time()


def _remaining(deadline: float) -> float:
    """Time left for the next step; the builtin TimeoutError counts as a failed step."""
    left = deadline - _now()
    if left <= 0:
        raise TimeoutError(_OUT_OF_TIME)
    return left


async def _by(deadline: float, awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable`` if it comes by ``deadline``, else TimeoutError, raised
    once ``awaitable`` has been cancelled and has ended (its connection dropped)."""
    inner = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({inner}, timeout=max(0.0, deadline - _now()))
    finally:
        inner.cancel()  # nothing when it is done
        await _finish(inner)
    if inner.cancelled():
        raise TimeoutError(_OUT_OF_TIME)
    return inner.result()


async def _finish(task: asyncio.Future[Any]) -> None:
    """Waits until ``task`` has ended, through a cancellation of the caller (raised after).

    An error ``task`` ends with is marked as read: its result is for the caller to use or not.
    """
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as err:
            cancelled = err
    if not task.cancelled():
        task.exception()
    if cancelled is not None:
        raise cancelled


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancels the tasks still running and waits until they have closed their clients."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _role_and_rtt(client: Any, deadline: float) -> tuple[str, float]:
    reply = await _by(deadline, client.execute_command("ROLE"))  # connects: not timed
    started = time.perf_counter()
    await _by(deadline, client.execute_command("PING"))
    return str(reply[0]), round((time.perf_counter() - started) * 1000, 3)


async def _check_master(
    mode: str, label: str, kwargs_for: Callable[[float], dict[str, Any]], deadline: float
) -> MasterReport:
    """ROLE and PING of the node ``kwargs_for(time left)`` connects to."""
    try:
        async with _aclient(kwargs_for(_remaining(deadline))) as client:
            role, rtt_ms = await _role_and_rtt(client, deadline)
    except _FAILED as err:
        return MasterReport(mode, ok=False, master=label, error=_error(err))
    error = None if role == "master" else f"{label} is a {role}, not a master"
    return MasterReport(mode, ok=error is None, master=label, role=role, rtt_ms=rtt_ms, error=error)


async def _master_via_sentinels(config: SentinelConfig, deadline: float) -> MasterReport:
    """Asks every sentinel at once where the master is, believes the newest configuration
    among the answers (the layer's rule), then asks that master."""
    asks = [
        asyncio.create_task(_sentinel_view(config, node, deadline)) for node in config.sentinels
    ]
    try:
        answered = await _sentinel_answers(asks, _now() + (deadline - _now()) * _SENTINEL_SHARE)
    finally:
        await _settle(asks)
    views: list[_View] = []
    errors: list[str] = []
    for node, ask in zip(config.sentinels, asks, strict=True):
        answer = ask.result() if ask in answered else f"sentinel {node}: no answer in time"
        if isinstance(answer, _View):
            views.append(answer)
        else:
            errors.append(answer)
    if not views:
        return MasterReport("sentinel", ok=False, error="; ".join(errors))
    best = max(views, key=lambda view: view.rank(views))
    address = _address(best.host, best.port)
    kwargs_for = functools.partial(_data_kwargs, config, address)
    return await _check_master("sentinel", str(address), kwargs_for, deadline)


async def _sentinel_answers(
    asks: list[asyncio.Task[_View | str]], cutoff: float
) -> set[asyncio.Task[_View | str]]:
    """The asks that ended by ``cutoff``, or later until one names a master: each ask ends by
    the probe's deadline on its own."""
    answered, waiting = await asyncio.wait(asks, timeout=max(0.0, cutoff - _now()))
    while waiting and not any(isinstance(ask.result(), _View) for ask in answered):
        more, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        answered |= more
    return answered


async def _sentinel_view(config: SentinelConfig, node: NodeAddress, deadline: float) -> _View | str:
    """The master as sentinel ``node`` sees it, with its configuration epoch; or what failed."""

    def kwargs_for(left: float) -> dict[str, Any]:
        return {**_bounded(sentinel_kwargs(config), left), "host": node.host, "port": node.port}

    name = config.master_name
    try:
        async with _aclient(kwargs_for(_remaining(deadline))) as client:
            view = _pairs(await _by(deadline, client.execute_command("SENTINEL", "MASTER", name)))
    except _FAILED as err:
        return f"sentinel {node}: {_error(err)}"
    if "ip" not in view:
        return f"sentinel {node} knows no master {name!r}"
    flags = frozenset(view.get("flags", "").split(","))
    return _View(int(view.get("config-epoch", "0")), view["ip"], int(view["port"]), flags)


async def _cluster_state(config: ClusterConfig, deadline: float) -> MasterReport:
    """Asks every startup node at once for ``cluster_state``, ROLE and PING: the first to see
    every slot served answers; failing that, the first listed node that answered."""
    asks = [
        asyncio.create_task(_node_state(config, node, deadline)) for node in config.startup_nodes
    ]
    try:
        for ask in asyncio.as_completed(asks):  # each ask ends by the deadline on its own
            report = await ask
            if isinstance(report, MasterReport) and report.ok:
                return report
    finally:
        await _settle(asks)
    answers = [ask.result() for ask in asks]
    reports = [answer for answer in answers if isinstance(answer, MasterReport)]
    if reports:
        return reports[0]
    return MasterReport("cluster", ok=False, error="; ".join(map(str, answers)))


async def _node_state(
    config: ClusterConfig, node: NodeAddress, deadline: float
) -> MasterReport | str:
    """One startup node's ``cluster_state``, ROLE and PING; or what failed."""
    try:
        async with _aclient(_data_kwargs(config, node, _remaining(deadline))) as client:
            info = await _by(deadline, client.execute_command("CLUSTER", "INFO"))
            role, rtt_ms = await _role_and_rtt(client, deadline)
    except _FAILED as err:
        return f"{node}: {_error(err)}"
    state = _info_field(info, "cluster_state") or "unknown"
    error = None if state == "ok" else f"cluster_state is {state} on {node}"
    return MasterReport(
        "cluster", error is None, str(node), role, rtt_ms, cluster_state=state, error=error
    )
