"""Where a Django project's settings point: which backend an alias uses, which Redis it reaches.

The system checks, the ``status`` command and the health view ask the same questions, so the
answers live here, once. Pure: reading settings and parsing, never a connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from django.conf import settings
from django.utils.module_loading import import_string

from ._config import ClusterConfig, RedisConfig, SentinelConfig, SingleNodeConfig
from .exceptions import ConfigurationError

__all__ = [
    "Family",
    "alias_configs",
    "alias_prefix",
    "backend_family",
    "layer_configs",
    "layer_hosts",
    "layer_options",
    "require_alias",
    "require_config",
    "setting",
]

Family = Literal["channels_ha", "channels_redis", "django_redis", "locmem", "other"]
_CHANNELS_REDIS_DEFAULT_HOST = ("localhost", 6379)  # what channels_redis uses without hosts


def setting(name: str) -> dict[str, Any]:
    """``CHANNEL_LAYERS`` or ``CACHES`` as a dict (empty when unset)."""
    value = getattr(settings, name, None)
    return dict(value) if isinstance(value, Mapping) else {}


def backend_family(path: object) -> Family:
    """Which kind of backend a ``BACKEND`` path names; unimportable paths are "other"."""
    if not isinstance(path, str):
        return "other"
    if path.startswith("channels_redis."):
        return "channels_redis"
    try:
        backend = import_string(path)
    except ImportError:
        return "other"
    return _family_of(backend) if isinstance(backend, type) else "other"


def _family_of(backend: type) -> Family:
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

    from ._layer import RedisChannelLayer
    from .cache import RedisCache

    if issubclass(backend, RedisChannelLayer | RedisCache):
        return "channels_ha"
    if issubclass(backend, DjangoRedisCache):
        return "django_redis"
    return "locmem" if issubclass(backend, LocMemCache) else "other"


def require_config(value: object, where: str) -> RedisConfig:
    """``value`` if it is a parsed configuration; a ConfigurationError naming ``where`` if not."""
    if isinstance(value, SingleNodeConfig | SentinelConfig | ClusterConfig):
        return value
    raise ConfigurationError(
        f"Invalid {where}: expected a configuration from channels_ha.load_config() or "
        f"channels_ha.parse_url(), got {type(value).__name__}."
    )


def layer_options(alias: str, entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``CONFIG`` of a ``CHANNEL_LAYERS`` entry; a ConfigurationError if it is no dict."""
    options = entry.get("CONFIG")
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"Invalid CHANNEL_LAYERS[{alias!r}]['CONFIG']: expected a dict of layer options "
            f"such as {{'hosts': [...]}}, got {type(options).__name__}."
        )
    return options


def layer_hosts(alias: str, options: Mapping[str, Any]) -> Sequence[Any]:
    """The ``hosts`` entries of a layer's options (empty when unset); a ConfigurationError
    when ``hosts`` is not a list, which both channels-ha and channels_redis need."""
    from ._layer import host_entries

    return host_entries(options.get("hosts"), f"CHANNEL_LAYERS[{alias!r}]['CONFIG']['hosts']")


def layer_configs(alias: str, entry: Mapping[str, Any]) -> list[RedisConfig]:
    """What a channels-ha or channels_redis ``CHANNEL_LAYERS`` entry reaches, one per shard."""
    from ._sources import load_config, parse_hosts_entry

    where = f"CHANNEL_LAYERS[{alias!r}]"
    options = layer_options(alias, entry)
    if options.get("config") is not None:
        return [require_config(options["config"], f"{where}['CONFIG']['config']")]
    hosts = layer_hosts(alias, options)
    if hosts:
        return [parse_hosts_entry(host, source=f"{where} hosts") for host in hosts]
    if backend_family(entry.get("BACKEND")) == "channels_redis":
        return [parse_hosts_entry(_CHANNELS_REDIS_DEFAULT_HOST, source=f"{where} hosts")]
    return [load_config()]


def require_alias(alias: str) -> Mapping[str, Any]:
    """The ``CHANNEL_LAYERS`` entry of ``alias``; a ConfigurationError naming the aliases
    there are when it has none. A typo in an alias must not send the health check (or
    ``status``) to the environment's Redis, or localhost's, which may answer for another."""
    layers = setting("CHANNEL_LAYERS")
    entry = layers.get(alias)
    if isinstance(entry, Mapping):
        return entry
    if alias in layers:
        raise ConfigurationError(
            f"Invalid CHANNEL_LAYERS[{alias!r}]: expected a dict with a 'BACKEND', "
            f"got {type(entry).__name__}."
        )
    known = ", ".join(repr(name) for name in layers)
    there = f"its aliases are {known}" if known else "CHANNEL_LAYERS is not set"
    raise ConfigurationError(f"CHANNEL_LAYERS has no alias {alias!r}: {there}.")


def alias_prefix(alias: str) -> str:
    """The key prefix of channel layer ``alias``: its ``prefix`` option, or the default
    (which channels_redis shares) when it sets none or is not a Redis layer."""
    from ._constants import DEFAULT_PREFIX

    entry = setting("CHANNEL_LAYERS").get(alias)
    options = entry.get("CONFIG") if isinstance(entry, Mapping) else None
    prefix = options.get("prefix") if isinstance(options, Mapping) else None
    return prefix if isinstance(prefix, str) and prefix else DEFAULT_PREFIX


def alias_configs(alias: str) -> list[RedisConfig]:
    """The Redis behind a channel layer alias; the environment's when it is a layer that does
    not use Redis (such as the in-memory one); a ConfigurationError for an unknown alias."""
    from ._sources import load_config

    entry = require_alias(alias)
    if backend_family(entry.get("BACKEND")) not in ("channels_ha", "channels_redis"):
        return [load_config()]
    return layer_configs(alias, entry)
