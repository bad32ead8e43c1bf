"""A frozen or black-holed sentinel (one in the pod of a master whose node failed, as the
Bitnami chart places them) costs a connection at most a short window, not its timeout.

A stopped process still accepts connections and answers nothing: finding the master waited
for every sentinel (socket_connect_timeout, 2 s), and the connection, having taken over
0.5 s, asked the sentinels again to check the master had not moved meanwhile (2 s more). A
fresh layer's first send took 4.0 s with 1 of 3 sentinels frozen (0.01 s with all up), and
a send after a master's kill 5.1 s after the sentinels named the new master (0.00 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from channels_ha import RedisChannelLayer
from channels_ha._answer_window import answers_in_window
from channels_ha._constants import SENTINEL_WATCH_DELAY_S
from channels_ha._server import SentinelLocator
from channels_ha._shard import ShardConnections
from channels_ha.sandbox import SentinelTopology, TopologyFactory

from .conftest import LayerFactory

# Its assertions time things within a second or so: run alone (see scripts/test).
pytestmark = [pytest.mark.slow, pytest.mark.serial]

CONNECT_TIMEOUT_S = 2.0  # the default socket_connect_timeout, a frozen sentinel's cost
# Well under one such timeout: the answer window and a connection, on a busy machine.
NOT_HELD_S = CONNECT_TIMEOUT_S / 2
RECEIVE_S = 10.0


def _sentinel(factory: TopologyFactory) -> SentinelTopology:
    topology = factory("sentinel")
    assert isinstance(topology, SentinelTopology)
    return topology


def _shard(layer: RedisChannelLayer) -> ShardConnections:
    return layer._session()._shards[0]


def _locator(layer: RedisChannelLayer) -> SentinelLocator:
    locator = _shard(layer).spec.locator
    assert isinstance(locator, SentinelLocator)
    return locator


async def test_a_fresh_layer_is_not_held_by_a_frozen_sentinel(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """The first send (finding the master, connecting) and a check of the master (what a late
    reply triggers, every 0.25 s) each take the answer window, not the sentinel's timeout."""
    topology = _sentinel(redis_sandbox_factory)
    frozen = topology.sentinels[2]
    frozen.pause()
    try:
        layer = make_layer(topology)
        started = time.monotonic()
        await layer.send("frozen-sentinel", {"type": "first"})
        first_send_s = time.monotonic() - started
        started = time.monotonic()
        named = await _locator(layer).locate()
        locate_s = time.monotonic() - started
        link = _shard(layer).link
        started = time.monotonic()
        assert await _shard(layer)._still_master(link)  # type: ignore[arg-type]
        check_s = time.monotonic() - started
    finally:
        frozen.resume()
    assert first_send_s < NOT_HELD_S, f"the first send took {first_send_s:.2f} s"
    assert locate_s < NOT_HELD_S, f"finding the master took {locate_s:.2f} s"
    assert check_s < NOT_HELD_S, f"checking the master took {check_s:.2f} s"
    assert named.port == (await topology.acurrent_master()).port
    assert (await layer.receive("frozen-sentinel"))["type"] == "first"


async def test_a_reconnect_after_a_failover_is_not_held_by_a_frozen_sentinel(
    redis_sandbox_factory: TopologyFactory, make_layer: LayerFactory
) -> None:
    """The master is killed while a sentinel is frozen (the other two still fail over): the
    command link and a waiting receiver's reader reconnect as fast as with every sentinel
    up."""
    topology = _sentinel(redis_sandbox_factory)
    sender = make_layer(topology)
    receiver = make_layer(topology, prefix=sender.prefix)
    channel = await receiver.new_channel()
    await sender.send(channel, {"type": "before"})
    assert (await receiver.receive(channel))["type"] == "before"
    for layer in (sender, receiver):
        await asyncio.wait_for(_shard(layer).watch_subscribed(), SENTINEL_WATCH_DELAY_S + 5)
    frozen = topology.sentinels[2]
    frozen.pause()
    try:
        waiting = asyncio.ensure_future(receiver.receive(channel))
        old = await topology.acurrent_master()
        old.kill()
        await topology.await_new_master(old)
        named_at = time.monotonic()
        await sender.send(channel, {"type": "after"})
        send_s = time.monotonic() - named_at
        message = await asyncio.wait_for(waiting, RECEIVE_S)
        receive_s = time.monotonic() - named_at
    finally:
        frozen.resume()
    assert message["type"] == "after"
    assert send_s < NOT_HELD_S, f"the send took {send_s:.2f} s after the new master was named"
    assert receive_s < NOT_HELD_S, f"received {receive_s:.2f} s after the new master was named"


async def test_the_sentinel_timeouts_bound_what_the_layer_asks_sentinels(
    redis_sandbox_factory: TopologyFactory,
) -> None:
    """sentinel_kwargs socket_timeout bounds a sentinel's reply, to the layer as to the
    cache: the subscription to failover announcements and the periodic check, which waits
    for every sentinel (the data nodes' connect timeout bounded the watch before, and the
    connect timeout every reply)."""
    topology = _sentinel(redis_sandbox_factory)
    reply_timeout_s = 0.3
    config: dict[str, Any] = {
        **topology.connection_config,
        "sentinel_kwargs": {"socket_timeout": reply_timeout_s, "socket_connect_timeout": 1.5},
    }
    layer = RedisChannelLayer(hosts=[config], prefix="sentinel-timeouts")
    frozen = topology.sentinels[2]
    ended = _WatchEnded(frozen.port)
    sentinel_log = logging.getLogger("channels_ha.sentinel")
    sentinel_log.addHandler(ended)
    sentinel_log.setLevel(logging.DEBUG)
    try:
        await layer.send("timeouts", {"type": "first"})  # the watch begins 1 s later
        frozen.pause()
        shard = _shard(layer)
        await asyncio.wait_for(shard._watch_begun.wait(), SENTINEL_WATCH_DELAY_S + 5)
        begun_at = time.monotonic()  # its first attempt on the frozen sentinel starts now
        await asyncio.wait_for(ended.event.wait(), RECEIVE_S)
        watch_s = ended.at - begun_at
        started = time.monotonic()
        await _locator(layer).agreed()  # most answer and agree; the frozen one times out
        agreed_s = time.monotonic() - started
    finally:
        frozen.resume()
        sentinel_log.removeHandler(ended)
        sentinel_log.setLevel(logging.NOTSET)
        await layer.close()
    assert watch_s < CONNECT_TIMEOUT_S / 2, f"the watch gave up after {watch_s:.2f} s"
    assert agreed_s < CONNECT_TIMEOUT_S / 2, f"the check took {agreed_s:.2f} s"
    watch = shard.spec.watch  # and connecting to a sentinel (not testable without a black hole)
    assert watch is not None
    assert (watch.connect_timeout_s, watch.reply_timeout_s) == (1.5, reply_timeout_s)


class _WatchEnded(logging.Handler):
    """Notes when the watch's subscription on the sentinel at ``port`` ends (its log line)."""

    def __init__(self, port: int) -> None:
        super().__init__(logging.DEBUG)
        self._port = f":{port} "
        self.event = asyncio.Event()  # set in the event loop's thread, where the watch logs
        self.at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Sentinel watch on") and self._port in text and not self.event.is_set():
            self.at = time.monotonic()
            self.event.set()


async def test_the_window_opens_once_most_answered_one_usably() -> None:
    """Errors and unusable answers count toward most having answered, but open no window;
    once a usable one is in too, answers in before the window closes are kept, later ones
    cancelled."""
    loop = asyncio.get_running_loop()
    cancelled: list[str] = []

    async def answer(value: str, after_s: float, fails: bool = False) -> str:
        try:
            await asyncio.sleep(after_s)  # stands for a node's round trip
        except asyncio.CancelledError:
            cancelled.append(value)
            raise
        if fails:
            raise ConnectionError(value)
        return value

    started = loop.time()
    answers, quorum_s = await answers_in_window(
        {
            "down": answer("down", 0.0, fails=True),
            "refusing": answer("refusing", 0.05),
            "refusing too": answer("refusing too", 0.1),
            "usable": answer("usable", 0.4),
            "in the window": answer("in the window", 0.5),
            "frozen": answer("frozen", 5.0),
        },
        lambda value: not value.startswith("refusing"),
        0.2,
    )
    took = loop.time() - started
    assert isinstance(answers.pop("down"), ConnectionError)
    assert list(answers) == ["refusing", "refusing too", "usable", "in the window"]
    assert cancelled == ["frozen"]
    assert quorum_s is not None
    assert 0.35 < quorum_s < 0.55, quorum_s  # when "usable" came in
    assert took < 1.0, took


async def test_no_window_before_most_answered() -> None:
    """One usable answer of three opens no window: the next one is waited for."""
    answers, quorum_s = await answers_in_window(
        {"a": _after(0.0, "a"), "b": _after(0.3, "b"), "c": _after(5.0, "c")},
        lambda _: True,
        0.05,
    )
    assert answers == {"a": "a", "b": "b"}
    assert quorum_s is not None
    assert quorum_s >= 0.25, quorum_s


async def _after(delay_s: float, value: str) -> str:
    await asyncio.sleep(delay_s)
    return value
