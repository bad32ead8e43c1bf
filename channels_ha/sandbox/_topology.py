"""What every sandbox topology shares: its directory, its nodes, its settings, its cleanup.

A topology owns a temporary directory and every process it starts. ``stop()`` is idempotent;
topologies still running at interpreter exit are stopped by an ``atexit`` hook, and the nodes
themselves die with the interpreter even when it is killed (see ``_spawn``).
"""

from __future__ import annotations

import atexit
import json
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

from ._certs import TLSFiles, make_tls_files
from ._defaults import HOST, TOPOLOGY_READY_TIMEOUT_S
from ._lifecycle import owned_directory
from ._ops import Op, await_until, wait_until
from ._ports import allocate_port, release_port
from ._process import Directive, RedisNode

_T = TypeVar("_T", bound="Topology")


class Topology(ABC):
    """A set of redis-server processes forming one deployment shape, on loopback ports."""

    #: The name used by the CLI, the fixtures and ``start_topology``.
    kind: ClassVar[str]

    def __init__(self, *, tls: bool = False, password: str | None = None) -> None:
        self.directory = _make_directory(self.kind)
        self.password = password
        try:
            self.tls: TLSFiles | None = make_tls_files(self.directory / "tls") if tls else None
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.nodes: list[RedisNode] = []
        self._ports: list[int] = []
        self._stopped = False
        _live.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {','.join(addresses(self.nodes))}>"  # no password

    # -- what a client needs ---------------------------------------------------------------

    @property
    @abstractmethod
    def url(self) -> str:
        """The ``REDIS_URL`` of this topology."""

    @property
    @abstractmethod
    def connection_config(self) -> dict[str, Any]:
        """The ``REDIS_CONNECTION_CONFIG`` dict of this topology (JSON-able)."""

    def env(self) -> dict[str, str]:
        """The environment variables that point channels-ha at this topology."""
        return {
            "REDIS_URL": self.url,
            "REDIS_CONNECTION_CONFIG": json.dumps(self.connection_config),
        }

    def describe(self) -> list[str]:
        """One line per node: name, address, pid."""
        return [f"{node.name:<11} {node.host}:{node.port}  pid {node.pid}" for node in self.nodes]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = TOPOLOGY_READY_TIMEOUT_S) -> None:
        """Start every node and wait until the topology is healthy; clean up on failure."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    @abstractmethod
    def _start(self, timeout_s: float) -> None: ...

    def stop(self) -> None:
        """Stop every process and remove the directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for node in self.nodes:  # signal all first: they shut down in parallel
            node.terminate()
        for node in self.nodes:
            node.stop()
        for port in self._ports:
            release_port(port)
        shutil.rmtree(self.directory, ignore_errors=True)
        _live.discard(self)

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- health ----------------------------------------------------------------------------

    def wait_until_healthy(self, timeout_s: float = TOPOLOGY_READY_TIMEOUT_S) -> None:
        """Resume paused nodes, restart killed ones, then block until the topology converged."""
        self._heal()
        wait_until(
            self._health_check, f"{self.kind} topology to be healthy", timeout_s, self._events()
        )

    async def await_healthy(self, timeout_s: float = TOPOLOGY_READY_TIMEOUT_S) -> None:
        """Asyncio twin of :meth:`wait_until_healthy`."""
        self._heal()
        await await_until(
            self._health_check, f"{self.kind} topology to be healthy", timeout_s, self._events()
        )

    def _heal(self) -> None:
        for node in self.nodes:
            if node.paused:
                node.resume()
            elif not node.running:
                node.spawn()

    @abstractmethod
    def _health_check(self) -> Op[str | None]:
        """Return ``None`` when every node is up and the topology converged, else what is not."""

    def _events(self) -> RedisNode | None:
        """A node whose pub/sub events are worth waking up for (a sentinel), if any."""
        return None

    # -- building blocks for subclasses ----------------------------------------------------

    def _port(self) -> int:
        port = allocate_port()
        self._ports.append(port)
        return port

    def _add_node(
        self, name: str, config: list[Directive], port: int, *, sentinel: bool = False
    ) -> RedisNode:
        password = self._node_password(sentinel)
        node = RedisNode(
            name,
            port,
            self.directory / name,
            config,
            sentinel=sentinel,
            tls=self.tls,
            password=password,
        )
        self.nodes.append(node)
        return node

    def _node_password(self, sentinel: bool) -> str | None:
        return self.password

    def _listen(self, port: int) -> list[Directive]:
        """Directives binding a node to ``port`` on loopback, plain or TLS-only."""
        common: list[Directive] = [("bind", HOST), ("protected-mode", "no"), ("daemonize", "no")]
        if self.tls is None:
            return [*common, ("port", str(port))]
        return [*common, ("port", "0"), ("tls-port", str(port)), *self._tls_directives()]

    def _tls_directives(self) -> list[Directive]:
        assert self.tls is not None
        return [
            ("tls-cert-file", str(self.tls.server_cert)),
            ("tls-key-file", str(self.tls.server_key)),
            ("tls-ca-cert-file", str(self.tls.ca_cert)),
            ("tls-auth-clients", "optional"),
            ("tls-replication", "yes"),
        ]

    def _data_directives(self, port: int) -> list[Directive]:
        """Directives of a data node: no persistence, immediate diskless replication."""
        auth: list[Directive] = (
            []
            if self.password is None
            else [("requirepass", self.password), ("masterauth", self.password)]
        )
        return [
            *self._listen(port),
            ("save", ""),
            ("appendonly", "no"),
            ("repl-diskless-sync", "yes"),
            ("repl-diskless-sync-delay", "0"),
            ("shutdown-timeout", "1"),
            ("enable-debug-command", "local"),
            *auth,
        ]

    def _url_base(self, scheme: str) -> str:
        """``scheme://[:password@]`` with the password percent-encoded."""
        scheme = scheme.replace("redis", "rediss", 1) if self.tls else scheme
        userinfo = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{userinfo}"

    def _url_query(self, params: dict[str, str]) -> str:
        if self.tls is not None:
            params = {**params, "ssl_ca_certs": str(self.tls.ca_cert)}
        pairs = [f"{key}={quote(value, safe='/')}" for key, value in params.items()]
        return "?" + "&".join(pairs) if pairs else ""

    def _client_settings(self) -> dict[str, Any]:
        """The password and TLS entries of ``connection_config``."""
        settings: dict[str, Any] = {}
        if self.password is not None:
            settings["password"] = self.password
        if self.tls is not None:
            settings.update(ssl=True, ssl_ca_certs=str(self.tls.ca_cert))
        return settings


_PREFIX = "channels-ha-sandbox-"


def _make_directory(kind: str) -> Path:
    """A fresh temporary directory named after this process, after sweeping dead owners' ones."""
    return owned_directory(_PREFIX, f"{kind}-")


def addresses(nodes: list[RedisNode]) -> Iterator[str]:
    return (f"{node.host}:{node.port}" for node in nodes)


class _LiveTopologies:
    """Topologies not yet stopped; stopped at interpreter exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topologies: list[Topology] = []
        self._hooked = False

    def add(self, topology: Topology) -> None:
        with self._lock:
            self._topologies.append(topology)
            if not self._hooked:
                atexit.register(self.stop_all)
                self._hooked = True

    def discard(self, topology: Topology) -> None:
        with self._lock:
            if topology in self._topologies:
                self._topologies.remove(topology)

    def stop_all(self) -> None:
        for topology in list(self._topologies):
            topology.stop()


_live = _LiveTopologies()
