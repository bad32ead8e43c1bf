"""How many Redis connections each benchmark process holds, seen from the server.

``CLIENT LIST`` on the master gives every connection's client address; a process's own
sockets (``/proc/<pid>/fd`` to socket inodes, matched in ``/proc/net/tcp``) give its local
ports; their intersection is what that process holds. The method is the same for every
layer: channels-ha names its connections (``channels-ha:<pid>:...``), channels_redis does not.
A background thread samples while a workload runs and keeps each process's peak; workloads add
samples at the moments that matter (during a burst). Linux only (``/proc``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

import redis

from channels_ha.sandbox import RedisNode

# Each sample costs a few ms of kernel CPU (see tcp_ports_by_inode): sampling more often
# measurably slows the layers on a 2-core machine. Workloads add samples at the moments that
# matter (during a burst, before closing).
SAMPLE_INTERVAL_S = 0.25
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


def tcp_ports_by_inode() -> dict[str, int]:
    """Socket inode -> local port of every IPv4 TCP socket (the sandbox listens on 127.0.0.1).

    The kernel builds this table for the whole network namespace on every read, a few
    milliseconds of CPU, so a sample reads it once for all the processes it counts.
    """
    ports: dict[str, int] = {}
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9:
            ports[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return ports


class ConnectionSampler:
    """Samples, in a thread, the connections that watched processes hold on the masters
    (all of them, on Cluster: a process's connections to different nodes add up)."""

    def __init__(self, nodes: list[RedisNode], interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._clients = [bench_client(node) for node in nodes]
        self._interval_s = interval_s
        self._pids: dict[str, int] = {}
        self._peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def watch(self, role: str, pid: int) -> None:
        """Counts ``pid``'s connections under ``role`` from now on."""
        with self._lock:
            self._pids[role] = pid
            self._peaks.setdefault(role, 0)

    def peaks(self) -> dict[str, int]:
        """The most connections each role held at once so far."""
        with self._lock:
            return dict(self._peaks)

    def sample(self) -> None:
        """One sample now (also taken periodically by the thread)."""
        ports = set().union(*(_client_ports(client) for client in self._clients))
        with self._lock:
            pids = dict(self._pids)
        port_of = tcp_ports_by_inode()
        counts = {
            role: len(ports & {port_of[i] for i in socket_inodes(pid) if i in port_of})
            for role, pid in pids.items()
        }
        with self._lock:
            for role, count in counts.items():
                self._peaks[role] = max(count, self._peaks.get(role, 0))

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
        for client in self._clients:
            client.close()


def bench_client(node: RedisNode) -> redis.Redis:
    """A client of the benchmark's own on ``node``: short timeouts, and the name that keeps the
    sampler from counting it as a layer's connection. The caller closes it."""
    return node.client(
        socket_timeout=2.0, socket_connect_timeout=2.0, client_name=BENCH_CLIENT_NAME
    )


def _client_ports(client: redis.Redis) -> set[int]:
    """The client-side ports of a node's connections, but for the benchmark's own (named: the
    sampler's thread and an explicit sample may each hold one, and so may a CPU window)."""
    return {
        int(entry["addr"].rsplit(":", 1)[1])
        for entry in client.client_list()
        if entry.get("name") != BENCH_CLIENT_NAME
    }
