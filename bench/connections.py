"""How many Redis connections each benchmark process holds, seen from the servers.

``CLIENT LIST`` on the master gives every connection's client address; a process's own
sockets (``/proc/<pid>/fd`` to socket inodes, matched in ``/proc/net/tcp``) give their local
and remote ports; a socket from a port ``CLIENT LIST`` names, to the master's port, is one
that process holds. The method is the same for every layer: channels-ha names its
connections (``channels-ha:<pid>:...``), channels_redis does not. The sentinels are counted
the same way, apart: a layer on Sentinel also keeps connections to them (channels-ha one per
sentinel, for the announcements of a failover), which the masters never see.
A background thread samples while a workload runs and keeps each process's peak; workloads add
samples at the moments that matter (during a burst, and a last one before closing, which on
Sentinel waits until the layers had time to open those connections). Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

from channels_ha.sandbox import RedisNode

# Each sample costs a few ms of kernel CPU (see tcp_ports_by_inode): sampling more often
# measurably slows the layers on a 2-core machine. Workloads add samples at the moments that
# matter (during a burst, before closing).
SAMPLE_INTERVAL_S = 0.25
# channels-ha subscribes on the sentinels 1 s after its first connection on an event loop
# (SENTINEL_WATCH_DELAY_S): on Sentinel, a row's last sample is taken no earlier than this
# after its sampler started, so a row shorter than that still counts those connections.
SENTINEL_SETTLE_S = 3.0
_SOCKET = "socket:["
# The benchmark's own connections (the sampler's, the CPU window's): never counted.
BENCH_CLIENT_NAME = "channels-ha-bench-sampler"


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` has open (empty once it exited)."""
    inodes: set[str] = set()
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(_SOCKET):
            inodes.add(target[len(_SOCKET) : -1])
    return inodes


# A TCP connection as both ends name it on one machine: (client port, server port).
Ends = tuple[int, int]


def tcp_ports_by_inode() -> dict[str, Ends]:
    """Socket inode -> (local port, remote port) of every IPv4 TCP socket (the sandbox
    listens on 127.0.0.1). The remote port matters: Linux may give two connections to
    different servers the same local port.

    The kernel builds this table for the whole network namespace on every read, a few
    milliseconds of CPU, so a sample reads it once for all the processes it counts.
    """
    ports: dict[str, Ends] = {}
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9:
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            ports[fields[9]] = (local, remote)
    return ports


class ConnectionSampler:
    """Samples, in a thread, the connections that watched processes hold on the masters
    (all of them, on Cluster: a process's connections to different nodes add up) and,
    counted apart, on the sentinels."""

    def __init__(
        self,
        nodes: Sequence[RedisNode],
        sentinels: Sequence[RedisNode] = (),
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self._clients = [(bench_client(node), node.port) for node in nodes]
        self._sentinel_clients = [(bench_client(node), node.port) for node in sentinels]
        self._interval_s = interval_s
        self._started_at = time.monotonic()
        self._pids: dict[str, int] = {}
        self._peaks: dict[str, int] = {}
        self._sentinel_peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def watch(self, role: str, pid: int) -> None:
        """Counts ``pid``'s connections under ``role`` from now on."""
        with self._lock:
            self._pids[role] = pid
            self._peaks.setdefault(role, 0)
            if self._sentinel_clients:
                self._sentinel_peaks.setdefault(role, 0)

    def peaks(self) -> dict[str, int]:
        """The most connections each role held at once on the masters so far."""
        with self._lock:
            return dict(self._peaks)

    def sentinel_peaks(self) -> dict[str, int]:
        """The most connections each role held at once on the sentinels (all of them) so
        far; empty without sentinels."""
        with self._lock:
            return dict(self._sentinel_peaks)

    def sample(self) -> None:
        """One sample now (also taken periodically by the thread)."""
        masters = _connections_to(self._clients)
        sentinels = _connections_to(self._sentinel_clients)
        with self._lock:
            pids = dict(self._pids)
        ends_of = tcp_ports_by_inode()
        held = {
            role: {ends_of[i] for i in socket_inodes(pid) if i in ends_of}
            for role, pid in pids.items()
        }
        with self._lock:
            for role, ends in held.items():
                self._peaks[role] = max(len(ends & masters), self._peaks.get(role, 0))
                if self._sentinel_clients:
                    count = len(ends & sentinels)
                    self._sentinel_peaks[role] = max(count, self._sentinel_peaks.get(role, 0))

    async def last_sample(self) -> None:
        """The sample a row takes before closing its layers. With sentinels, it waits until
        ``SENTINEL_SETTLE_S`` after the sampler started (a schedule, not a wait for an
        event: the layers are not asked), so that connections a layer opens to the sentinels
        after a delay are counted even in a short row."""
        if self._sentinel_clients:
            await asyncio.sleep(self._started_at + SENTINEL_SETTLE_S - time.monotonic())
        await asyncio.to_thread(self.sample)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except (redis.RedisError, OSError):  # a sample lost is not worth a crash
                continue

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        for client, _ in self._clients + self._sentinel_clients:
            client.close()


def bench_client(node: RedisNode) -> redis.Redis:
    """A client of the benchmark's own on ``node``: short timeouts, and the name that keeps the
    sampler from counting it as a layer's connection. The caller closes it."""
    return node.client(
        socket_timeout=2.0, socket_connect_timeout=2.0, client_name=BENCH_CLIENT_NAME
    )


def _connections_to(clients: list[tuple[redis.Redis, int]]) -> set[Ends]:
    """The connections to these nodes (each a client of its own and its port), but for the
    benchmark's own (named: the sampler's thread and an explicit sample may each hold one,
    and so may a CPU window)."""
    return {
        (int(entry["addr"].rsplit(":", 1)[1]), port)
        for client, port in clients
        for entry in client.client_list()
        if entry.get("name") != BENCH_CLIENT_NAME
    }
