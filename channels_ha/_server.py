"""Where the master is, and how to talk to it: credentials, settings, replies.

After a failover, redis-py's per-command retry reconnects to the address it already had, which
may be the old master, now a replica or dead (redis-py issue 3874). Here every (re)connection
asks the deployment where the master is (``Locator``), and checks what it reached (see
``_connection``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ._answer_window import answers_in_window
from ._hints import DeploymentHints
from ._resp import (
    Arg,
    Endpoint,
    FutureSink,
    open_client,
    pack,
)
from ._sentinel_refusals import (
    SentinelRefusal,
    configuration_refused,
    refusal_kind,
    refusal_message,
    refusal_text,
)
from ._timeouts import within
from .exceptions import ConnectionLost, RedisCommandError, RedisUnavailable

logger = logging.getLogger("channels_ha.server")

# Once most sentinels answered, one of them naming a master, the others get this long: a
# frozen or black-holed sentinel would hold every connection for its timeout.
SENTINEL_ANSWER_WINDOW_S = 0.25


# Error replies that mean "not executed here; find the current master and try there": a
# demoted master (READONLY), a replica still loading or cut off (LOADING, MASTERDOWN),
# blocked clients kicked on a role change (UNBLOCKED), a script cache emptied by a restart
# (NOSCRIPT), a server busy with a long script (BUSY, past busy-reply-threshold; the space
# keeps out BUSYKEY and BUSYGROUP), and Cluster redirections.
RETRY_ERRORS = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "BUSY ",
    "UNBLOCKED",
    "NOSCRIPT",
    "TRYAGAIN",
    "NOREPLICAS",
)
REDIRECT_ERRORS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


@dataclass(frozen=True)
class Credentials:
    """AUTH arguments; ``repr`` never shows the password."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def auth_command(self) -> tuple[Arg, ...] | None:
        """AUTH, encoded here: an encoding error would carry the password in its repr. A
        user without a password still authenticates, with an empty one (an ACL ``nopass``
        user), as redis-py does for ``password=""``. A password without a user is the
        ``default`` user's, named as redis-py 8 names it (``HELLO 3 AUTH default ...``): a
        server whose default user has no password then accepts it, where the one-argument
        ``AUTH`` is refused, and a channels_redis URL that carries a password for such a
        server keeps working."""
        if self.password is None and not self.username:
            return None
        try:
            password = (self.password or "").encode()
            username = self.username.encode() if self.username else None
        except UnicodeEncodeError:
            raise ConnectionLost("the username or password is not valid UTF-8") from None
        return ("AUTH", username or b"default", password)


@dataclass(frozen=True)
class ServerSettings:
    """How to talk to data nodes, independent of how they are found."""

    credentials: Credentials = Credentials()
    db: int = 0
    connect_timeout_s: float = 2.0
    reply_timeout_s: float = 5.0
    failover_timeout_s: float = 30.0
    client_name: str = "channels-ha"
    # Not a setting: what the process learned of the deployment, shared by equal ones.
    hints: DeploymentHints = field(default_factory=DeploymentHints, compare=False, repr=False)


@dataclass(frozen=True)
class ServerInfo:
    """What the handshake learned about the server a connection reached."""

    endpoint: Endpoint
    run_id: str
    client_id: int
    # The replicas in sync with it (``host:port``): read under Sentinel only.
    replicas: frozenset[str] = frozenset()


class Locator(Protocol):
    """Answers "where is the master now?"."""

    async def locate(self) -> Endpoint: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class FixedLocator:
    """A single node, or one node of a Cluster: the master is always the same address."""

    endpoint: Endpoint
    kind: str = "single node"  # what errors call it

    async def locate(self) -> Endpoint:
        return self.endpoint

    def describe(self) -> str:
        return f"{self.kind} {self.endpoint.describe()}"


@dataclass
class SentinelLocator:
    """Asks every sentinel where the master is, and believes the newest configuration.

    Right after a failover the sentinels disagree for a moment (the others learn from the
    one that led it), and the old master stays writable until it is demoted: a client that
    asked a sentinel not yet up to date would write where the writes get discarded. Each
    answer carries the configuration epoch it comes from; the highest one wins.

    A frozen or black-holed sentinel (one in the pod of a master whose node failed) answers
    nothing until the timeout, and every connection would wait for it. So once most
    sentinels answered, one of them naming a master, the others get
    ``SENTINEL_ANSWER_WINDOW_S`` (see ``_answer_window``), as the Cluster slot map does;
    among the answers in by then the newest epoch still wins. A sentinel still silent then is
    frozen, cut off or overloaded, not the leader of a failover that just happened: that one
    is alive and answers in milliseconds (and tells the others its configuration within a
    second or two).
    """

    sentinels: Sequence[Endpoint]
    master_name: str
    sentinel_credentials: Credentials
    master_template: Endpoint  # TLS settings for the data node; host and port are replaced
    connect_timeout_s: float = 2.0
    reply_timeout_s: float = 2.0  # how long a sentinel's reply may take (see _specs)

    async def locate(self) -> Endpoint:
        """The master the best answer names. When no sentinel names one and most of them
        turn the configuration away (refused credentials or commands: see
        ``_sentinel_refusals``), RedisCommandError at once: no failover cures that."""
        answers = await self._answers(SENTINEL_ANSWER_WINDOW_S)
        views = [answer for answer in answers.values() if isinstance(answer, _View)]
        if not views:
            refusals = [a for a in answers.values() if isinstance(a, SentinelRefusal)]
            if configuration_refused(refusals, len(self.sentinels)):
                raise RedisCommandError(
                    refusal_message(refusals, len(self.sentinels), self.master_name)
                )
            errors = "; ".join(
                f"{self.sentinels[index].describe()}: {self._said(answer)}"
                for index, answer in sorted(answers.items())
            )
            raise ConnectionLost(f"no sentinel gave a master address ({errors})")
        best = max(views, key=lambda view: view.rank(views))
        return self.master_at(best.host, best.port)

    async def agreed(self) -> Endpoint:
        """The master that every sentinel answering names, settled, when most of them answer;
        else ConnectionLost, saying why.

        ``locate`` picks the best of differing answers, as a connection must; a connection
        that already works is moved only on this stricter answer (see ``_recheck``): while a
        failover runs the sentinels disagree, or flag it, and while a master is down they
        flag that. Every sentinel is waited for: nothing waits on this answer, and a slow
        one that disagrees is a reason to stay."""
        answers = await self._answers(None)
        views = [answer for answer in answers.values() if isinstance(answer, _View)]
        if len(views) * 2 <= len(self.sentinels):
            raise ConnectionLost(f"{len(views)} of {len(self.sentinels)} sentinels answered")
        named = sorted({f"{view.host}:{view.port}" for view in views})
        if len(named) > 1:
            raise ConnectionLost(f"the sentinels name different masters ({', '.join(named)})")
        flagged = sorted({flag for view in views for flag in view.flags & _UNSETTLED})
        if flagged:
            raise ConnectionLost(f"the sentinels flag {named[0]} {','.join(flagged)}")
        return self.master_at(views[0].host, views[0].port)

    def master_at(self, host: str, port: int) -> Endpoint:
        """The data node at ``host:port``, reached with this configuration's TLS settings."""
        return _with_address(self.master_template, host, port)

    async def _answers(
        self, window_s: float | None
    ) -> dict[int, _View | SentinelRefusal | BaseException]:
        """The sentinels' answers (by their index), asked at once: with ``window_s``, those
        in by then once most sentinels answered and one named a master; else every one."""
        asks = {index: self._ask(sentinel) for index, sentinel in enumerate(self.sentinels)}
        if window_s is None:
            replies = await asyncio.gather(*asks.values(), return_exceptions=True)
            return dict(zip(asks, replies, strict=True))
        answers, _ = await answers_in_window(
            asks, lambda answer: isinstance(answer, _View), window_s
        )
        return answers

    async def _ask(self, sentinel: Endpoint) -> _View | SentinelRefusal:
        """The master as ``sentinel`` sees it, or how it turned the configuration away."""
        client = await open_client(sentinel, self.connect_timeout_s)
        replies: list[object] = []
        try:
            auth = self.sentinel_credentials.auth_command()
            commands = [auth] if auth else []
            commands.append(("SENTINEL", "MASTER", self.master_name))
            await all_replies(
                client,
                commands,
                self.reply_timeout_s,
                endpoint=sentinel,
                before_errors=replies.extend,
            )
        except RedisCommandError:
            refusal = _refusal_among(sentinel, replies)
            if refusal is None:
                raise
            return refusal
        finally:
            assert client.protocol is not None
            await client.protocol.aclose()
        view = _pairs(replies[-1])
        if "ip" not in view:
            return SentinelRefusal(sentinel.describe(), "master")
        flags = set(view.get("flags", "").split(","))
        return _View(int(view.get("config-epoch", "0")), view["ip"], int(view["port"]), flags)

    def _said(self, answer: _View | SentinelRefusal | BaseException) -> str:
        if isinstance(answer, SentinelRefusal):
            return refusal_text(answer, self.master_name)
        return str(answer)

    def describe(self) -> str:
        names = ", ".join(s.describe() for s in self.sentinels)
        return f"sentinel master {self.master_name!r} via {names}"


# A sentinel's flags for a master that a failover is replacing, or that is down.
_UNSETTLED = frozenset({"failover_in_progress", "s_down", "o_down"})


@dataclass(frozen=True)
class _View:
    """One sentinel's answer: the master's address, from which configuration epoch."""

    epoch: int
    host: str
    port: int
    flags: frozenset[str] | set[str]

    def rank(self, views: Sequence[_View]) -> tuple[int, bool, int]:
        """Newest epoch first; then a settled view (the sentinel leading a failover still
        names the old master until it ends); then the most sentinels agreeing."""
        settled = not self.flags & _UNSETTLED
        votes = sum(1 for view in views if (view.host, view.port) == (self.host, self.port))
        return self.epoch, settled, votes


def _pairs(reply: object) -> dict[str, str]:
    """A flat ``[key, value, ...]`` reply as a dict of strings."""
    if not isinstance(reply, list):
        return {}
    items = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


def _refusal_among(sentinel: Endpoint, replies: list[object]) -> SentinelRefusal | None:
    """The refusal among a sentinel's replies (the first error reply), if it is one."""
    error = next((reply for reply in replies if isinstance(reply, RedisCommandError)), None)
    kind = None if error is None else refusal_kind(str(error))
    if kind is None:
        return None
    return SentinelRefusal(sentinel.describe(), kind, str(error).split(" ", 1)[0])


def give_up(
    topology: str, settings: ServerSettings, waited_s: float, last_error: object
) -> RedisUnavailable:
    """The error raised once the failover timeout has passed without a usable master."""
    error = RedisUnavailable(
        f"No usable Redis master for {settings.failover_timeout_s:g} s (failover_timeout; "
        f"waited {waited_s:.1f} s) on {topology}; last error: {last_error}"
    )
    logger.error("%s", error, extra={"event": "gave_up", "waited_s": round(waited_s, 3)})
    return error


def _with_address(template: Endpoint, host: str, port: int) -> Endpoint:
    return Endpoint(
        host=host,
        port=port,
        ssl_context=template.ssl_context,
        server_hostname=template.server_hostname or host,
    )


@dataclass
class Announcements:
    """How many new masters the sentinels announced (counted by the shard's watch)."""

    switches: int = 0


MINIMUM_REDIS = (7, 0)  # BLMPOP, LPOS ... RANK, scripts with a #!lua shebang


def require_supported_version(info: object, endpoint: Endpoint) -> None:
    """Raises RedisCommandError for a server older than Redis 7, whose refusals of the
    scripts and of BLMPOP would otherwise be the first, puzzling, error."""
    version = info_field(info, "redis_version")
    if too_old(version):
        raise RedisCommandError(
            f"Redis at {endpoint.describe()} is version {version}; channels-ha needs Redis "
            f"{'.'.join(map(str, MINIMUM_REDIS))} or newer (BLMPOP, server scripts)."
        )


async def all_replies(
    client: FutureSink,
    commands: Sequence[Sequence[Arg]],
    timeout_s: float,
    *,
    endpoint: Endpoint,
    before_errors: Callable[[list[object]], None] | None = None,
) -> list[object]:
    """Pipelines the commands; raises the first error once every reply is in.
    ``before_errors`` sees the replies first, to raise a better explanation of them (or to
    keep them: a sentinel's refusal is read from its reply)."""
    try:  # all encoded before any is sent: no reply left without a reader
        packed = [pack(*command) for command in commands]
    except (TypeError, ValueError) as err:  # UnicodeEncodeError included; its repr is secret
        raise ConnectionLost(
            f"a command for {endpoint.describe()} could not be encoded ({type(err).__name__})"
        ) from None
    futures = [client.submit_packed(command) for command in packed]
    try:
        replies = await within(asyncio.gather(*futures, return_exceptions=True), timeout_s)
    except asyncio.TimeoutError as err:
        raise ConnectionLost(f"{endpoint.describe()} gave no reply within {timeout_s} s") from err
    if before_errors is not None:
        before_errors(replies)
    for reply in replies:
        if isinstance(reply, RedisCommandError):
            raise _explain_handshake_error(reply, endpoint) from reply
        if isinstance(reply, BaseException):
            raise reply
    return replies


# Which settings a refused login points at; the cache words its refusals the same way (a
# sentinel's: see _sentinel_refusals).
DATA_LOGIN = "check 'username'/'password'"


def _explain_handshake_error(err: RedisCommandError, endpoint: Endpoint) -> Exception:
    text = str(err)
    if text.startswith("NOPERM"):  # names the user and the command, never a password
        return RedisCommandError(
            f"Redis at {endpoint.describe()} accepted the credentials but refused a command "
            f"the channel layer runs on connecting ({text}); the user needs AUTH, SELECT, "
            "ROLE, INFO, CLIENT SETNAME, CLIENT ID and SCRIPT LOAD (on Cluster also CLUSTER "
            "SLOTS)."
        )
    if text.startswith(("WRONGPASS", "NOAUTH")) or "AUTH" in text:
        return RedisCommandError(
            f"Redis at {endpoint.describe()} refused the credentials from the configuration "
            f"({text.split(' ', 1)[0]}); {DATA_LOGIN}."
        )
    if text.startswith(("LOADING", "MASTERDOWN", "BUSY")):
        return ConnectionLost(f"{endpoint.describe()} is not ready: {text}")
    return err


def too_old(version: str | None) -> bool:
    """Whether a ``redis_version`` is below :data:`MINIMUM_REDIS` (None: not known)."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version or "")[:2])
    return bool(numbers) and numbers < MINIMUM_REDIS


def info_field(info: object, name: str) -> str | None:
    """A field of an ``INFO`` reply (bytes or text), or None (an error reply included)."""
    if isinstance(info, BaseException):
        return None
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key == name:
            return value.strip()
    return None
