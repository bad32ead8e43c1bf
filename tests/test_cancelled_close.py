"""close() cancelled (a shutdown hook's own timeout) at each of its waits: the receivers still
waiting raise RedisUnavailable, what was popped is back in Redis or logged lost, and no task
or connection is left, promptly; a second close() returns.

close() waits for the readers to collect their pops (up to 2 s), for a normal-channel reader
to recover a pop whose reply was lost (up to failover_timeout), and for the give-backs. A
frozen master (SIGSTOP) makes each of those waits long enough to cancel close() inside it;
the moment is taken from inside the layer, not guessed with a timer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from channels_ha import RedisChannelLayer, RedisUnavailable, parse_url
from channels_ha._delivery import inbox_of
from channels_ha._interop import close_sync_client, sync_client
from channels_ha._reader import BlockingReader
from channels_ha.sandbox import TopologyFactory

from .conftest import nothing_left_open, receivers_waiting

BUFFERED = 9  # popped with the first message of a process-specific channel, not delivered
CANCELLED_CLOSE_S = 1.0  # a cancelled close() ends within this, whatever it was waiting for
WAIT_S = 10.0  # bounds each wait for a moment inside the layer


def entered(obj: object, name: str, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when the coroutine method ``name`` of ``obj`` is next called."""
    event = asyncio.Event()
    real: Callable[..., Coroutine[Any, Any, Any]] = getattr(obj, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        event.set()
        return await real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return event


async def pop_out(reader: BlockingReader, key: str) -> None:
    """Until the reader's request in flight pops ``key`` (it has no hook to await)."""
    deadline = time.monotonic() + WAIT_S
    while not (reader._pending is not None and key in reader._pending_keys):
        assert time.monotonic() < deadline, "the pop never went out"
        await asyncio.sleep(0.01)


async def cancel_close(
    layer: RedisChannelLayer, moment: asyncio.Event | None, twice: bool = False
) -> float:
    """Starts close(), cancels it at ``moment`` (None: at its first wait), and ``twice``
    again as it hurries; how long it took to end after the first cancellation."""
    closing = asyncio.create_task(layer.close())
    if moment is None:
        await asyncio.sleep(0)  # close() runs up to its first await
    else:
        await asyncio.wait_for(moment.wait(), WAIT_S)
    assert not closing.done()
    closing.cancel()
    cancelled_at = time.monotonic()
    if twice:
        await asyncio.sleep(0)  # it takes the first, and waits for the rest of its end
        assert not closing.done()
        closing.cancel()
    done, _ = await asyncio.wait({closing}, timeout=WAIT_S)
    took = time.monotonic() - cancelled_at
    assert done, "the cancelled close() never ended"
    assert closing.cancelled()
    return took


@pytest.mark.parametrize(
    "moment", ["first-await", "readers-closing", "recovering", "readers-closing-twice"]
)
@pytest.mark.serial  # times itself within a second or so
async def test_a_cancelled_close_fails_receivers_reports_the_loss_and_closes_all(
    redis_sandbox_factory: TopologyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    moment: str,
) -> None:
    """Seen, with close() cancelled while the readers closed: both receivers waiting for
    good, the 9 buffered messages neither back in Redis nor logged, a connection and the
    readers' tasks left; cancelled at its first await, a second close() did nothing, and 3
    connections and both readers stayed."""
    topology = redis_sandbox_factory("standalone")
    node = topology.nodes[0]
    frozen = moment != "first-await"
    prefix = f"cancel-close-{uuid.uuid4().hex[:8]}"
    with nothing_left_open(), caplog.at_level("INFO", logger="channels_ha"):
        layer = RedisChannelLayer(hosts=[topology.url], prefix=prefix, failover_timeout=10)
        a, b = await layer.new_channel(), await layer.new_channel()
        for number in range(BUFFERED + 1):
            await layer.send(a, {"type": "n", "n": number})
        assert (await layer.receive(a))["n"] == 0
        await layer.send("jobs", {"type": "first"})
        assert (await layer.receive("jobs"))["type"] == "first"  # its reader now idle
        session = layer._session()
        inbox_reader, normal_reader = session._readers[(0, True)], session._readers[(0, False)]
        if frozen:
            await layer.send("jobs", {"type": "second"})  # popped by a pop Redis never answers
            node.pause()
        try:
            receivers = [asyncio.create_task(layer.receive(c)) for c in (b, "jobs")]
            await receivers_waiting(layer, "jobs")
            if frozen:
                await pop_out(normal_reader, layer._core.keys.channel("jobs"))
            when = {
                "first-await": None,
                "readers-closing": entered(inbox_reader, "_finish_pending", monkeypatch),
                # (after the 2 s of collecting the pop: the reader reconnects to recover it)
                "recovering": entered(normal_reader, "_connection", monkeypatch),
            }[moment.removesuffix("-twice")]
            took = await cancel_close(layer, when, twice=moment.endswith("-twice"))
        finally:
            node.resume()
        assert took < CANCELLED_CLOSE_S, f"the cancelled close() took {took:.1f} s more"
        await asyncio.wait_for(layer.close(), CANCELLED_CLOSE_S)  # a second close() returns
        assert session._closing is not None  # (cancelled twice, the end goes on by itself)
        await asyncio.wait_for(asyncio.shield(session._closing), CANCELLED_CLOSE_S)
        for receiver in receivers:
            with pytest.raises(RedisUnavailable, match="closed"):
                await asyncio.wait_for(receiver, CANCELLED_CLOSE_S)
        assert asyncio.all_tasks() == {asyncio.current_task()}
    events = [getattr(r, "event", None) for r in caplog.records]
    lost = [r for r in caplog.records if getattr(r, "event", None) == "return_lost"]
    logged = sum(getattr(r, "messages", 0) for r in lost)
    client = sync_client(parse_url(topology.url))
    try:
        inbox = layer._core.keys.inbox(inbox_of(a))
        assert client.llen(inbox) + logged == BUFFERED
    finally:
        close_sync_client(client)
    if frozen:  # the second job's pop went unanswered: its batch is owed and not recovered
        assert "in_flight_lost" in events
