"""The recovery of a normal-channel pop whose reply was lost, when Redis refuses, and at close.

After a lost reply the normal-channel reader connects again and recovers the batch, nobody
waiting or not (see tests/test_normal_reader.py). Here Redis refuses the new connection or
the recovery (an ACL user disabled, or without EVALSHA), a pop on another channel is refused,
or the masters of several shards freeze: none of these may make the reader loop, hold a
give-back, or make close() wait once per shard.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from typing import TypeVar

import pytest
import redis

from channels_ha import RedisChannelLayer
from channels_ha._normal_reader import NormalReader
from channels_ha.exceptions import RedisCommandError
from channels_ha.sandbox import StandaloneTopology, Topology, TopologyFactory

from .test_normal_reader import (
    TIMEOUT_S,
    CuttingProxy,
    back_in_list,
    behind,
    blocked_in_redis,
    message,
    nothing_more,
    reader_connection,
)
from .test_receive_edges import deliver_then

pytestmark = pytest.mark.redis_topologies("standalone")

PROMPT_S = 0.5  # a receiver waiting hears of a refusal within this
QUIET_S = 0.5  # how long the reader is watched for connections made with nobody waiting
HANDSHAKE_DELAY_S = 0.3  # how late a new connection's handshake reaches Redis
STALL_FAILOVER_S = 4.0  # a give-back held by a refused pop waited this long
CLOSE_FAILOVER_S = 2.0  # close() waits for the recovery this long, whatever the shards


@contextmanager
def acl_user(admin: redis.Redis) -> Iterator[tuple[str, str]]:
    """A user allowed everything, as (name, password), deleted afterwards."""
    name, password = f"reader-{uuid.uuid4().hex[:8]}", secrets.token_hex(8)
    admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
    try:
        yield name, password
    finally:
        admin.execute_command("ACL", "DELUSER", name)


def as_user(url: str, user: tuple[str, str]) -> str:
    return url.replace("redis://", f"redis://{user[0]}:{user[1]}@", 1)


def connections_received(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


async def refused_in_acl_log(admin: redis.Redis, user: str) -> None:
    """Once Redis refused a command of ``user`` (NOPERM)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not any(entry["username"] == user for entry in admin.acl_log()):
        assert time.monotonic() < deadline, f"nothing of {user} was refused"
        await asyncio.sleep(0.01)  # nothing to await: the refusal is in Redis


async def refusal_read(layer: RedisChannelLayer) -> None:
    """Once the normal reader has read Redis's refusal (in the ACL log before its reply has
    come back through the proxy: a receiver started in between met the refusal)."""
    reader = layer._session()._readers[(0, False)]
    assert isinstance(reader, NormalReader)
    deadline = time.monotonic() + TIMEOUT_S
    while not reader._idle._refused:
        assert time.monotonic() < deadline, "the reader never read the refusal"
        await asyncio.sleep(0.01)  # nothing to await: the reader pauses with no callback


async def a_pop_cut(
    layer: RedisChannelLayer,
    other: RedisChannelLayer,
    proxy: CuttingProxy,
    admin: redis.Redis,
    rule: list[str],
    at_cut: bool,
) -> asyncio.Task[dict[str, object]]:
    """A receiver of ``layer`` waits on "jobs"; ``other`` sends message 1, whose pop's reply
    the proxy cuts. ``rule`` (ACL SETUSER arguments for the layer's user) is applied before
    the send, or ``at_cut``, before the reader connects again (the proxy must hold up new
    connections). The receiver's task, still waiting."""
    await layer.send("warm-up", {"type": "warm-up"})  # the layer's command link connects now
    blocked = int(admin.info("clients")["blocked_clients"])
    receiving = asyncio.create_task(layer.receive("jobs"))
    await blocked_in_redis(admin, blocked)
    if not at_cut:
        admin.execute_command("ACL", "SETUSER", *rule)
    await other.send("jobs", message(1))
    await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
    if at_cut:
        admin.execute_command("ACL", "SETUSER", *rule)
    return receiving


@pytest.mark.serial  # times itself within a second or so
async def test_a_refused_connection_after_a_lost_reply_is_not_tried_again_in_a_loop(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A receiver waits; its pop's reply is lost, and Redis refuses the reader's next
    connection (its user disabled, as a password rotated): the receiver gets the refusal at
    once, and the reader, with nobody waiting, does not connect again in a loop (seen:
    ~700 connections in 0.5 s until the in-flight list expired, nothing logged); once
    allowed again, the next receiver's pop recovers the batch."""
    proxy = CuttingProxy(redis_topology)
    with acl_user(master_client) as user:
        async with proxy.running() as url:
            first = RedisChannelLayer(hosts=[as_user(url, user)], prefix="refused-connection")
            other = RedisChannelLayer(hosts=[redis_topology.url], prefix="refused-connection")
            try:
                off = [user[0], "off"]  # its connections stay; a new one is refused
                receiving = await a_pop_cut(first, other, proxy, master_client, off, False)
                cut_at = time.monotonic()
                with pytest.raises(RedisCommandError, match="refused the credentials"):
                    await asyncio.wait_for(receiving, TIMEOUT_S)
                assert time.monotonic() - cut_at < PROMPT_S
                before = connections_received(master_client)
                await asyncio.sleep(QUIET_S)  # what is measured: connections meanwhile
                assert connections_received(master_client) - before <= 1
                master_client.execute_command("ACL", "SETUSER", user[0], "on")
                assert (await asyncio.wait_for(first.receive("jobs"), TIMEOUT_S))["n"] == 1
                await nothing_more(first, "jobs")
            finally:
                await first.close()
                await other.close()


async def test_a_give_back_does_not_wait_for_a_refused_pop_on_another_channel(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """Message 1 is popped for a receiver on "good" that gave up meanwhile, while the next
    pop, for a receiver on "bad" (not a list), is on its way: 1 goes back to its list
    without waiting for that pop, which Redis refuses (WRONGTYPE) (seen: held for
    failover_timeout, waiting for a recovery that nothing owed)."""
    prefix = f"refused-other-{uuid.uuid4().hex[:8]}"
    proxy = CuttingProxy(redis_topology, cuts=0, delay=(b"EVALSHA", 0.5))
    async with proxy.running() as url:
        first = RedisChannelLayer(hosts=[url], prefix=prefix, failover_timeout=STALL_FAILOVER_S)
        other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
        try:
            master_client.set(f"{prefix}:c:{{normal}}:bad", "not a list")
            await other.send("good", message(1))
            good = asyncio.create_task(first.receive("good"))
            bad = asyncio.create_task(first.receive("bad"))
            await asyncio.wait_for(proxy.delayed.wait(), TIMEOUT_S)  # the pop taking 1
            good.cancel()
            started = time.monotonic()
            with pytest.raises(RedisCommandError, match="WRONGTYPE"):
                await asyncio.wait_for(bad, TIMEOUT_S)
            await back_in_list(master_client, f"{prefix}:c:{{normal}}:good", 1)
            assert time.monotonic() - started < STALL_FAILOVER_S / 2
        finally:
            await first.close()
            await other.close()


@asynccontextmanager
async def a_refused_recovery(
    topology: Topology, admin: redis.Redis, cuts: int = 1
) -> AsyncIterator[tuple[RedisChannelLayer, RedisChannelLayer, CuttingProxy, str]]:
    """Two processes' layers; the first's receiver waited on "jobs" and gave up when the
    reply of the pop taking message 1 was cut; the reader's recovery, with nobody waiting,
    was refused (its user lost EVALSHA before it connected again). Yields the layers, the
    proxy (``cuts`` replies in all) and the user's name; both layers closed afterwards."""
    proxy = CuttingProxy(topology, cuts=cuts, delay=(b"SETNAME", HANDSHAKE_DELAY_S))
    prefix = f"refused-recovery-{uuid.uuid4().hex[:8]}"
    with acl_user(admin) as user:
        async with proxy.running() as url:
            first = RedisChannelLayer(hosts=[as_user(url, user)], prefix=prefix)
            other = RedisChannelLayer(hosts=[topology.url], prefix=prefix)
            try:
                no_scripts = [user[0], "-evalsha"]
                receiving = await a_pop_cut(first, other, proxy, admin, no_scripts, True)
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)
                await refused_in_acl_log(admin, user[0])
                await refusal_read(first)
                yield first, other, proxy, user[0]
            finally:
                await first.close()
                await other.close()


async def test_a_lost_reply_after_a_refused_recovery_is_recovered_with_nobody_waiting(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """After a refused recovery, a receiver's pop recovers the batch, loses that reply too,
    and the receiver gives up: the reader recovers it again with nobody waiting, and
    another process gets it (seen: the refusal had stopped recovery with nobody waiting for
    good, and the batch stayed in the in-flight list)."""
    async with a_refused_recovery(redis_topology, master_client, cuts=2) as refused:
        first, other, proxy, user = refused
        master_client.execute_command("ACL", "SETUSER", user, "+evalsha")
        proxy.cut_seen.clear()
        receiving = asyncio.create_task(first.receive("jobs"))
        await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        assert (await asyncio.wait_for(other.receive("jobs"), TIMEOUT_S))["n"] == 1
        await nothing_more(other, "jobs")
        assert proxy.cut == 2


async def test_a_batch_lost_at_close_is_logged_with_the_refusal(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A close() whose recovery Redis refuses logs in_flight_lost with that refusal
    (NOPERM), not "no answer" (seen: "no answer to the calls made at close")."""
    async with a_refused_recovery(redis_topology, master_client) as (first, _, _, _):
        with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
            await first.close()
    lost = [r for r in caplog.records if getattr(r, "event", "") == "in_flight_lost"]
    assert len(lost) == 1
    assert "NOPERM" in lost[0].getMessage()


class FreezingProxy(CuttingProxy):
    """Freezes its master (SIGSTOP) as it cuts the reply."""

    def __init__(self, topology: StandaloneTopology) -> None:
        super().__init__(topology)
        self.node = topology.node

    def _due(self) -> bool:
        due = super()._due()
        if due:
            self.node.pause()
        return due


def standalone(factory: TopologyFactory) -> StandaloneTopology:
    topology = factory("standalone")
    assert isinstance(topology, StandaloneTopology)
    return topology


async def test_close_recovers_on_every_shard_at_once(
    redis_sandbox_factory: TopologyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two shards' masters freeze as each cuts a pop's reply: close() waits failover_timeout
    for the recoveries once, not once per shard (seen: 4.4 s with failover_timeout=2), and
    logs each batch lost with what the reader met last."""
    shards = [standalone(redis_sandbox_factory) for _ in range(2)]
    proxies = [FreezingProxy(topology) for topology in shards]
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(proxy.running()) for proxy in proxies]
        options = {"prefix": "close-shards", "failover_timeout": CLOSE_FAILOVER_S}
        first = RedisChannelLayer(hosts=[f"{url}?socket_timeout=1" for url in urls], **options)
        other = RedisChannelLayer(hosts=[topology.url for topology in shards], **options)
        stack.push_async_callback(other.close)
        stack.push_async_callback(first.close)
        for topology in shards:
            stack.callback(topology.node.resume)
        for index, (topology, proxy) in enumerate(zip(shards, proxies, strict=True)):
            channel = next(c for c in map(str, range(100)) if first._core.shard_index(c) == index)
            with topology.node.client() as admin:
                blocked = int(admin.info("clients")["blocked_clients"])
                receiving = asyncio.create_task(first.receive(channel))
                await blocked_in_redis(admin, blocked)
            await other.send(channel, message(index))
            await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
            await first.close()
        assert time.monotonic() - started < CLOSE_FAILOVER_S + 1.0
    lost = [r for r in caplog.records if getattr(r, "event", "") == "in_flight_lost"]
    assert len(lost) == 2
    assert all("failover_timeout" in r.getMessage() for r in lost)
    assert all("last error: " in r.getMessage() for r in lost)


class GoneProxy(CuttingProxy):
    """Cuts a pop's reply and calls ``on_cut`` in that step, then turns every new
    connection away: the master is gone."""

    def __init__(self, topology: Topology, on_cut: Callable[[], object]) -> None:
        super().__init__(topology)
        self._on_cut = on_cut

    def _due(self) -> bool:
        due = super()._due()
        if due:
            self.turn_away = True
            self._on_cut()
        return due


class EventSeen(logging.Handler):
    """Sets ``seen`` once ``times`` records of ``event`` are logged."""

    def __init__(self, event: str, times: int = 1) -> None:
        super().__init__()
        self.event, self.seen = event, asyncio.Event()
        self._left = times

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", "") == self.event:
            self._left -= 1
            if self._left <= 0:
                self.seen.set()


GONE_FAILOVER_S = 2.0
GONE_TTL_S = 4.0  # the in-flight list's life: expiry (at least failover_timeout)
GONE_QUIET_S = 1.0  # watched after the list expired


async def test_with_the_master_gone_the_recovery_backs_off_and_ends_with_the_list(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver's pop loses its reply, the receiver gives up at once, and the master is
    gone (its proxy turns every connection away): the reader tries again less and less
    often, says so once, and once the in-flight list has expired, logs the batch lost and
    stops; close() then has nothing to wait for (seen: a connection every 0.5 s and gave_up
    every failover_timeout until the list expired, nothing said of the batch then, and a
    close() that waited failover_timeout for a master)."""
    receiving: list[asyncio.Task[dict[str, object]]] = []

    def give_up() -> None:  # in the cut's step: the reader finds nobody waiting
        receiving[0].cancel()

    proxy = GoneProxy(redis_topology, on_cut=give_up)
    prefix = f"gone-{uuid.uuid4().hex[:8]}"
    lost = EventSeen("in_flight_lost")
    logging.getLogger("channels_ha").addHandler(lost)
    async with proxy.running() as url:
        options = {"prefix": prefix, "failover_timeout": GONE_FAILOVER_S, "expiry": GONE_TTL_S}
        first = RedisChannelLayer(hosts=[url], **options)
        other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
        try:
            with caplog.at_level(logging.INFO, logger="channels_ha"):
                blocked = int(master_client.info("clients")["blocked_clients"])
                receiving.append(asyncio.create_task(first.receive("jobs")))
                await blocked_in_redis(master_client, blocked)
                await other.send("jobs", message(1))
                await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S)
                cut_at, cut_wall = time.monotonic(), time.time()
                await asyncio.gather(*receiving, return_exceptions=True)
                with suppress(asyncio.TimeoutError):  # a batch not said lost is reported below
                    await asyncio.wait_for(lost.seen.wait(), GONE_TTL_S + GONE_FAILOVER_S)
                await asyncio.sleep(GONE_QUIET_S)  # what is measured: connections meanwhile
                events = [getattr(r, "event", "") for r in caplog.records if r.created > cut_wall]
                closing = time.monotonic()
                await first.close()
                closed_in = time.monotonic() - closing
        finally:
            logging.getLogger("channels_ha").removeHandler(lost)
            await first.close()
            await other.close()
    attempts = [at - cut_at for at in proxy.accepted_at if at > cut_at]
    figures = {
        "gave_up": events.count("gave_up"),
        "recovery_waiting": events.count("recovery_waiting"),
        "in_flight_lost": events.count("in_flight_lost"),
        "connections": len(attempts),
        "connections after the list expired": sum(t > GONE_TTL_S + 0.5 for t in attempts),
        "close() s": round(closed_in, 1),
    }
    assert figures["gave_up"] == 0, figures
    assert figures["recovery_waiting"] == 1, figures
    assert figures["in_flight_lost"] == 1, figures
    assert figures["connections"] <= 5, figures  # at 0, 0.5, 1.5 and 3.5 s
    assert figures["connections after the list expired"] == 0, figures
    assert closed_in < GONE_FAILOVER_S / 2, figures


RECUT_DELAY_S = 2.0  # how late each pop or recovery reaches Redis: the second cut comes then


class RecuttingProxy(CuttingProxy):
    """Holds each EVALSHA back (``RECUT_DELAY_S``); cuts the reply of a pop, calling
    ``on_cut`` in that step, then that of the recovery that follows, and turns every new
    connection away from then on, until ``turn_away`` is set False again."""

    def __init__(self, topology: Topology, on_cut: Callable[[], object]) -> None:
        super().__init__(topology, cuts=2, delay=(b"EVALSHA", RECUT_DELAY_S))
        self._on_cut = on_cut

    def _due(self) -> bool:
        due = super()._due()
        if due and self.cut == 0:
            self._on_cut()
        elif due:
            self.turn_away = True
        return due


ProxyT = TypeVar("ProxyT", bound=CuttingProxy)


@asynccontextmanager
async def given_up_at_a_cut(
    make_proxy: Callable[[Topology, Callable[[], object]], ProxyT],
    topology: Topology,
    admin: redis.Redis,
    name: str,
    options: dict[str, float] | None = None,
) -> AsyncIterator[tuple[ProxyT, RedisChannelLayer]]:
    """A layer behind ``make_proxy`` (``options``, else failover_timeout GONE_FAILOVER_S
    and expiry GONE_TTL_S) whose receiver on "jobs" gave up when the proxy cut the reply of
    the pop taking the message another process sent: yields the proxy, the cut just made,
    and the layer; layers closed after."""
    receiving: list[asyncio.Task[dict[str, object]]] = []

    def give_up() -> None:  # in the cut's step: the reader finds nobody waiting
        receiving[0].cancel()

    proxy = make_proxy(topology, give_up)
    if options is None:
        options = {"failover_timeout": GONE_FAILOVER_S, "expiry": GONE_TTL_S}
    async with behind(proxy, topology, name, **options) as (first, other):
        blocked = int(admin.info("clients")["blocked_clients"])
        receiving.append(asyncio.create_task(first.receive("jobs")))
        await blocked_in_redis(admin, blocked)
        await other.send("jobs", message(1))
        await asyncio.wait_for(proxy.cut_seen.wait(), TIMEOUT_S + RECUT_DELAY_S)
        await asyncio.gather(*receiving, return_exceptions=True)
        yield proxy, first


async def test_a_lost_recovery_reply_does_not_outlive_the_in_flight_list(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver's pop loses its reply and the receiver gives up; the recovery made with
    nobody waiting loses its reply too, 2 s later, and the master is gone until just after
    the in-flight list expired (4 s after the pop). A recovery does not extend the list: the
    batch is written off when it expires, not 2 s later (seen: the reader took the lost
    recovery for a new pop, connected again after the list had gone, recovered nothing and
    said nothing: the batch lost, unlogged)."""
    with caplog.at_level(logging.INFO, logger="channels_ha"):
        async with given_up_at_a_cut(RecuttingProxy, redis_topology, master_client, "recut") as (
            proxy,
            _,
        ):
            cut_at, cut_wall = time.monotonic(), time.time()
            await asyncio.sleep(GONE_TTL_S + 0.5)  # the list expired 0.5 s ago
            proxy.turn_away = False  # the master is back
            await asyncio.sleep(2 * RECUT_DELAY_S)  # what is measured: the reader then
            logged = [r for r in caplog.records if r.created > cut_wall]
    lost = [r.created - cut_wall for r in logged if getattr(r, "event", "") == "in_flight_lost"]
    attempts = [at - cut_at for at in proxy.accepted_at if at > cut_at]
    figures = {
        "cuts": proxy.cut,
        "in_flight_lost at s": [round(t, 1) for t in lost],
        "connections after the list expired": sum(t > GONE_TTL_S + 0.2 for t in attempts),
    }
    assert figures["cuts"] == 2, figures
    assert len(lost) == 1, figures
    assert lost[0] < GONE_TTL_S + 0.5, figures  # when the list expired, not 2 s later
    assert figures["connections after the list expired"] == 0, figures


class EveryReplyCutProxy(CuttingProxy):
    """Cuts every reply that carries a message (a pop's, then each recovery's, as a client
    output buffer limit below the batch's size would), calling ``on_cut`` at the first."""

    def __init__(self, topology: Topology, on_cut: Callable[[], object]) -> None:
        super().__init__(topology, cuts=1_000_000)
        self._on_cut = on_cut

    def _due(self) -> bool:
        due = super()._due()
        if due and self.cut == 0:
            self._on_cut()
        return due


CUT_WATCHED_S = 2.0  # how long the reader is watched after the first cut


async def test_recovery_replies_cut_each_time_are_not_retried_in_a_loop(
    redis_topology: Topology, master_client: redis.Redis
) -> None:
    """A receiver's pop loses its reply and the receiver gives up; every recovery's reply is
    lost too, though the master answers: with nobody waiting, the reader tries again less
    and less often, as when no master answers (seen: a connection and a recovery after
    another, hundreds a second, until the list expired)."""
    async with given_up_at_a_cut(EveryReplyCutProxy, redis_topology, master_client, "cut-each") as (
        proxy,
        _,
    ):
        cut_at = time.monotonic()
        await asyncio.sleep(CUT_WATCHED_S)  # what is measured: connections meanwhile
        watched = [at - cut_at for at in proxy.accepted_at if 0 < at - cut_at < CUT_WATCHED_S]
    assert len(watched) <= 4, f"{len(watched)} connections in {CUT_WATCHED_S:g} s"  # 0, 0.5, 1.5


GIVE_BACK_FAILOVER_S = 3.0  # a give-back waits this long for the recovery
MASTER_BACK_S = 1.8  # the master answers again this long after the cut


class AwayAfterCutProxy(CuttingProxy):
    """Cuts the second reply that carries a message, then turns every new connection away
    for ``MASTER_BACK_S``: a master restarting."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology, every=2)

    def _due(self) -> bool:
        due = super()._due()
        if due:
            self.turn_away = True
            asyncio.get_running_loop().call_later(MASTER_BACK_S, setattr, self, "turn_away", False)
        return due


async def test_a_give_back_waiting_for_a_recovery_is_not_overtaken_by_its_pace(
    redis_topology: Topology, master_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two receivers wait; message 0 is handed to the first, the pop of 1 for the second
    loses its reply, both give up, and the master is away for 1.8 s: the give-back of 0
    waits for the recovery of 1, which the reader makes as soon as the master answers, as
    for a receiver, not at its idle pace, so both go back in order (seen: the idle recovery
    came 3.5 s after the cut, past the give-back's failover_timeout of 3 s, and 1 went back
    in front of 0)."""
    prefix = f"give-back-pace-{uuid.uuid4().hex[:8]}"
    proxy = AwayAfterCutProxy(redis_topology)
    async with proxy.running() as url:
        first = RedisChannelLayer(hosts=[url], prefix=prefix, failover_timeout=GIVE_BACK_FAILOVER_S)
        other = RedisChannelLayer(hosts=[redis_topology.url], prefix=prefix)
        try:
            for number in range(2):
                await other.send("jobs", message(number))
            receivers: list[asyncio.Task[dict[str, object]]] = []
            deliver_then(first, monkeypatch, lambda: [task.cancel() for task in receivers])
            receivers += [asyncio.create_task(first.receive("jobs")) for _ in range(2)]
            await asyncio.gather(*receivers, return_exceptions=True)
            await back_in_list(master_client, f"{prefix}:c:{{normal}}:jobs", 2)
            received = [
                (await asyncio.wait_for(other.receive("jobs"), TIMEOUT_S))["n"] for _ in range(2)
            ]
            await nothing_more(other, "jobs")
        finally:
            await first.close()
            await other.close()
    assert proxy.cut == 1
    assert received == [0, 1]


async def test_a_batch_lost_at_close_names_the_lost_reply(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Every reply carrying the batch is cut, the receiver gave up at the first, and close()
    makes its calls: in_flight_lost names the lost reply as the last error (seen: "the last:
    None", a lost reply recorded no error)."""
    async with given_up_at_a_cut(
        EveryReplyCutProxy, redis_topology, master_client, "lost-named", options={}
    ) as (_, first):
        with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
            await first.close()
    lost = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "in_flight_lost"]
    assert len(lost) == 1, lost
    assert "the last: connection" in lost[0], lost


class HeldUpProxy(CuttingProxy):
    """Holds up each new connection's handshake (``HANDSHAKE_DELAY_S``); cuts the replies
    that carry a message while ``cutting``."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology, cuts=0, delay=(b"SETNAME", HANDSHAKE_DELAY_S))
        self.cutting = False

    def _due(self) -> bool:
        return self.cutting


async def fresh_at_close(
    topology: Topology,
    admin: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    at_close: Callable[[HeldUpProxy, str], object],
) -> list[str]:
    """Message 1 is received (it stays in the in-flight list, handed over); the reader's
    connection is dropped, and a receiver makes it connect again, giving up meanwhile: the
    reader is on a new connection, owing nothing. ``at_close(proxy, user)`` runs, then
    close(): the in_flight_lost messages logged."""
    proxy = HeldUpProxy(topology)
    prefix = f"fresh-close-{uuid.uuid4().hex[:8]}"
    with acl_user(admin) as user:
        async with proxy.running() as url:
            first = RedisChannelLayer(hosts=[as_user(url, user)], prefix=prefix)
            try:
                await first.send("jobs", message(1))
                assert (await asyncio.wait_for(first.receive("jobs"), TIMEOUT_S))["n"] == 1
                reader = first._session()._readers[(0, False)]
                killed = reader_connection(first)
                reader.drop_connection("under test")  # (gone before the next receive())
                proxy.delayed.clear()
                receiving = asyncio.create_task(first.receive("jobs"))
                await asyncio.wait_for(proxy.delayed.wait(), TIMEOUT_S)  # connecting again
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)
                deadline = time.monotonic() + TIMEOUT_S
                while reader.connected_to is None or reader.connected_to.client_id == killed:
                    assert time.monotonic() < deadline, "the reader never connected again"
                    await asyncio.sleep(0.01)  # nothing to await: the reader's own task
                at_close(proxy, user[0])
                with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
                    await first.close()
            finally:
                await first.close()
    return [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "in_flight_lost"]


async def test_a_refused_first_recovery_at_close_loses_nothing(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """On a new connection that owes nothing, Redis refuses the reader's calls at close
    (NOPERM): nothing was lost, nothing is said lost (seen: in_flight_lost, "4 calls made
    at close failed")."""

    def no_scripts(proxy: HeldUpProxy, user: str) -> None:
        master_client.execute_command("ACL", "SETUSER", user, "-evalsha")

    lost = await fresh_at_close(redis_topology, master_client, caplog, no_scripts)
    assert lost == []


async def test_a_cut_first_recovery_at_close_loses_nothing(
    redis_topology: Topology, master_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """On a new connection that owes nothing, the reply to the reader's recovery at close
    is cut (it carries the batch handed over already): nothing was lost, nothing is said
    lost (seen: in_flight_lost, "4 calls made at close failed")."""

    def cut(proxy: HeldUpProxy, user: str) -> None:
        proxy.cutting = True

    lost = await fresh_at_close(redis_topology, master_client, caplog, cut)
    assert lost == []
