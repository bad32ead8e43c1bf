"""The topology panel: what this worker's channel layer sees, and the sandbox's own view.

Every socket checks the panel once a second, and a worker may serve hundreds of sockets, so
the panel is built at most once per ``PANEL_TTL_S`` per worker process and shared: building
it reads the layer's ``statistics()`` and asks the launcher for the sandbox's status.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from typing import Any

from django.conf import settings

import channels_ha
from demo import control

PANEL_TTL_S = 0.5


class _Panel:
    """This worker's panel; the same object is returned for as long as nothing changed."""

    def __init__(self) -> None:
        self._value: dict[str, Any] = {}
        self._built_at = -PANEL_TTL_S
        self._lock: asyncio.Lock | None = None

    async def get(self, layer: Any) -> dict[str, Any]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one build at a time; the sockets waiting share its result
            if time.monotonic() - self._built_at >= PANEL_TTL_S:
                fresh = {"worker": worker_view(layer), "sandbox": await _sandbox_status()}
                if fresh != self._value:
                    self._value = fresh
                self._built_at = time.monotonic()
        return self._value


panel = _Panel()


def worker_view(layer: Any) -> dict[str, Any]:
    """This worker's pid and layer, and where its layer is connected (if it says)."""
    view: dict[str, Any] = {
        "pid": os.getpid(),
        "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
        **_redis_summary(),
    }
    statistics = getattr(layer, "statistics", None)
    if statistics is None:  # channels_redis keeps no such record
        return {**view, "statistics": None}
    shard = statistics().shards[0]
    return {
        **view,
        "statistics": {
            "master": shard.master,
            "topology": shard.topology,
            "server_changes": shard.server_changes,
            "last_server_change": shard.last_server_change,
            "reconnects": shard.reconnects,
        },
    }


@functools.cache
def _redis_summary() -> dict[str, Any]:
    """The mode and nodes of the configuration, never its credentials."""
    summary = channels_ha.load_config().summary_dict()
    return {"mode": summary["mode"], "nodes": summary["nodes"]}


async def _sandbox_status() -> dict[str, Any] | None:
    """The launcher's view of its sandbox; ``None`` on an external Redis."""
    if settings.CONTROL_SOCKET is None:
        return None
    try:
        reply = await control.request(settings.CONTROL_SOCKET, "status")
    except control.ControlError as err:
        return {"error": str(err)}
    reply.pop("ok", None)
    return reply
