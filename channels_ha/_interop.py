"""Bridges from a parsed config to what other code consumes: ``CHANNEL_LAYERS``, ``CACHES``
and redis-py clients.

The redis-py clients here serve the probe, the Django cache and health checks; the channel
layer manages its own connections. Every client returned is owned by the caller, who closes
it with :func:`close_sync_client` or :func:`aclose_async_client`, which also close the
sentinel connections used to find the master.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.retry import Retry

from ._backend_options import check_backend_options
from ._config import NodeAddress, RedisConfig, SentinelConfig
from ._redis_kwargs import client_kwargs, connection_kwargs, sentinel_kwargs
from ._redis_py_sentinel import RuledSentinel
from ._settings_time import reported_at_settings_import
from ._sources import load_config
from .exceptions import ConfigurationError

__all__ = [
    "AsyncClient",
    "SyncClient",
    "aclose_async_client",
    "async_client",
    "async_sentinel_clients",
    "caches",
    "channel_layers",
    "close_sync_client",
    "sync_client",
    "sync_sentinel_clients",
]

DEFAULT_BACKEND = "channels_ha.RedisChannelLayer"
DEFAULT_CACHE_BACKEND = "channels_ha.cache.RedisCache"
_CHANNELS_REDIS = "channels_redis."  # its layers take ``hosts`` instead of ``config``

SyncClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster
AsyncClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def channel_layers(
    config: RedisConfig | None = None,
    *,
    backend: str = DEFAULT_BACKEND,
    alias: str = "default",
    **layer_options: Any,
) -> dict[str, dict[str, Any]]:
    """A ``CHANNEL_LAYERS`` setting; the config is read from the environment when omitted.

    channels_redis layers get ``hosts`` (one entry); any other backend gets ``config``.
    Raises ConfigurationError (in settings.py, uncaught, printed as its message alone).
    """
    with reported_at_settings_import("channel_layers"):
        config = load_config() if config is None else config
        if backend.startswith(_CHANNELS_REDIS):
            ours: dict[str, Any] = {"hosts": [config.to_channels_redis_host()]}
        else:
            ours = {"config": config}
        for key in ours.keys() & layer_options.keys():
            raise ConfigurationError(
                f"Invalid channel layer options for {backend}: '{key}' is built from the Redis "
                "configuration; expected it to be left out of the layer options."
            )
        if backend.startswith(_CHANNELS_REDIS):
            check_backend_options(backend, layer_options)
    return {alias: {"BACKEND": backend, "CONFIG": {**ours, **layer_options}}}


def caches(
    config: RedisConfig | None = None,
    *,
    backend: str = DEFAULT_CACHE_BACKEND,
    alias: str = "default",
    **cache_params: Any,
) -> dict[str, dict[str, Any]]:
    """A ``CACHES`` setting whose Redis is this config (read from the environment if omitted).

    ``cache_params`` are Django's own keys (``TIMEOUT``, ``KEY_PREFIX``, ``VERSION``,
    ``OPTIONS``...); the config goes into ``OPTIONS``, so the cache and the channel layer
    share one validated configuration. A bad ``OPTIONS`` key raises ConfigurationError now
    (in settings.py, uncaught, printed as its message alone), not at the first cache call.
    """
    with reported_at_settings_import("caches"):
        config = load_config() if config is None else config
        options = cache_params.pop("OPTIONS", None) or {}
        if isinstance(options, Mapping):
            for key in {"config", "LOCATION"} & {*options, *cache_params}:
                raise ConfigurationError(
                    f"Invalid cache options for {backend}: '{key}' is built from the Redis "
                    "configuration; expected it to be left out."
                )
            options = {**options, "config": config}
        entry = {"BACKEND": backend, **cache_params, "OPTIONS": options}
        _check_cache_entry(entry)
    return {alias: entry}


def _check_cache_entry(entry: Mapping[str, Any]) -> None:
    """Raises what the OPTIONS of a channels-ha cache entry would raise at its first call.
    Pure: TLS files are read when the cache is built (a Docker build running collectstatic
    imports the settings without them), and checked by channels_ha.E003. Another backend,
    a subclass included, is not imported here: it may need the app registry, not ready
    while settings load."""
    if entry["BACKEND"] == DEFAULT_CACHE_BACKEND:
        from .cache import cache_config

        cache_config("", entry["OPTIONS"])


def _pairs(nodes: tuple[NodeAddress, ...]) -> list[tuple[str, int]]:
    return [(node.host, node.port) for node in nodes]


def _master_kwargs(config: SentinelConfig, ssl_connection: type[Any]) -> dict[str, Any]:
    """``master_for`` arguments; the TLS connection class carries the TLS options."""
    kwargs = {"db": config.db, **connection_kwargs(config)}
    if config.tls is not None:
        kwargs |= {"connection_class": ssl_connection, **config.tls.redis_kwargs()}
    return kwargs


def _sentinel_master(
    module: Any, config: SentinelConfig, manager_class: Any = None, **extra: Any
) -> Any:
    """``master_for`` through ``redis.sentinel`` or ``redis.asyncio.sentinel`` (both untyped).

    ``manager_class`` replaces the module's ``Sentinel``; ``extra`` (e.g. ``retry``) applies
    to the sentinel connections and the master's alike.
    """
    manager = (manager_class or module.Sentinel)(
        _pairs(config.sentinels), sentinel_kwargs={**sentinel_kwargs(config), **extra}
    )
    kwargs = _master_kwargs(config, module.SentinelManagedSSLConnection)
    return manager.master_for(config.master_name, **kwargs, **extra)


def _cluster_nodes(module: Any, nodes: tuple[NodeAddress, ...]) -> list[Any]:
    """``ClusterNode`` objects of ``redis.cluster`` or ``redis.asyncio.cluster`` (untyped)."""
    return [module.ClusterNode(host, port) for host, port in _pairs(nodes)]


def _single_kwargs(config: RedisConfig) -> dict[str, Any]:
    if config.mode != "single":
        raise AssertionError(config.mode)
    if config.address is None:
        return {"unix_socket_path": config.unix_socket_path, "db": config.db}
    return {"host": config.address.host, "port": config.address.port, "db": config.db}


def sync_client(config: RedisConfig, *, retry: Retry | None = None) -> SyncClient:
    """A synchronous client of the data master: direct, sentinel-managed, or cluster.

    ``retry`` replaces redis-py's default retry policy on every connection, sentinels included.
    """
    extra: dict[str, Any] = {} if retry is None else {"retry": retry}
    if config.mode == "cluster":
        nodes = _cluster_nodes(redis.cluster, config.startup_nodes)
        return redis.cluster.RedisCluster(startup_nodes=nodes, **client_kwargs(config), **extra)
    if config.mode == "sentinel":
        # The layer's rule for sentinels that refuse the configuration (see _redis_py_sentinel)
        client: redis.Redis = _sentinel_master(redis.sentinel, config, RuledSentinel, **extra)
        return client
    return redis.Redis(**_single_kwargs(config), **client_kwargs(config), **extra)


def async_client(config: RedisConfig) -> AsyncClient:
    """An asyncio client of the data master: direct, sentinel-managed, or cluster."""
    if config.mode == "cluster":
        nodes = _cluster_nodes(redis.asyncio.cluster, config.startup_nodes)
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **client_kwargs(config))
    if config.mode == "sentinel":
        client: redis.asyncio.Redis = _sentinel_master(redis.asyncio.sentinel, config)
        return client
    return redis.asyncio.Redis(**_single_kwargs(config), **client_kwargs(config))


def sync_sentinel_clients(config: SentinelConfig) -> list[redis.Redis]:
    """One synchronous client per sentinel, with the sentinels' own auth and TLS."""
    kwargs = sentinel_kwargs(config)
    return [redis.Redis(host=host, port=port, **kwargs) for host, port in _pairs(config.sentinels)]


def async_sentinel_clients(config: SentinelConfig) -> list[redis.asyncio.Redis]:
    """One asyncio client per sentinel, with the sentinels' own auth and TLS."""
    kwargs = sentinel_kwargs(config)
    nodes = _pairs(config.sentinels)
    return [redis.asyncio.Redis(host=host, port=port, **kwargs) for host, port in nodes]


def close_sync_client(client: SyncClient) -> None:
    """Close a client and, for a sentinel-managed one, the sentinels it asked."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    client.close()
    if manager is not None:
        manager.close()


def disconnect_idle(client: SyncClient) -> None:
    """Close the connections of ``client`` that no command is using (every node's, on
    Cluster; the sentinels' too), and keep it usable: they reopen on next use. The ones in
    use stay open, so other threads' commands in flight finish (``close()`` cut them)."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_nodes()  # type: ignore[no-untyped-call]
        pools = [client.get_redis_connection(node).connection_pool for node in nodes]
    else:
        pools = [client.connection_pool]
        manager = getattr(client.connection_pool, "sentinel_manager", None)
        if manager is not None:
            pools += [sentinel.connection_pool for sentinel in manager.sentinels]
    for pool in pools:
        pool.disconnect(inuse_connections=False)


async def aclose_async_client(client: AsyncClient) -> None:
    """Close an asyncio client and, for a sentinel-managed one, the sentinels it asked."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    await client.aclose()
    if manager is not None:
        await manager.aclose()
