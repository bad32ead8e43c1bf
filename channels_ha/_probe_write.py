"""The write both probes try: does the master take writes, as the layer's sends need?

ROLE and PING answer while Redis refuses every write: used memory past ``maxmemory`` under
``noeviction`` (OOM), fewer good replicas than ``min-replicas-to-write`` (NOREPLICAS), a
failed background save under ``stop-writes-on-bgsave-error`` (MISCONF). Sends then fail (at
once, or after ``failover_timeout`` of retries), while a probe of ROLE and PING said 200.

The probes send ``SET <prefix>:probe "" XX``. Redis flags SET as a write that memory pressure
denies, as it treats the layer's scripts, so it refuses it for each of these reasons before
running it; accepted, it finds no key (``XX`` sets only one that exists) and writes nothing:
no memory, no replication, no AOF line, however many pods probe however often. The key is
under the layer's prefix and SET is a command the layer runs (its epoch and inbox limits), so
a user whose ACL lets the layer work may send it; for a user who may not (``NOPERM``) the
check is not made, and nothing fails for it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from ._constants import DEFAULT_PREFIX

__all__ = ["WriteCheck", "check_write", "probe_key", "write_command"]


def probe_key(prefix: str = DEFAULT_PREFIX, tag: str | None = None) -> str:
    """The key the write names, which nothing creates; ``tag`` puts it in a slot a Cluster
    master owns (see ``_slots.tag_for_slot``)."""
    return f"{prefix}:probe" if tag is None else f"{prefix}:probe:{{{tag}}}"


def write_command(key: str) -> tuple[str, ...]:
    """A write refused as sends are, and a no-op when accepted (see the module docstring)."""
    return ("SET", key, "", "XX")


@dataclass(frozen=True)
class WriteCheck:
    """What the write found: ``writable`` True (taken), False (refused: ``detail`` is Redis's
    reply) or None (not checked: ``detail`` says why)."""

    writable: bool | None
    detail: str | None = None


async def check_write(reply: Awaitable[Any]) -> WriteCheck:
    """The outcome of the write whose ``reply`` this awaits. A connection failure or a
    timeout propagates: the master did not answer, which the caller reports as such."""
    try:
        await reply
    except redis.exceptions.NoPermissionError as err:
        return WriteCheck(None, f"the user may not write the probe key ({_reply_text(err)})")
    except (redis.exceptions.AskError, redis.exceptions.MovedError) as err:
        # (Response errors too.) The probe key's slot is migrating (a reshard moves a
        # master's lowest slots first) or the map read moved on: the layer follows these.
        return WriteCheck(None, f"the probe key's slot is moving ({_reply_text(err)})")
    except redis.exceptions.ResponseError as err:
        return WriteCheck(False, _reply_text(err))
    return WriteCheck(True)


def _reply_text(err: redis.exceptions.RedisError) -> str:
    """The error reply as Redis sent it: redis-py strips the code ("OOM", "NOPERM") of the
    replies it has a class for. Redis's replies name a user at most, never a password."""
    code = err.status_code
    return f"{code} {err}" if code else str(err)
