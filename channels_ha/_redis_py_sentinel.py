"""redis-py's ``Sentinel``, finding the master by the channel layer's rule for refusals.

redis-py asks the sentinels ``SENTINEL MASTERS`` one after the other and, if none names a
healthy master, raises ``MasterNotFoundError`` with the refusals only in its text (a refused
password as a repr, an unknown master name not at all). The cache retried that until its
failover timeout, for a master name no failover would make known. Here each sentinel is asked
``SENTINEL MASTER <name>``, as the layer does, its refusal is read from redis-py's exception
type, and ``_sentinel_refusals``'s rule decides: :class:`SentinelsRefused` (a
``MasterNotFoundError``, so callers of redis-py see the type they know) when the
configuration is wrong, ``MasterNotFoundError`` when it is worth asking again.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel
from redis.sentinel import MasterNotFoundError

from ._sentinel_refusals import (
    SentinelRefusal,
    configuration_refused,
    redis_py_refusal,
    refusal_message,
)

__all__ = ["RuledSentinel", "SentinelsRefused"]


class SentinelsRefused(MasterNotFoundError):
    """Most sentinels turned the configuration away and none named a master; the message
    says what each refused and which settings to check (never a password)."""


class RuledSentinel(redis.sentinel.Sentinel):
    """``redis.sentinel.Sentinel`` whose ``discover_master`` applies the layer's rule."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        """The first sentinel naming a healthy master wins, and is asked first next time (as
        in redis-py); else SentinelsRefused or MasterNotFoundError, by the rule."""
        refusals: list[SentinelRefusal] = []
        errors: list[str] = []
        for number, sentinel in enumerate(self.sentinels):
            where = _address(sentinel)
            try:
                state: Any = sentinel.sentinel_master(service_name)  # a dict (redis-py: untyped)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as err:
                refusal = redis_py_refusal(where, err)
                if refusal is not None:
                    refusals.append(refusal)
                elif isinstance(err, redis.ResponseError):
                    raise  # as redis-py: a reply no retry changes (not a sentinel?)
                else:
                    errors.append(f"{where}: {type(err).__name__}: {err}")
                continue
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
            errors.append(f"{where}: master {service_name!r} is down or not settled")
        if configuration_refused(refusals, len(self.sentinels)):
            raise SentinelsRefused(refusal_message(refusals, len(self.sentinels), service_name))
        said = errors + [f"{r.sentinel}: {r.reason or 'no such master'}" for r in refusals]
        raise MasterNotFoundError(f"No master found for {service_name!r}: {'; '.join(said)}")


def _address(sentinel: Any) -> str:
    """``host:port`` of a sentinel's client (redis-py keeps them in its pool's kwargs)."""
    kwargs = sentinel.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"
