"""The demo's embedded Redis: a Sentinel sandbox that heals itself after each "kill the master".

The launcher owns it. A watcher thread looks at every node twice a second, publishes what it
sees (the page's sandbox panel), records what happened (the panel's event log) and, once the
sentinels have promoted a replica, starts the killed node again so that it rejoins as a
replica: the button can then be pressed again, as often as one likes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import redis

from channels_ha.sandbox import RedisNode, SentinelTopology

from . import sandbox_view as view
from .control import ControlError

WATCH_INTERVAL_S = 0.5
WATCHER_STOP_TIMEOUT_S = 5.0
EVENTS_KEPT = 12

logger = logging.getLogger(__name__)


class Sandbox:
    """One master, two replicas and three sentinels, watched, healed, and killed on request."""

    def __init__(self) -> None:
        self.topology = SentinelTopology()  # allocates ports and a directory; starts nothing
        self._master_name = str(self.topology.connection_config["master_name"])
        self._clients = {node.name: node.observer_client() for node in self.topology.nodes}
        self._lock = threading.Lock()  # guards everything below
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._status: dict[str, Any] = {}
        self._phase = view.HEALTHY
        self._master: str | None = None
        self._down_since: float | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="demo-sandbox", daemon=True)

    def start(self) -> None:
        """Start the Redis processes (ready within seconds) and the watcher."""
        try:
            self.topology.start()
            self._publish(*self._observe())
            self._event(f"started: master {self._master}, 2 replicas, 3 sentinels")
            self._watcher.start()
        except BaseException:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        """``REDIS_URL`` and ``REDIS_CONNECTION_CONFIG`` pointing at the sentinels."""
        return self.topology.env()

    def describe(self) -> list[str]:
        return self.topology.describe()

    # -- control commands (called from the control server's threads) -----------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {**self._status, "events": list(self._events)}

    def kill_master(self) -> dict[str, Any]:
        with self._lock:
            if self._phase != view.HEALTHY:
                raise ControlError(f"the sandbox is {self._phase}: wait until it is healthy again")
            node = self._node_at(self._master)
            pid = node.pid
            node.kill()
            self._phase = self._status["phase"] = view.FAILING_OVER
            self._down_since = time.monotonic()
            self._event(f"killed master {node.name} ({self._master}, pid {pid}) with SIGKILL")
        return {"killed": f"{node.name} ({self._master})", "pid": pid}

    def stop(self) -> None:
        """Stop watching, then stop every Redis process and remove their files. Idempotent."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join(WATCHER_STOP_TIMEOUT_S)
        for client in self._clients.values():
            client.close()
        self.topology.stop()

    # -- the watcher -----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                self._publish(*self._observe())
            except Exception:  # keep watching: the next look may succeed
                logger.exception("the sandbox watcher failed to look at the nodes")

    def _observe(self) -> tuple[list[view.NodeView], list[view.SentinelView]]:
        """Ask every node (no lock held: a node may take a moment to answer)."""
        nodes = [
            view.node_view(n.name, _address(n), n.pid, self._call(n, "ROLE") if n.running else None)
            for n in self.topology.data_nodes
        ]
        sentinels = [
            view.sentinel_view(
                s.name,
                _address(s),
                self._call(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._master_name),
                self._call(s, "SENTINEL", "REPLICAS", self._master_name),
            )
            for s in self.topology.sentinels
        ]
        return nodes, sentinels

    def _call(self, node: RedisNode, *command: str) -> Any:
        client: Any = self._clients[node.name]  # redis-py leaves execute_command untyped
        try:
            return client.execute_command(*command)
        except (redis.RedisError, OSError):
            return None

    def _publish(self, nodes: list[view.NodeView], sentinels: list[view.SentinelView]) -> None:
        with self._lock:
            self._track(view.phase(nodes, sentinels), view.agreed_master(sentinels))
            if self._phase == view.RESTARTING:
                self._restart_dead_nodes()
            self._status = {
                "mode": "sentinel sandbox",
                "phase": self._phase,
                "master": self._master,
                "nodes": [n.as_dict() for n in nodes],
                "sentinels": [s.as_dict() for s in sentinels],
            }

    def _track(self, phase: str, master: str | None) -> None:
        """Record the transitions worth telling the user about."""
        if master is not None and master != self._master and self._master is not None:
            took = (
                ""
                if self._down_since is None
                else f" {time.monotonic() - self._down_since:.1f} s after the kill"
            )
            self._event(f"sentinels promoted {self._node_at(master).name} ({master}){took}")
        if phase == view.HEALTHY and self._phase != view.HEALTHY:
            self._event("healthy again: 1 master, 2 linked replicas")
            self._down_since = None
        self._phase = phase
        self._master = master or self._master

    def _restart_dead_nodes(self) -> None:
        for node in self.topology.data_nodes:
            if not node.running:
                node.spawn()
                self._event(f"restarted {node.name} (pid {node.pid}); sentinels make it a replica")
        self._phase = view.REJOINING

    def _node_at(self, address: str | None) -> RedisNode:
        for node in self.topology.data_nodes:
            if _address(node) == address:
                return node
        raise ControlError(f"no sandbox node at {address}")

    def _event(self, text: str) -> None:
        logger.info("sandbox: %s", text)
        self._events.append({"at": time.time(), "text": text})


def _address(node: RedisNode) -> str:
    return f"{node.host}:{node.port}"
