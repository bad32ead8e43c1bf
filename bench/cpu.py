"""CPU spent per message: by the process that runs the layer, and by Redis.

On a 2-core machine the client process and Redis compete for the same cores, so a layer's
cost is both: its own Python work and the work it asks of the server (a Lua script, a
blocking pop, a publish). The process side is the event-loop thread's own clock
(``time.thread_time``), which leaves out the connection sampler's thread; the Redis side is
``INFO cpu`` of every master (replicas, which also apply each write, are not counted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from channels_ha.sandbox import RedisNode

from .connections import bench_client


@dataclass(frozen=True)
class CpuPerMessage:
    process_us: float
    redis_us: float | None  # None if a master could not be asked


class CpuWindow:
    """Started just before the timed work, read just after it, in the event-loop thread.

    Its clients to the masters stay open over the window (so that connecting is not counted
    as Redis's work), and the connection sampler does not count them as the layer's.
    """

    def __init__(self, masters: list[RedisNode]) -> None:
        self._clients = [bench_client(node) for node in masters]
        self._process_s = 0.0
        self._redis_s: float | None = None

    def start(self) -> None:
        self._redis_s = self._redis_cpu_s()
        self._process_s = time.thread_time()  # last: the INFO calls are not the layer's

    def per_message(self, count: int) -> CpuPerMessage | None:
        """CPU per message since start(); closes the window's clients."""
        process_s = time.thread_time() - self._process_s
        try:
            now_redis_s = self._redis_cpu_s() if count > 0 else None
        finally:
            for client in self._clients:
                client.close()
        if count <= 0:
            return None
        redis_us = None
        if self._redis_s is not None and now_redis_s is not None:
            redis_us = (now_redis_s - self._redis_s) / count * 1e6
        return CpuPerMessage(process_s / count * 1e6, redis_us)

    def _redis_cpu_s(self) -> float | None:
        total = 0.0
        for client in self._clients:
            try:
                info = client.info("cpu")
            except (redis.RedisError, OSError):
                return None
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total
