"""Whether a failed cache operation may have run on Redis: retrying it could change its answer.

The cache retries an operation through a failover. That is right when the command never
reached Redis (no connection, no master yet, a refusal such as ``READONLY``) and for an
operation whose answer a second run does not change (``get``, ``set``...). It is wrong when
the reply was lost after Redis may have run the command (a reply timeout on a busy server,
a connection cut mid-reply): a retried ``add`` answered False for the value its first run
stored (``if cache.add(lock, ...)`` then skipped the work everywhere), a retried ``delete``
False for the key it deleted, a retried ``incr`` counted twice.

redis-py raises the same ``TimeoutError`` / ``ConnectionError`` for a handshake cut while
connecting as for a reply lost, so the stage is read from where the error was raised: a
frame of redis-py's connecting (the pool handing out a connection, ``connect``, its health
check, a Cluster client re-reading its slots) means the command was not sent yet. Anything
else is taken as sent, so an unknown path fails safe (raised, not retried twice).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import redis

__all__ = ["ANSWER_CHANGES_ON_RETRY", "outcome_unknown"]

#: Operations of Django's cache client whose answer or effect a second run changes:
#: ``add`` (True, then False), ``delete`` (True, then False), ``incr`` (``decr`` calls it;
#: its INCRBY counts twice; the cache runs its EXISTS check apart, retried), ``touch``
#: (``PERSIST`` answers False the second time), ``clear`` (the keys its first run deleted
#: are not counted). ``get_or_set`` ignores ``add``'s answer but goes through it. The others
#: (``get``, ``set``, ``get_many``, ``set_many``, ``delete_many`` (answers None),
#: ``has_key``) give what one run gives.
ANSWER_CHANGES_ON_RETRY = frozenset({"add", "delete", "incr", "touch", "clear"})

# redis-py's functions that run before a command is written: the pool handing out (and
# connecting) a connection, the handshake, the health check's PING, Cluster's slot refresh.
_CONNECTING = frozenset(
    {"get_connection", "connect", "connect_check_health", "check_health", "initialize"}
)


def outcome_unknown(err: BaseException, handled: BaseException | None = None) -> bool:
    """True if ``err`` (or an error it was raised while handling) is a connection lost or a
    reply timed out after a command may have reached Redis.

    ``handled`` is the exception being handled when the operation began (``sys.exc_info()``):
    the chain stops there, since it and what it chains to are the application's (a lost reply
    it is handling in ``except RedisUnavailable: cache.delete(lock)``), not this operation's.
    """
    return any(_lost_after_sending(error) for error in _chain(err, handled))


def _lost_after_sending(err: BaseException) -> bool:
    if isinstance(err, redis.ResponseError):  # Redis answered: the command was refused
        return False
    if not isinstance(err, redis.ConnectionError | redis.TimeoutError):
        return False  # e.g. a Cluster routing error, raised before anything was sent
    if isinstance(err.__context__, redis.ResponseError):
        return False  # raised on a reply: redis-py's Sentinel turns READONLY into this
    return not _redis_frames(err) & _CONNECTING


def _redis_frames(err: BaseException) -> set[str]:
    """Names of redis-py's functions the error went through."""
    return {
        frame.f_code.co_name
        for frame, _ in traceback.walk_tb(err.__traceback__)
        if str(frame.f_globals.get("__name__", "")).startswith("redis.")
    }


def _chain(err: BaseException, stop: BaseException | None) -> Iterator[BaseException]:
    """The error and those it was raised from or while handling (Cluster re-reads its slots
    after a lost reply, and that can fail in turn), up to ``stop``, excluded."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and current is not stop and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
