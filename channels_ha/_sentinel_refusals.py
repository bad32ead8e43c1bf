"""When the sentinels' answers mean a wrong configuration rather than a failover.

A sentinel that refuses the credentials (``WRONGPASS``, ``NOAUTH``), refuses the user the
command (``NOPERM``) or knows no master by the configured name answers the same after any
failover: waiting ``failover_timeout`` for it (30 s by default, per operation) only hides the
cause. A sentinel that is unreachable or slow may be restarting, and is waited for. The rule,
shared by the channel layer (``_server``) and the Django cache (``_redis_py_sentinel``):

    the configuration is wrong when no sentinel named a master and more than half of the
    configured sentinels refused its credentials or its user a command;

the caller then raises :class:`~channels_ha.RedisCommandError` at once. Fewer refusals are
waited out: in a rolling restart one sentinel at a time is new, and may not know the master
(or the password) yet while another is down; a working deployment must not fail for that. A
majority refusing is no passing state: a failover needs a majority of sentinels that know
the master, and the majority turns away this configuration. The probes word each refusal
the same way (``refusal_text``, ``what_refused``, ``ADVICE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

__all__ = [
    "ADVICE",
    "SENTINEL_LOGIN",
    "RefusalKind",
    "SentinelRefusal",
    "configuration_refused",
    "redis_py_refusal",
    "refusal_kind",
    "refusal_message",
    "refusal_text",
    "what_refused",
]

RefusalKind = Literal["credentials", "permission", "master"]

# Which settings each refusal points at (a data node's login: ``_server.DATA_LOGIN``).
SENTINEL_LOGIN = (
    "check 'sentinel_username'/'sentinel_password' (or sentinel_kwargs 'username'/'password')"
)
ADVICE: dict[RefusalKind, str] = {
    "credentials": SENTINEL_LOGIN,
    "permission": (
        "the sentinel user ('sentinel_username') needs SENTINEL MASTER, CLIENT SETNAME, "
        "SUBSCRIBE and PING"
    ),
    "master": "check the master name (the path of the redis+sentinel:// URL, or 'master_name')",
}
_NO_SUCH_MASTER = "No such master"  # Sentinel's reply to SENTINEL MASTER <unknown name>


@dataclass(frozen=True)
class SentinelRefusal:
    """A sentinel that answered, and turned this configuration away."""

    sentinel: str  # its address, as the caller describes it
    kind: RefusalKind
    reason: str = ""  # the sentinel's own words (a code, an error): never a password


def refusal_kind(error: str) -> RefusalKind | None:
    """What an error reply of a sentinel (its text) refused; None for any other error."""
    if error.startswith("NOPERM"):
        return "permission"
    if error.startswith(("WRONGPASS", "NOAUTH")) or "AUTH" in error:
        return "credentials"
    if _NO_SUCH_MASTER in error:
        return "master"
    return None


def redis_py_refusal(sentinel: str, err: BaseException) -> SentinelRefusal | None:
    """The refusal a redis-py error from a sentinel stands for; None for any other error
    (redis-py strips the error code: its exception type says it)."""
    reason = f"{type(err).__name__}: {str(err).rstrip('.')}"
    if isinstance(err, AuthenticationError):
        return SentinelRefusal(sentinel, "credentials", reason)
    if isinstance(err, NoPermissionError):
        return SentinelRefusal(sentinel, "permission", reason)
    if isinstance(err, ResponseError):
        kind = refusal_kind(str(err))
        return None if kind is None else SentinelRefusal(sentinel, kind, reason)
    return None


def what_refused(kind: RefusalKind, master_name: str) -> str:
    """What a sentinel did, for one that did it: "refused authentication"..."""
    if kind == "credentials":
        return "refused authentication"
    if kind == "permission":
        return "refused the user a command"
    return f"does not know master {master_name!r}"


def refusal_text(refusal: SentinelRefusal, master_name: str) -> str:
    """What one sentinel refused, in its words, and what to check: "refused authentication
    (WRONGPASS); check 'sentinel_username'/..." (the probes' wording for it)."""
    said = what_refused(refusal.kind, master_name)
    if refusal.reason and refusal.kind != "master":  # "No such master" says no more
        said += f" ({refusal.reason})"
    return f"{said}; {ADVICE[refusal.kind]}"


def configuration_refused(refusals: Sequence[SentinelRefusal], sentinels: int) -> bool:
    """Whether ``refusals``, when no sentinel named a master, mean a wrong configuration:
    more than half of the ``sentinels`` configured refused it (see the module's rule).
    Not knowing the master does not count: sentinels that an operator sets up after they
    start (``SENTINEL MONITOR``) know none until then, and the deployment is coming up, not
    wrong; it is waited out, and named if no master comes."""
    return 2 * sum(refusal.kind != "master" for refusal in refusals) > sentinels


def refusal_message(refusals: Sequence[SentinelRefusal], sentinels: int, master_name: str) -> str:
    """The error for ``refusals`` that the rule says are a wrong configuration: what each
    sentinel refused, and which settings to check."""
    groups: dict[tuple[RefusalKind, str], list[str]] = {}
    for refusal in refusals:
        groups.setdefault((refusal.kind, refusal.reason), []).append(refusal.sentinel)
    said = "; ".join(
        f"{_refused(kind, reason, master_name)} at {', '.join(where)}"
        for (kind, reason), where in groups.items()
    )
    kinds = dict.fromkeys(refusal.kind for refusal in refusals)  # in order, once each
    advice = "; ".join(ADVICE[kind] for kind in kinds)
    return (
        f"The sentinels refused the configuration ({len(refusals)} of {sentinels}, and none "
        f"named a master; a failover would not change that): {said}; {advice}."
    )


def _refused(kind: RefusalKind, reason: str, master_name: str) -> str:
    if kind == "credentials":
        return f"refused the credentials ({reason})"
    if kind == "permission":
        return f"refused the user a command ({reason})"
    return f"no master {master_name!r} known"
