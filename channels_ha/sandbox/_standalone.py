"""A single Redis node, plain or TLS-only: the ``standalone`` and ``tls`` topologies."""

from __future__ import annotations

from typing import Any

from ..exceptions import SandboxError
from ._defaults import TOPOLOGY_READY_TIMEOUT_S
from ._ops import Op
from ._process import RedisNode
from ._topology import Topology


class StandaloneTopology(Topology):
    """One redis-server; with ``tls=True`` it listens on a TLS port only."""

    kind = "standalone"

    def __init__(self, *, tls: bool = False, password: str | None = None) -> None:
        super().__init__(tls=tls, password=password)
        port = self._port()
        self.node: RedisNode = self._add_node("redis-0", self._data_directives(port), port)

    @property
    def url(self) -> str:
        return f"{self._url_base('redis')}{self.node.host}:{self.node.port}{self._url_query({})}"

    @property
    def connection_config(self) -> dict[str, Any]:
        return {"host": self.node.host, "port": self.node.port, **self._client_settings()}

    def _start(self, timeout_s: float = TOPOLOGY_READY_TIMEOUT_S) -> None:
        self.node.start(timeout_s)

    def _health_check(self) -> Op[str | None]:
        self.node.raise_if_exited()
        (reply,) = yield [(self.node, ("PING",))]
        return None if reply == "PONG" else f"{self.node.name} answered PING with {reply!r}"


class TLSTopology(StandaloneTopology):
    """One redis-server listening on a TLS port only, with certificates made on the fly."""

    kind = "tls"

    def __init__(self, *, tls: bool = True, password: str | None = None) -> None:
        if not tls:
            raise SandboxError("the tls topology is TLS-only; use the standalone topology")
        super().__init__(tls=True, password=password)
