"""Opening a verified connection to the current master.

Every connection checks ``ROLE`` before it is used, and reads the server's ``run_id``: a new
one means a new master or a master restarted empty, whose data (group memberships) may be
gone. Under Sentinel a connection goes where the sentinels say (``SentinelLocator``).

Sync callers (``async_to_sync``) connect for every call, so what the process learned is used
first (see ``_hints``): the master the sentinels named last, believed only while it is the
same server run with the same replicas in sync as then, and scripts already loaded on a
server run, not loaded again. A server named only by a hint gets ``HINT_PATIENCE_S`` to
connect and answer; the caller then finds the master as it would have without the hint.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from ._constants import HINT_PATIENCE_S, REPLICA_LAG_MAX_S
from ._hints import KnownMaster, Remembered
from ._resp import Arg, Endpoint, FutureSink, ReplySink, RespProtocol, open_connection
from ._scripts import ALL as ALL_SCRIPTS
from ._server import (
    Announcements,
    Locator,
    SentinelLocator,
    ServerInfo,
    ServerSettings,
    all_replies,
    info_field,
    require_supported_version,
)
from .exceptions import ConnectionLost, RedisCommandError

logger = logging.getLogger("channels_ha.server")

SLOW_CONNECT_S = 0.5  # a connection slower than this is checked against the deployment


_ROLE = ("ROLE",)


def handshake_commands(
    settings: ServerSettings, load_scripts: bool, replication: bool = False
) -> list[tuple[Arg, ...]]:
    """AUTH, SELECT, naming, then what we need to know: ROLE, run_id, client id, and with
    ``replication`` the replicas."""
    commands: list[tuple[Arg, ...]] = []
    auth = settings.credentials.auth_command()
    if auth:
        commands.append(auth)
    if settings.db:
        commands.append(("SELECT", settings.db))
    commands.append(("CLIENT", "SETNAME", settings.client_name))
    commands += [_ROLE, ("INFO", "server"), ("CLIENT", "ID")]
    if replication:
        commands.append(("INFO", "replication"))
    if load_scripts:
        commands += _script_loads()
    return commands


def _script_loads() -> list[tuple[Arg, ...]]:
    return [("SCRIPT", "LOAD", script.source) for script in ALL_SCRIPTS]


async def connect_to_master(
    locator: Locator,
    settings: ServerSettings,
    sink: ReplySink,
    load_scripts: bool,
    announcements: Announcements | None = None,
    patience_s: float | None = None,
) -> tuple[RespProtocol, ServerInfo]:
    """A connection to the current master, handshaken and still open; ``sink`` gets what
    follows (a caller that awaits anything before using it checks ``closed`` again).

    A master that was frozen accepts connections but answers only when it wakes up, by then
    perhaps replaced (yet still saying ``master`` until the sentinels demote it): a
    connection that took long from the moment the master was named, or during which a new
    master was announced, is checked against the deployment again before it is used. The
    time spent asking the sentinels does not count: it says nothing of the master, and the
    answer is as fresh as the last sentinel's (a frozen sentinel cost every connection its
    timeout twice over). With ``patience_s`` (the locator's server is only a hint),
    connecting and the handshake get that long together.
    """
    try:
        return await _connect_to_master(
            locator, settings, sink, load_scripts, announcements, patience_s
        )
    except (ConnectionLost, RedisCommandError):
        raise
    except Exception as err:  # an odd reply or a bug: retried, never killing the caller's task
        raise ConnectionLost(
            f"connecting to {locator.describe()} failed unexpectedly ({type(err).__name__})"
        ) from None


async def _connect_to_master(
    locator: Locator,
    settings: ServerSettings,
    sink: ReplySink,
    load_scripts: bool,
    announcements: Announcements | None,
    patience_s: float | None,
) -> tuple[RespProtocol, ServerInfo]:
    switches = announcements.switches if announcements else 0
    memory = _master_memory(locator, settings)
    protocol, info, remember, named_at = await _reach_master(
        locator, settings, load_scripts, memory, patience_s
    )
    try:
        if announcements and announcements.switches != switches:
            raise ConnectionLost(
                f"a new master was announced while connecting to {info.endpoint.describe()}"
            )
        if time.monotonic() - named_at > SLOW_CONNECT_S:
            await _still_located(locator, info.endpoint)
    except BaseException:
        protocol.abort()
        if memory is not None:
            memory.forget()
        raise
    protocol.sink = sink
    if protocol.closed:  # lost after its last handshake reply: a failed attempt, retried
        raise ConnectionLost(f"{info.endpoint.describe()} closed the connection after handshake")
    remember()
    return protocol, info


def _master_memory(locator: Locator, settings: ServerSettings) -> Remembered[KnownMaster] | None:
    """Where the master the sentinels named last is kept; None where the master cannot move
    (a single node, a Cluster node: their addresses are given)."""
    return settings.hints.master if isinstance(locator, SentinelLocator) else None


async def _reach_master(
    locator: Locator,
    settings: ServerSettings,
    load_scripts: bool,
    memory: Remembered[KnownMaster] | None,
    patience_s: float | None,
) -> tuple[RespProtocol, ServerInfo, Callable[[], None], float]:
    """A connection to the master the sentinels named last, if it still looks as it did;
    else to the one the locator names now. And what to remember of it once it is in use:
    what the sentinels said (a hint that served stays as it is, its age counting on); and
    when (monotonic) the master it reached was named: before trying a hint, or once the
    locator answered."""
    known = None if memory is None else memory.get()
    if known is not None and memory is not None and isinstance(locator, SentinelLocator):
        named_at = time.monotonic()
        connection = await _connect_known(known, locator, settings, load_scripts)
        if connection is not None:
            return (*connection, _nothing, named_at)
        memory.forget(known)
    endpoint = await locator.locate()
    named_at = time.monotonic()
    replication = memory is not None
    protocol, info = await _connect(endpoint, settings, load_scripts, replication, patience_s)
    if memory is None:
        return protocol, info, _nothing, named_at
    learned = _worth_remembering(info, time.monotonic() - named_at)
    return protocol, info, functools.partial(_keep_or_forget, memory, learned), named_at


def _nothing() -> None:
    """Nothing to remember."""


async def _connect_known(
    known: KnownMaster, locator: SentinelLocator, settings: ServerSettings, load_scripts: bool
) -> tuple[RespProtocol, ServerInfo] | None:
    """A connection to the master the sentinels named last, if it is still the server run
    it was then, with the same replicas in sync; else None, and the sentinels are asked.

    ``ROLE`` alone would not do: a master handed over (``SENTINEL FAILOVER``) still says
    ``master`` for seconds after its replica was promoted, until the sentinels demote it,
    and writes it takes meanwhile are discarded. The promoted replica left it, though, and
    the others follow the new master. A master that is gone or slow costs at most
    ``HINT_PATIENCE_S`` (connecting and the handshake together) before the sentinels are
    asked."""
    endpoint = locator.master_at(known.host, known.port)  # with this layer's TLS settings
    try:
        protocol, info = await _connect(endpoint, settings, load_scripts, True, HINT_PATIENCE_S)
    except (ConnectionLost, RedisCommandError) as err:  # refusals too: maybe another server
        logger.debug("The master named last is not usable (%s); asking the sentinels", err)
        return None
    if info.run_id == known.run_id and info.replicas == known.replicas:
        return protocol, info
    logger.debug("The master named last is another server run or has other replicas now")
    protocol.abort()
    return None


def _worth_remembering(info: ServerInfo, connect_s: float) -> KnownMaster | None:
    """The master the sentinels just named, as a hint for the next connection: not one
    without a replica in sync (nothing would tell it was replaced), nor one slow to reach
    (waiting for it first would mostly be in vain)."""
    if not info.replicas or connect_s >= HINT_PATIENCE_S / 2:
        return None
    endpoint = info.endpoint
    return KnownMaster(endpoint.host, endpoint.port, info.run_id, info.replicas)


def _keep_or_forget(memory: Remembered[KnownMaster], known: KnownMaster | None) -> None:
    if known is None:
        memory.forget()
    else:
        memory.put(known)


async def _connect(
    endpoint: Endpoint,
    settings: ServerSettings,
    load_scripts: bool,
    replication: bool,
    patience_s: float | None = None,
) -> tuple[RespProtocol, ServerInfo]:
    """A connection to ``endpoint``, handshaken (a master: ROLE checked); the handshake's
    sink still receives what follows. With ``patience_s``, connecting and the handshake
    get that long together (each step's timeout is cut to what is left)."""
    deadline = None if patience_s is None else time.monotonic() + patience_s
    handshake = FutureSink()
    connect_s = _until(deadline, settings.connect_timeout_s)
    protocol = await open_connection(endpoint, handshake, connect_s)
    handshake.protocol = protocol
    try:
        info = await _handshake(handshake, endpoint, settings, load_scripts, replication, deadline)
    except BaseException:
        protocol.abort()
        raise
    return protocol, info


async def answers_as_master(endpoint: Endpoint, settings: ServerSettings) -> None:
    """Raises ConnectionLost unless ``endpoint`` can be reached and says ``ROLE`` master, as
    a connection would find it (the handshake of one, without loading scripts)."""
    try:
        protocol, _ = await _connect(endpoint, settings, load_scripts=False, replication=False)
    except (ConnectionLost, RedisCommandError):
        raise
    except Exception as err:  # an odd reply: as for connect_to_master
        raise ConnectionLost(
            f"checking {endpoint.describe()} failed unexpectedly ({type(err).__name__})"
        ) from None
    await protocol.aclose()


def _until(deadline: float | None, timeout_s: float) -> float:
    """``timeout_s``, cut to what is left until ``deadline`` (monotonic), if any."""
    if deadline is None:
        return timeout_s
    return round(max(min(timeout_s, deadline - time.monotonic()), 0.0), 3)


async def _still_located(locator: Locator, endpoint: Endpoint) -> None:
    """Raises ConnectionLost unless the deployment still names ``endpoint``: a master slow to
    answer may have been frozen and replaced meanwhile, and says ``master`` until it is
    demoted. The locator's best answer is used, as for any connection (the newest epoch
    among most sentinels), so a stale master that only a minority still names loses."""
    current = await locator.locate()
    if (current.host, current.port) != (endpoint.host, endpoint.port):
        raise ConnectionLost(f"the master moved while connecting to {endpoint.describe()}")


async def _handshake(
    client: FutureSink,
    endpoint: Endpoint,
    settings: ServerSettings,
    load_scripts: bool,
    replication: bool,
    deadline: float | None,
) -> ServerInfo:
    """The handshake; the scripts are loaded with it, unless the process loaded them on
    this server already (then only if the server run turns out to be another one). Each
    round trip is given reply_timeout, or what is left until ``deadline``."""
    loaded_on = settings.hints.scripts.run_at(endpoint.describe()) if load_scripts else None
    commands = handshake_commands(settings, load_scripts and loaded_on is None, replication)
    first = commands.index(_ROLE)
    replies = await all_replies(
        client,
        commands,
        _until(deadline, settings.reply_timeout_s),
        endpoint=endpoint,
        before_errors=lambda replies: require_supported_version(replies[first + 1], endpoint),
    )
    role, info, client_id = replies[first : first + 3]
    _require_master(role, endpoint)
    replicas = in_sync_replicas(replies[first + 3]) if replication else frozenset()
    number = int(client_id)  # type: ignore[call-overload]
    server = ServerInfo(endpoint, _parse_run_id(info), number, replicas)
    if load_scripts:
        if loaded_on not in (None, server.run_id):  # a new server run at that address
            timeout_s = _until(deadline, settings.reply_timeout_s)
            await all_replies(client, _script_loads(), timeout_s, endpoint=endpoint)
        settings.hints.scripts.loaded(endpoint.describe(), server.run_id)
    return server


def scripts_refused(settings: ServerSettings, server: ServerInfo | None, error: str) -> None:
    """After ``NOSCRIPT`` (``SCRIPT FLUSH`` emptied the server's script cache), the next
    connection to that server loads the scripts again."""
    if server is not None and error.startswith("NOSCRIPT"):
        settings.hints.scripts.forget(server.endpoint.describe(), server.run_id)


def in_sync_replicas(info: object) -> frozenset[str]:
    """The replicas (``host:port``) that an ``INFO replication`` reply shows online and
    acknowledging lately; a replica cut off (a partition) stops acknowledging."""
    if isinstance(info, BaseException):
        return frozenset()
    text = info.decode() if isinstance(info, bytes) else str(info)
    found = set()
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not (colon and key.startswith("slave") and key[5:].isdigit()):
            continue
        fields = dict(item.partition("=")[::2] for item in value.strip().split(","))
        lag = fields.get("lag", "")
        if fields.get("state") == "online" and lag.isdigit() and int(lag) <= REPLICA_LAG_MAX_S:
            found.add(f"{fields.get('ip')}:{fields.get('port')}")
    return frozenset(found)


def _require_master(role: object, endpoint: Endpoint) -> None:
    if not isinstance(role, list) or not role or role[0] != b"master":
        kind = role[0].decode() if isinstance(role, list) and role else "unknown"
        raise ConnectionLost(f"{endpoint.describe()} is a {kind}, not the master")


def _parse_run_id(info: object) -> str:
    return info_field(info, "run_id") or ""
