"""Free loopback ports for sandbox nodes, reserved across processes for their nodes' life.

Ports are drawn from below Linux's ephemeral range (32768-60999), so the outgoing connections
of clients and replicas never occupy a port a node is about to bind. A port stays reserved
from its allocation until its topology stops, while its node is killed too: this process
holds an ``flock`` on a lock file per port, in a directory of this user. Another sandbox
process (a second pytest run, a benchmark, ``channels-ha sandbox``) skips a locked port, free
as it looks, so a node restarted on its port finds it unclaimed. The kernel drops the lock
when its process dies, so a crashed run reserves nothing. A process that is no sandbox can
still take a port; a first start then tries fresh ones (``_kinds.start_topology``).
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import stat
import tempfile
import threading
from pathlib import Path

from ..exceptions import SandboxError
from ._defaults import HOST

_FIRST_PORT = 20000
_LAST_PORT = 32767
_MAX_ATTEMPTS = 200

_lock = threading.Lock()
_held: dict[int, int] = {}  # port -> descriptor of its locked file, open while reserved
_random = random.Random()


def allocate_port() -> int:
    """Return a loopback port that is free now and reserved for the caller."""
    with _lock:
        directory = _lock_directory()
        for _ in range(_MAX_ATTEMPTS):
            port = _random.randint(_FIRST_PORT, _LAST_PORT)
            if port in _held:
                continue
            locked = _reserve(directory, port)
            if locked is None:
                continue
            if _is_free(port):
                _held[port] = locked
                return port
            os.close(locked)
    raise SandboxError(
        f"found no free port on {HOST} in {_FIRST_PORT}-{_LAST_PORT} after {_MAX_ATTEMPTS} tries"
    )


def release_port(port: int) -> None:
    """Give a port back once its node has stopped for good."""
    with _lock:
        locked = _held.pop(port, None)
    if locked is not None:
        os.close(locked)  # drops the lock


def _reserve(directory: Path, port: int) -> int | None:
    """A descriptor of ``port``'s lock file, locked; None while another process holds it.

    The descriptor is not inherited by redis-server children (PEP 446), so the lock is this
    process's alone. The files are never removed: unlinking a lock file that another process
    is about to lock would let two processes hold "the" lock of one port.
    """
    locked = os.open(directory / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(locked, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(locked)
        return None
    return locked


def _lock_directory() -> Path:
    """This user's directory of port lock files, refused if someone else owns it."""
    directory = Path(tempfile.gettempdir()) / f"channels-ha-ports-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    status = directory.lstat()
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        raise SandboxError(f"{directory} is not a directory of this user; remove it")
    return directory


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True
