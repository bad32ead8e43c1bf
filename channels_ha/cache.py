"""``channels_ha.cache.RedisCache``: Django's Redis cache on the channel layer's configuration.

Django's own backend (``django.core.cache.backends.redis``) talks to fixed addresses. This one
takes the validated configuration that :func:`channels_ha.channel_layers` uses, so one
single-node, Sentinel or Cluster deployment serves both, and it waits out a failover: an
operation that fails on a connection-level error is run again, with backoff, until the
configuration's failover timeout, unless Redis may have run it and a second run would answer
differently (see ``_cache_doubt``). Every attempt takes a fresh connection, which asks the
sentinels where the master is; redis-py's own per-command retry would reconnect to the address
it already had (redis-py issue 3874), so it is turned off.

Semantics and options are Django's, with three differences: ``clear()`` deletes this cache's
keys only (those starting with ``KEY_PREFIX:``), never the channel layer's, where Django's
flushes the whole database; an operation that cannot reach a master within the failover
timeout raises :class:`channels_ha.RedisUnavailable` instead of redis-py's error, as does an
``add``, ``delete``, ``incr``/``decr``, ``touch`` or ``clear`` whose reply was lost (where
Django's backend raises redis-py's ``TimeoutError`` or ``ConnectionError``); and one that
Redis refuses for its credentials or its ACL raises :class:`channels_ha.RedisCommandError` at
once, naming the settings to fix, as the channel layer does, instead of redis-py's
``AuthenticationError`` or ``NoPermissionError``; so does one the sentinels turn away (a
refused sentinel password or ACL), by the layer's rule. A master name no sentinel knows is
waited for, as by the layer (a deployment coming up), and named when the time is out.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient as DjangoRedisCacheClient
from django.utils.functional import cached_property
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ClusterError,
    NoPermissionError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry

from ._cache_doubt import ANSWER_CHANGES_ON_RETRY, outcome_unknown
from ._config import RedisConfig
from ._constants import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_REPLY_TIMEOUT_S
from ._interop import SyncClient, disconnect_idle, sync_client
from ._options import did_you_mean
from ._redis_py_sentinel import SentinelsRefused
from ._server import DATA_LOGIN
from ._tls import read_tls_files
from .exceptions import ConfigurationError, RedisCommandError, RedisUnavailable

__all__ = ["RedisCache", "RedisCacheClient", "cache_config"]

logger = logging.getLogger("channels_ha.cache")

OPTIONS = ("config", "serializer", "failover_timeout")
# Backoff between attempts of one operation while no master answers: first wait, ceiling.
RETRY_BACKOFF_FIRST_S = 0.025
RETRY_BACKOFF_MAX_S = 0.5
# Keys per SCAN reply and per UNLINK command in clear().
CLEAR_BATCH_KEYS = 1_000
_GLOB_SPECIALS = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})
_REFUSED = (AuthenticationError, AuthorizationError, NoPermissionError)  # no failover cures these
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    ClusterError,
    TryAgainError,
    RedisClusterException,  # e.g. no startup node reachable, a slot not covered yet
)
_REFUSED_OR_TRANSIENT = (*_REFUSED, *_TRANSIENT)
# A node's refusals of a command for its slot: not run, to send through the Cluster client.
_REDIRECTED = (AskError, TryAgainError, ClusterDownError)  # MovedError is an AskError
# What Django's client and clear() run: what an ACL user of the cache needs.
_CACHE_COMMANDS = "GET, SET, MGET, DEL, EXISTS, INCRBY, EXPIRE, PERSIST, SCAN and UNLINK"


# One redis-py client per configuration and process, shared by the cache objects built on it.
# Django builds a cache object per ASGI request (and per thread): with a client each, every
# request opened a connection (measured: a get took 1.2 ms instead of 0.03 ms on a single
# node, and 3.2 ms with two new connections under Sentinel). redis-py's clients are
# thread-safe; configurations compare by value, passwords included.
class _SharedClients:
    def __init__(self) -> None:
        self._clients: dict[RedisConfig, SyncClient] = {}
        self._lock = threading.Lock()
        #: Bumped at a fork: the cache objects holding the parent's client ask again.
        self.generation = 0

    def get(self, config: RedisConfig) -> SyncClient:
        with self._lock:
            client = self._clients.get(config)
            if client is None:
                client = self._clients[config] = sync_client(config, retry=Retry(NoBackoff(), 0))
            return client

    def existing(self, config: RedisConfig) -> SyncClient | None:
        """The client of ``config`` if one was made (in this process), without making one."""
        with self._lock:
            return self._clients.get(config)

    def forget(self) -> None:
        """In a forked child: the parent's sockets are not the child's to use, or to close,
        and a parent's thread may have held the lock at the fork."""
        self._clients, self._lock = {}, threading.Lock()
        self.generation += 1


_SHARED_CLIENTS = _SharedClients()
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_SHARED_CLIENTS.forget)


def _require_options_dict(options: object) -> None:
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"Invalid cache OPTIONS: expected a dict such as {{'failover_timeout': 30}}, "
            f"got {type(options).__name__}."
        )


def cache_config(location: Any, options: Mapping[str, Any]) -> RedisConfig:
    """The configuration a cache entry names: ``OPTIONS["config"]``, a URL, or the environment.

    Pure (no I/O); raises :class:`~channels_ha.ConfigurationError` naming the bad key.
    """
    _require_options_dict(options)
    for key in options:
        if key not in OPTIONS:
            raise ConfigurationError(
                f"Invalid cache OPTIONS: unknown key {key!r}{did_you_mean(key, OPTIONS)}; "
                f"expected one of {', '.join(OPTIONS)}."
                " Connection options (db, socket_timeout, ssl_*...) belong in the Redis "
                "configuration (REDIS_CONNECTION_CONFIG, REDIS_URL or the config object)."
            )
    config = _named_config(location, options.get("config"))
    return _with_failover_timeout(config, options.get("failover_timeout"))


def _named_config(location: Any, config: object) -> RedisConfig:
    from ._settings import require_config
    from ._sources import load_config
    from ._url import parse_url

    if config is not None and location:
        raise ConfigurationError("Give the cache either LOCATION or OPTIONS['config'], not both.")
    if config is not None:
        return require_config(config, "cache OPTIONS['config']")
    if location:
        return parse_url(_one_location(location), source="CACHES LOCATION")
    return load_config()


def _with_failover_timeout(config: RedisConfig, timeout: object) -> RedisConfig:
    if timeout is None:
        return config
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 1e9:
        raise ConfigurationError(
            f"Invalid cache OPTIONS['failover_timeout']: expected a positive number of seconds, "
            f"got {timeout!r}."
        )
    return config.model_copy(update={"failover_timeout_s": float(timeout)})


def _one_location(location: Any) -> str:
    locations = [location] if isinstance(location, str) else list(location)
    if len(locations) != 1 or not isinstance(locations[0], str):
        raise ConfigurationError(
            "Invalid cache LOCATION: expected one Redis URL (replicas come from Sentinel or "
            "Cluster, not from a list of servers)."
        )
    return locations[0]


def _bounded(config: RedisConfig) -> RedisConfig:
    """The config with socket timeouts set, so a hung master cannot stall a request forever."""
    update: dict[str, float] = {}
    if config.socket_timeout_s is None:
        update["socket_timeout_s"] = DEFAULT_REPLY_TIMEOUT_S
    if config.socket_connect_timeout_s is None:
        update["socket_connect_timeout_s"] = DEFAULT_CONNECT_TIMEOUT_S
    return config.model_copy(update=update)


class RedisCacheClient(DjangoRedisCacheClient):
    """Django's client over one redis-py client of the configured master(s).

    Cross-slot operations are split per key so that they also work on Cluster.
    """

    _serializer: Any  # set by Django's __init__

    def __init__(self, config: RedisConfig, clear_pattern: str, serializer: Any = None) -> None:
        super().__init__([], serializer=serializer)
        self._config = _bounded(config)
        self._clear_pattern = clear_pattern
        self._redis: SyncClient | None = None
        self._generation = -1

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        """The configuration's shared client; redis-py finds the master (Sentinel) or the
        slot's owner (Cluster)."""
        if self._redis is None or self._generation != _SHARED_CLIENTS.generation:
            self._generation = _SHARED_CLIENTS.generation
            self._redis = _SHARED_CLIENTS.get(self._config)
        return self._redis

    @property
    def _cluster(self) -> bool:
        return self._config.mode == "cluster"

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        keys = list(keys)
        client = self.get_client()
        values = client.mget_nonatomic(keys) if self._cluster else client.mget(keys)
        loads = self._serializer.loads
        return {
            key: loads(value) for key, value in zip(keys, values, strict=True) if value is not None
        }

    def set_many(self, data: Mapping[Any, Any], timeout: Any) -> None:
        """One ``SET`` per key in a pipeline: each key gets its value and expiry atomically."""
        client = self.get_client(write=True)
        if timeout == 0:
            client.delete(*data)
            return
        pipeline = client.pipeline(transaction=False)
        for key, value in data.items():
            pipeline.set(key, self._serializer.dumps(value), ex=timeout)
        pipeline.execute()

    def incr_by(self, key: Any, delta: int) -> int:
        """``INCRBY`` alone: the retrying wrapper runs Django's ``EXISTS`` check before it."""
        return int(self.get_client(key, write=True).incr(key, delta))

    def delete(self, key: Any) -> bool:
        """One ``DEL`` command, as Django's: redis-py's Cluster client sends ``delete()``
        through a pipeline, which runs a ``DEL`` again after its reply was lost and answers
        False for the key the first run deleted (see ``_cache_doubt``)."""
        return bool(self.get_client(key, write=True).execute_command("DEL", key))

    def clear(self) -> bool:
        """Deletes this cache's keys (SCAN, never KEYS or FLUSHDB); True if there were any."""
        client = self.get_client(write=True)
        batch: list[Any] = []
        deleted = 0
        for key in client.scan_iter(match=self._clear_pattern, count=CLEAR_BATCH_KEYS):
            batch.append(key)
            if len(batch) >= CLEAR_BATCH_KEYS:
                deleted += self._unlink(client, batch)
                batch.clear()
        if batch:
            deleted += self._unlink(client, batch)
        return deleted > 0

    def _unlink(self, client: Any, keys: list[Any]) -> int:
        """``UNLINK`` of ``keys``. On Cluster one command per slot, sent in one pipeline per
        node on that node's own client, not redis-py's ``unlink()``, whose cluster pipeline
        runs one again after its reply was lost (as ``delete``); a node's client has no
        retry, so a lost reply raises (see ``_cache_doubt``). A round trip per slot took 6x
        as long (100k keys: 13.6 s)."""
        if not self._cluster:
            return int(client.unlink(*keys))
        by_node: dict[str, list[list[Any]]] = {}
        nodes: dict[str, Any] = {}
        by_slot: dict[int, list[Any]] = {}
        for key in keys:
            by_slot.setdefault(client.keyslot(key), []).append(key)
        for slot, same in by_slot.items():
            node = client.nodes_manager.get_node_from_slot(slot)
            nodes[node.name] = node
            by_node.setdefault(node.name, []).append(same)
        return sum(
            _unlink_on_node(client, nodes[name], batches) for name, batches in by_node.items()
        )

    def disconnect(self) -> None:
        """Closes the idle connections of this configuration's client, which every cache
        object on it shares, and keeps it: closing it cut other threads' commands in flight
        (their outcome unknown) and failed their next ones on Cluster. Whether this object
        was used or not: Django makes one per thread and request."""
        client = _SHARED_CLIENTS.existing(self._config)
        if client is not None:
            disconnect_idle(client)


def _unlink_on_node(cluster: Any, node: Any, batches: list[list[Any]]) -> int:
    """One ``UNLINK`` per batch (each of one slot) in a plain pipeline to ``node``. A batch
    refused for its slot (moved, being migrated, cluster down: not run) goes through the
    Cluster client, which follows the redirection."""
    pipeline = cluster.get_redis_connection(node).pipeline(transaction=False)
    for keys in batches:
        pipeline.execute_command("UNLINK", *keys)
    deleted = 0
    for keys, reply in zip(batches, pipeline.execute(raise_on_error=False), strict=True):
        if isinstance(reply, _REDIRECTED):
            deleted += int(cluster.execute_command("UNLINK", *keys))
        elif isinstance(reply, Exception):
            raise reply
        else:
            deleted += int(reply)
    return deleted


class _Retrying:
    """A :class:`RedisCacheClient` whose operations are retried through a failover."""

    def __init__(self, client: RedisCacheClient, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):  # copy/pickle probing: not an operation
            raise AttributeError(name)
        return functools.partial(self._call, name, getattr(self.client, name))

    def incr(self, key: Any, delta: int) -> Any:
        """Django's ``incr`` (``decr`` calls it) in two steps: its ``EXISTS`` check changes
        nothing, so it is retried after a lost reply; only the ``INCRBY`` can leave the
        outcome unknown. Django's ValueError for a missing key."""
        if not self._call("incr (EXISTS check)", self.client.has_key, key):
            raise ValueError(f"Key '{key}' not found.")
        return self._call("incr", self.client.incr_by, key, delta)

    def _call(self, name: str, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs ``operation`` until it succeeds or the failover timeout; one named in
        ``ANSWER_CHANGES_ON_RETRY`` not again once it may have run."""
        handled = sys.exc_info()[1]  # the application's, if called in an except block
        once = name in ANSWER_CHANGES_ON_RETRY
        deadline = time.monotonic() + self.timeout_s
        backoff_s, attempts = RETRY_BACKOFF_FIRST_S, 0
        while True:  # bounded: _wait raises once the deadline has passed
            try:
                result = operation(*args, **kwargs)
            except _REFUSED_OR_TRANSIENT as err:
                _raise_if_refused(name, err)
                if once and outcome_unknown(err, handled):
                    raise _in_doubt(name, err) from err
                attempts += 1
                backoff_s = self._wait(name, err, attempts, deadline, backoff_s)
                continue
            if attempts:
                logger.info(
                    "Cache %s succeeded after %d retries",
                    name,
                    attempts,
                    extra={"event": "cache_recovered", "retries": attempts},
                )
            return result

    def _wait(
        self, name: str, err: Exception, attempts: int, deadline: float, backoff_s: float
    ) -> float:
        """Sleeps before the next attempt and returns the next backoff; raises at the deadline."""
        if time.monotonic() + backoff_s >= deadline:
            raise RedisUnavailable(
                f"Cache {name} failed: no Redis master answered within the failover timeout "
                f"({self.timeout_s:g} s); last error: {type(err).__name__}: {err}"
            ) from err
        if attempts == 1:
            logger.warning(
                "Cache %s failed (%s: %s); retrying for up to %g s while Redis recovers",
                name,
                type(err).__name__,
                err,
                self.timeout_s,
                extra={"event": "cache_retrying"},
            )
        time.sleep(backoff_s)  # the backoff itself: the cache API is synchronous
        return min(backoff_s * 2, RETRY_BACKOFF_MAX_S)


def _raise_if_refused(name: str, err: Exception) -> None:
    """Raises :class:`RedisCommandError` for what retrying cannot cure (every ``_REFUSED``)."""
    refusal = _refusal(err)
    if refusal is not None:
        raise RedisCommandError(f"Cache {name} failed: {refusal}.") from err


def _in_doubt(name: str, err: Exception) -> RedisUnavailable:
    """The error for an operation Redis may have run and a retry would answer differently
    (``add`` after its first run stored the value answers False)."""
    return RedisUnavailable(
        f"Cache {name} failed and was not retried: the connection was lost or the reply "
        f"timed out after Redis may have run it, so its outcome is unknown "
        f"({type(err).__name__}: {err})"
    )


def _refusal(err: Exception) -> str | None:
    """What Redis refused and which settings to check, or None for an error worth retrying.

    A refusal met while finding the master comes wrapped: Cluster chains the last startup
    node's error as the cause; sentinels that turn the configuration away give
    ``SentinelsRefused``, by the channel layer's rule (see ``_sentinel_refusals``). No message
    here holds a password: Redis never echoes one.
    """
    cause = err if isinstance(err, _REFUSED) else err.__cause__
    if isinstance(cause, AuthenticationError):
        return (
            f"Redis refused the credentials from the configuration ({_reason(cause)}); {DATA_LOGIN}"
        )
    if isinstance(cause, AuthorizationError | NoPermissionError):
        return (
            f"Redis accepted the credentials but refused the user a command ({_reason(cause)}); "
            f"the user ('username', else Redis's default user) needs {_CACHE_COMMANDS} "
            "on the cache's keys"
        )
    if isinstance(err, SentinelsRefused):  # "The sentinels refused...": after a colon here
        message = str(err).rstrip(".")
        return message[:1].lower() + message[1:]
    return None


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).rstrip('.')}"


class RedisCache(DjangoRedisCache):
    """Django's ``RedisCache`` on a channels-ha configuration (single node, Sentinel, Cluster).

    ``OPTIONS``: ``config`` (from :func:`channels_ha.caches`), or a URL in ``LOCATION``, or
    neither (``REDIS_CONNECTION_CONFIG`` / ``REDIS_URL``); ``serializer`` as in Django;
    ``failover_timeout`` (seconds) to wait for a master less long than the configuration says.
    """

    _options: dict[str, Any]  # set by Django's __init__

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        #: Why this entry cannot work (a bad OPTIONS key, an unreadable TLS file), or None.
        #: Raised at the first cache call, not here: Django's own system checks build every
        #: cache, and raising would end ``manage.py check`` in a traceback before
        #: channels_ha.E003 could report it (``channels_ha.caches()`` raises it at once).
        self.configuration_error: ConfigurationError | None = None
        try:
            _require_options_dict(params.get("OPTIONS", {}))
        except ConfigurationError as err:
            self.configuration_error = err
            params = {**params, "OPTIONS": {}}  # (Django's __init__ calls .get() on it)
        super().__init__(server, params)
        if self.configuration_error is None:
            try:
                self._config = cache_config(server, self._options)
                read_tls_files(self._config)  # else a bad file is retried as if Redis were away
            except ConfigurationError as err:
                self.configuration_error = err

    @cached_property
    def _cache(self) -> Any:
        if self.configuration_error is not None:
            raise self.configuration_error
        pattern = self.key_prefix.translate(_GLOB_SPECIALS) + ":*"
        serializer = self._options.get("serializer")
        client = RedisCacheClient(self._config, pattern, serializer=serializer)
        return _Retrying(client, self._config.failover_timeout_s)

    def disconnect(self) -> None:
        """Closes the idle connections this cache shares; they reopen on next use (Django
        keeps them open). Those other threads are using stay open until they are idle."""
        if self.configuration_error is None:  # (building _cache opens no connection)
            self._cache.client.disconnect()
