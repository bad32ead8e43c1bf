"""A process forked after its channel layer was built (gunicorn --preload, Celery prefork
with a module-level ``get_channel_layer()``) must be a process of its own to the layer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from channels_ha import RedisChannelLayer
from channels_ha.sandbox import Topology

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_TIMEOUT_S = 20.0


async def _round_trip(layer: RedisChannelLayer, text: str) -> tuple[str, object]:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m", "text": text})
    message = await asyncio.wait_for(layer.receive(channel), 5)
    await layer.close()
    return channel, message["text"]


def test_a_forked_child_gets_an_inbox_and_connections_of_its_own(
    redis_standalone: Topology,
) -> None:
    """Seen: workers forked from one parent shared its inbox, so each popped the other's
    messages (half of them lost to the channel they were for)."""
    layer = RedisChannelLayer(hosts=[redis_standalone.url], prefix="forked")
    parent_channel, _ = asyncio.run(_round_trip(layer, "before"))

    def child() -> dict[str, Any]:
        channel, text = asyncio.run(_round_trip(layer, "child"))
        return {"channel": channel, "text": text}

    said = in_forked_child(child)
    assert said["text"] == "child"
    parent_inbox = parent_channel.split(".", 1)[1].split("!", 1)[0]
    child_inbox = said["channel"].split(".", 1)[1].split("!", 1)[0]
    assert child_inbox != parent_inbox
    assert asyncio.run(_round_trip(layer, "after"))[1] == "after"  # the parent goes on


def in_forked_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What ``work`` reports when run in a forked child, which must exit cleanly (it never
    returns into pytest)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
            status = 0
        finally:
            sys.stdout.flush()
            os._exit(status)
    os.close(write_end)
    status = _wait_for(pid)
    with os.fdopen(read_end, "rb") as report:
        said: dict[str, Any] = json.loads(report.read() or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0, said
    return said


def _wait_for(pid: int) -> int:
    """The child's wait status; killed if it takes longer than CHILD_TIMEOUT_S."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)  # polling a process: no event to await
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]
