"""A bug inside channels-ha is logged and survived by the background work it hits.

These tests inject the bug (an internal method that raises once): Redis is real, but no
fault of Redis makes our own code raise. Before the guards, such an exception ended the
reader task (every receiver of its shard then waited forever) or the upkeep task (memberships
then lapsed at group_expiry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from channels_ha import RedisChannelLayer

pytestmark = pytest.mark.redis_topologies("standalone")

RECEIVE_TIMEOUT_S = 5.0
UPKEEP_TIMEOUT_S = 5.0  # upkeep ticks every second


def raising_once(real: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    """``real``, except that its first call raises; and a list that counts the calls."""
    calls: list[int] = []

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected bug")
        return real(*args, **kwargs)

    return patched, calls


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", "") == name]


async def test_a_failed_delivery_does_not_stop_the_reader(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch the bug hit is lost and logged; the next message still arrives."""
    deliveries = layer._session().deliveries
    patched, calls = raising_once(deliveries.deliver)
    monkeypatch.setattr(deliveries, "deliver", patched)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "hit by the bug"})
    with caplog.at_level(logging.ERROR, logger="channels_ha.reader"):
        waiting = asyncio.create_task(layer.receive(channel))
        deadline = asyncio.get_running_loop().time() + RECEIVE_TIMEOUT_S
        while not calls:  # the reader has popped the first message
            assert asyncio.get_running_loop().time() < deadline, "the reader never popped"
            await asyncio.sleep(0.01)
        await layer.send(channel, {"type": "after"})
        received = await asyncio.wait_for(waiting, RECEIVE_TIMEOUT_S)
    assert received == {"type": "after"}
    (failure,) = events(caplog, "delivery_failed")
    assert failure.exc_info is not None


async def test_a_failed_upkeep_runs_again(
    layer: RedisChannelLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Upkeep that raised runs again at its next tick."""
    session = layer._session()
    again = asyncio.Event()
    patched, calls = raising_once(session._publish_inbox_limits)

    def counting() -> None:
        patched()
        if len(calls) >= 2:
            again.set()

    with caplog.at_level(logging.ERROR, logger="channels_ha.layer"):
        monkeypatch.setattr(session, "_publish_inbox_limits", counting)
        await asyncio.wait_for(again.wait(), UPKEEP_TIMEOUT_S * 2)
    (failure,) = events(caplog, "upkeep_failed")
    assert failure.exc_info is not None
