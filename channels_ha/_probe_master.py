"""The health view's probe: is there a writable master, answering in time?

It asks only what a health check needs and keeps every step within one overall deadline: the
master's ROLE, a PING, and a write that writes nothing but is refused as sends are (see
``_probe_write``: a master out of memory answers ROLE and PING all the same). The
sentinels (or the startup nodes) are asked at once, and the master is picked by the layer's
own rule (newest configuration epoch): a health check must not fail, taking every pod out of
its Service, because one sentinel hangs while the channel layer keeps working.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._config import ClusterConfig, NodeAddress, RedisConfig, SentinelConfig
from ._constants import DEFAULT_PREFIX
from ._probe_io import (
    PROBE_FAILURES,
    T,
    bounded_kwargs,
    data_kwargs,
    describe_error,
    finish,
    node_address,
    probe_client,
    reply_pairs,
    run_blocking,
    settle_tasks,
    single_kwargs,
)
from ._probe_report import MasterReport
from ._probe_write import WriteCheck, check_write, probe_key, write_command
from ._redis_kwargs import sentinel_kwargs
from ._sentinel_refusals import (
    SentinelRefusal,
    configuration_refused,
    redis_py_refusal,
    refusal_message,
    refusal_text,
)
from ._server import _View, info_field

__all__ = ["MASTER_PROBE_TIMEOUT_S", "probe_master"]

#: Bound on a whole :func:`probe_master`, every connection and command included.
MASTER_PROBE_TIMEOUT_S = 1.5


def probe_master(
    config: RedisConfig, timeout_s: float = MASTER_PROBE_TIMEOUT_S, prefix: str = DEFAULT_PREFIX
) -> MasterReport:
    """Whether a master answers ROLE and PING and takes a write (under the layer's key
    ``prefix``), all within ``timeout_s``.

    Blocking: it runs an event loop of its own (best called from a thread without one). The
    sentinels (or the cluster's startup nodes) are asked at once, so one that hangs costs
    the probe part of its time, not all of it; every connection is closed before it returns.
    On Cluster the write is not tried: the probe asks one node, not every master.
    """
    return run_blocking(_master_report(config, timeout_s, probe_key(prefix)))


async def _master_report(config: RedisConfig, timeout_s: float, key: str) -> MasterReport:
    deadline = _now() + timeout_s
    if isinstance(config, SentinelConfig):
        return await _master_via_sentinels(config, deadline, key)
    if isinstance(config, ClusterConfig):
        return await _cluster_state(config, deadline)
    kwargs_for = functools.partial(single_kwargs, config)
    return await _check_master("single", config.node_labels()[0], kwargs_for, deadline, key)


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
        await finish(inner)
    if inner.cancelled():
        raise TimeoutError(_OUT_OF_TIME)
    return inner.result()


async def _role_and_rtt(client: Any, deadline: float) -> tuple[str, float]:
    reply = await _by(deadline, client.execute_command("ROLE"))  # connects: not timed
    started = time.perf_counter()
    await _by(deadline, client.execute_command("PING"))
    return str(reply[0]), round((time.perf_counter() - started) * 1000, 3)


async def _check_master(
    mode: str,
    label: str,
    kwargs_for: Callable[[float], dict[str, Any]],
    deadline: float,
    key: str,
) -> MasterReport:
    """ROLE, PING and, on a master, the write of ``key``, on the node ``kwargs_for(time
    left)`` connects to."""
    write = WriteCheck(None)
    try:
        async with probe_client(kwargs_for(_remaining(deadline))) as client:
            role, rtt_ms = await _role_and_rtt(client, deadline)
            if role == "master":
                write = await check_write(
                    _by(deadline, client.execute_command(*write_command(key)))
                )
    except PROBE_FAILURES as err:
        return MasterReport(mode, ok=False, master=label, error=describe_error(err))
    error = None
    if role != "master":
        error = f"{label} is a {role}, not a master"
    elif write.writable is False:
        error = f"{label} refuses writes: {write.detail}"
    return MasterReport(
        mode, error is None, label, role, rtt_ms, writable=write.writable, error=error
    )


async def _master_via_sentinels(config: SentinelConfig, deadline: float, key: str) -> MasterReport:
    """Asks every sentinel at once where the master is, believes the newest configuration
    among the answers (the layer's rule), then asks that master."""
    asks = [
        asyncio.create_task(_sentinel_view(config, node, deadline)) for node in config.sentinels
    ]
    try:
        answered = await _sentinel_answers(asks, _now() + (deadline - _now()) * _SENTINEL_SHARE)
    finally:
        await settle_tasks(asks)
    views: list[_View] = []
    refusals: list[SentinelRefusal] = []
    errors: list[str] = []
    for node, ask in zip(config.sentinels, asks, strict=True):
        answer = ask.result() if ask in answered else f"sentinel {node}: no answer in time"
        if isinstance(answer, _View):
            views.append(answer)
        elif isinstance(answer, SentinelRefusal):
            refusals.append(answer)
            refused = refusal_text(answer, config.master_name)
            errors.append(f"sentinel {node} is reachable but {refused}")
        else:
            errors.append(answer)
    if not views:
        if configuration_refused(refusals, len(config.sentinels)):  # what the layer raises
            errors = [refusal_message(refusals, len(config.sentinels), config.master_name)]
        return MasterReport("sentinel", ok=False, error="; ".join(errors))
    best = max(views, key=lambda view: view.rank(views))
    address = node_address(best.host, best.port)
    kwargs_for = functools.partial(data_kwargs, config, address)
    return await _check_master("sentinel", str(address), kwargs_for, deadline, key)


async def _sentinel_answers(
    asks: list[asyncio.Task[_View | SentinelRefusal | str]], cutoff: float
) -> set[asyncio.Task[_View | SentinelRefusal | str]]:
    """The asks that ended by ``cutoff``, or later until one names a master: each ask ends by
    the probe's deadline on its own."""
    answered, waiting = await asyncio.wait(asks, timeout=max(0.0, cutoff - _now()))
    while waiting and not any(isinstance(ask.result(), _View) for ask in answered):
        more, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        answered |= more
    return answered


async def _sentinel_view(
    config: SentinelConfig, node: NodeAddress, deadline: float
) -> _View | SentinelRefusal | str:
    """The master as sentinel ``node`` sees it, with its configuration epoch; or what of the
    configuration it refused; or what failed."""

    def kwargs_for(left: float) -> dict[str, Any]:
        return {
            **bounded_kwargs(sentinel_kwargs(config), left),
            "host": node.host,
            "port": node.port,
        }

    name = config.master_name
    try:
        async with probe_client(kwargs_for(_remaining(deadline))) as client:
            view = reply_pairs(
                await _by(deadline, client.execute_command("SENTINEL", "MASTER", name))
            )
    except PROBE_FAILURES as err:
        refusal = redis_py_refusal(str(node), err)
        return refusal or f"sentinel {node}: {describe_error(err)}"
    if "ip" not in view:
        return SentinelRefusal(str(node), "master")
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
        await settle_tasks(asks)
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
        async with probe_client(data_kwargs(config, node, _remaining(deadline))) as client:
            info = await _by(deadline, client.execute_command("CLUSTER", "INFO"))
            role, rtt_ms = await _role_and_rtt(client, deadline)
    except PROBE_FAILURES as err:
        return f"{node}: {describe_error(err)}"
    state = info_field(info, "cluster_state") or "unknown"
    error = None if state == "ok" else f"cluster_state is {state} on {node}"
    return MasterReport(
        "cluster", error is None, str(node), role, rtt_ms, cluster_state=state, error=error
    )
