"""Free loopback ports for sandbox nodes.

Ports are drawn from below Linux's ephemeral range (32768-60999), so the outgoing connections
of clients and replicas never occupy a port a node is about to bind, and each port is held by
this process until its topology stops, so a node restarted on the same port finds it unclaimed
by other sandboxes of this process.
"""

from __future__ import annotations

import random
import socket
import threading

from ..exceptions import SandboxError
from ._defaults import HOST

_FIRST_PORT = 20000
_LAST_PORT = 32767
_MAX_ATTEMPTS = 200

_lock = threading.Lock()
_held: set[int] = set()
_random = random.Random()


def allocate_port() -> int:
    """Return a loopback port that is free now and reserved for the caller."""
    with _lock:
        for _ in range(_MAX_ATTEMPTS):
            port = _random.randint(_FIRST_PORT, _LAST_PORT)
            if port not in _held and _is_free(port):
                _held.add(port)
                return port
    raise SandboxError(
        f"found no free port on {HOST} in {_FIRST_PORT}-{_LAST_PORT} after {_MAX_ATTEMPTS} tries"
    )


def release_port(port: int) -> None:
    """Give a port back once its node has stopped for good."""
    with _lock:
        _held.discard(port)


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True
