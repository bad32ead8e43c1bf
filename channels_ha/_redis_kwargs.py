"""How a parsed configuration speaks redis-py: keyword arguments and channels_redis ``hosts``.

The config models are imported for typing only, so that ``RedisConfig.to_channels_redis_host``
can call into this module without an import cycle. Everything here is pure: building
arguments opens no connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from redis.asyncio.sentinel import SentinelManagedSSLConnection

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from ._config import RedisConfig, SentinelConfig, SingleNodeConfig

__all__ = ["channels_redis_host", "client_kwargs", "connection_kwargs", "sentinel_kwargs"]


def _present(**kwargs: Any) -> dict[str, Any]:
    """Drop unset arguments so redis-py's own defaults apply."""
    return {key: value for key, value in kwargs.items() if value is not None}


def _secret(value: SecretStr | None) -> str | None:
    """The clear text, at the last moment: only redis-py gets to see it."""
    return None if value is None else value.get_secret_value()


def _either(own: float | None, inherited: float | None) -> float | None:
    return inherited if own is None else own


def connection_kwargs(config: RedisConfig) -> dict[str, Any]:
    """Auth and socket arguments of a data-node connection (no address, db or TLS)."""
    return _present(
        username=config.username,
        password=_secret(config.password),
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.socket_connect_timeout_s,
        socket_keepalive=config.socket_keepalive or None,
        health_check_interval=config.health_check_interval_s or None,
    )


def client_kwargs(config: RedisConfig) -> dict[str, Any]:
    """Arguments for a ``Redis(...)``/``RedisCluster(...)`` constructor, TLS flag included."""
    kwargs = connection_kwargs(config)
    if config.tls is not None:
        kwargs |= {"ssl": True, **config.tls.redis_kwargs()}
    return kwargs


def sentinel_kwargs(config: SentinelConfig) -> dict[str, Any]:
    """redis-py's ``sentinel_kwargs``: the sentinels' own auth, TLS and timeouts.

    Always given explicitly, because redis-py would otherwise copy only the ``socket_*``
    options of the data nodes and silently talk to the sentinels in plain text.
    """
    kwargs = _present(
        username=config.sentinel_username,
        password=_secret(config.sentinel_password),
        socket_timeout=_either(config.sentinel_socket_timeout_s, config.socket_timeout_s),
        socket_connect_timeout=_either(
            config.sentinel_socket_connect_timeout_s, config.socket_connect_timeout_s
        ),
        socket_keepalive=config.socket_keepalive or None,
    )
    if config.sentinel_tls is not None:
        kwargs |= {"ssl": True, **config.sentinel_tls.redis_kwargs()}
    return kwargs


def channels_redis_host(config: RedisConfig) -> dict[str, Any]:
    """One entry of channels_redis's ``hosts``, as its ``create_pool`` consumes it."""
    if config.mode == "cluster":
        raise ConfigurationError(
            "Invalid Redis configuration for channels_redis: channels_redis cannot use Redis "
            "Cluster (mode cluster); expected a single-node or Sentinel configuration, or the "
            "channels_ha.RedisChannelLayer backend, which supports Cluster."
        )
    if config.mode == "sentinel":
        return _sentinel_host(config)
    return _single_host(config)


def _single_host(config: SingleNodeConfig) -> dict[str, Any]:
    """An ``address`` URL without credentials plus keyword arguments, for ``from_url``."""
    kwargs = {**connection_kwargs(config), "db": config.db}
    if config.unix_socket_path is not None:
        kwargs.pop("socket_keepalive", None)  # unix socket connections reject it
        return {"address": f"unix://{quote(config.unix_socket_path)}", **kwargs}
    if config.tls is not None:
        return {"address": f"rediss://{config.address}", **kwargs, **config.tls.redis_kwargs()}
    return {"address": f"redis://{config.address}", **kwargs}


def _sentinel_host(config: SentinelConfig) -> dict[str, Any]:
    """Sentinels, master name and ``sentinel_kwargs``, plus the data nodes' arguments."""
    host = {
        "sentinels": [(node.host, node.port) for node in config.sentinels],
        "master_name": config.master_name,
        "sentinel_kwargs": sentinel_kwargs(config),
        "db": config.db,
        **connection_kwargs(config),
    }
    if config.tls is not None:
        # The pool picks its connection class from this, not from an ``ssl`` flag we could
        # misspell; the TLS arguments then reach every master connection.
        host |= {"connection_class": SentinelManagedSSLConnection, **config.tls.redis_kwargs()}
    return host
