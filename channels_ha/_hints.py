"""What a process remembers of a deployment from one event loop to the next.

Sync code (``async_to_sync``: a Django view, a Celery task) runs each call in an event loop of
its own, and so in a session of its own, which connects anew. Knowing nothing, every such call
asked every sentinel where the master is, read a Cluster's slot map from every node, and
loaded every server script again (8 ``SCRIPT LOAD`` per connection). What one session learns
is kept here for the whole process, per configuration (compared by value, passwords included:
a configuration with other credentials shares nothing), and is a hint only: each connection
still checks what it is told (a hinted master by its server run and its replicas, see
``_server``; a slot map by the nodes' own redirections and ``ROLE``, see ``_cluster``; loaded
scripts by the server run they were loaded on, and by ``NOSCRIPT``). A hint found wrong is
forgotten, and the session finds out as it did without one. A master or a slot map is not
used once ``HINT_MAX_AGE_S`` old: some changes pass every check (sentinels pointed at another
master without a failover), and nothing else would ever bring the process to ask again.

The threads of the event loops share these memories, each behind a lock. A forked child
starts with none: a thread of the parent may have held a lock at the fork.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ._constants import HINT_MAX_AGE_S, HINTED_CONFIGS_MAX, SCRIPT_HOSTS_MAX

T = TypeVar("T")


class Remembered(Generic[T]):
    """One value, replaced whole; forgotten ``HINT_MAX_AGE_S`` after it was put."""

    __slots__ = ("_lock", "_put_at", "_value")

    def __init__(self) -> None:
        self._value: T | None = None
        self._put_at = 0.0  # monotonic
        self._lock = threading.Lock()

    def get(self) -> T | None:
        with self._lock:
            if self._value is not None and time.monotonic() - self._put_at >= HINT_MAX_AGE_S:
                self._value = None
            return self._value

    def put(self, value: T) -> None:
        """``value`` was learned just now (a value merely used again is not put back: its
        age goes on counting from when it was learned)."""
        with self._lock:
            self._value, self._put_at = value, time.monotonic()

    def forget(self, value: T | None = None) -> None:
        """Forgets the value; with ``value``, only if it still is that one (a newer one, put
        by another thread meanwhile, stays)."""
        with self._lock:
            if value is None or self._value == value:
                self._value = None


class LoadedScripts:
    """The server run, per address (``host:port``), on which the scripts were loaded.

    A server keeps its scripts until it stops or someone runs ``SCRIPT FLUSH``: a new run at
    the address has none, and ``NOSCRIPT`` says they were flushed (see ``forget``)."""

    __slots__ = ("_lock", "_runs")

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self._lock = threading.Lock()

    def run_at(self, address: str) -> str | None:
        with self._lock:
            return self._runs.get(address)

    def loaded(self, address: str, run_id: str) -> None:
        with self._lock:
            if address not in self._runs and len(self._runs) >= SCRIPT_HOSTS_MAX:
                self._runs.clear()  # nodes come and go (a Cluster's, after failovers)
            self._runs[address] = run_id

    def forget(self, address: str, run_id: str) -> None:
        """The server run at ``address`` answered NOSCRIPT: the next connection loads them."""
        with self._lock:
            if self._runs.get(address) == run_id:
                del self._runs[address]


@dataclass(frozen=True)
class KnownMaster:
    """The master the sentinels last named, and what it looked like then: its server run, and
    the replicas in sync with it (``host:port``; never empty). Its address only: each layer
    reaches it with its own TLS settings (an equal configuration's files may hold rotated
    certificates since)."""

    host: str
    port: int
    run_id: str
    replicas: frozenset[str]


@dataclass(frozen=True)
class SlotMap:
    """A Cluster's slot map as a router read it: each slot's master (``host:port``), and
    what follows from it, kept too (deriving it again took a sync call 1 ms)."""

    owners: tuple[str | None, ...]
    masters: frozenset[str]
    first_slots: Mapping[str, int]  # each master's first slot (where its epoch key lives)
    # Each master's replicas: who else can say whether a master that answers late still
    # owns its slots (a router may know no other master).
    replicas: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, owners: Sequence[str | None], replicas: Mapping[str, frozenset[str]] | None = None
    ) -> SlotMap:
        first_slots: dict[str, int] = {}
        for slot, owner in enumerate(owners):
            if owner is not None:
                first_slots.setdefault(owner, slot)
        return cls(tuple(owners), frozenset(first_slots), first_slots, dict(replicas or {}))


@dataclass(eq=False)
class DeploymentHints:
    """What sessions of the process learned of one deployment."""

    scripts: LoadedScripts = field(default_factory=LoadedScripts)
    master: Remembered[KnownMaster] = field(default_factory=Remembered)  # Sentinel
    slot_map: Remembered[SlotMap] = field(default_factory=Remembered)  # Cluster


class _Registry:
    """The hints of each configuration the process uses."""

    def __init__(self) -> None:
        self._hints: dict[Hashable, DeploymentHints] = {}
        self._lock = threading.Lock()

    def of(self, config: Hashable) -> DeploymentHints:
        with self._lock:
            hints = self._hints.pop(config, None)  # and in again: the oldest go first
            if hints is None:
                hints = DeploymentHints()
                if len(self._hints) >= HINTED_CONFIGS_MAX:
                    del self._hints[next(iter(self._hints))]
            self._hints[config] = hints
            return hints

    def forget(self) -> None:
        """In a forked child: a parent's thread may have held a lock at the fork."""
        self._hints, self._lock = {}, threading.Lock()


_REGISTRY = _Registry()
# Registered at import, before the layer registers its own hook (it imports this module
# first): hooks run in registration order, so layers rebuilt in a child find no hints.
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_REGISTRY.forget)


def hints_for(config: Hashable) -> DeploymentHints:
    """The process's hints for ``config`` (a :class:`~channels_ha.RedisConfig`): the same
    object for equal configurations."""
    return _REGISTRY.of(config)
