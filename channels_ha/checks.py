"""System checks for ``manage.py check``: the Redis configuration is valid, and safe to deploy.

Registered under the tag ``channels_ha`` by the app (``"channels_ha"`` in ``INSTALLED_APPS``).
Errors run on every check (and so before ``runserver`` and ``migrate``); warnings only with
``check --deploy``. The ids are stable; ``docs/operations.md`` lists what triggers each and how
to fix it. Checks read settings and the environment and never connect to Redis:
``manage.py channels_ha status`` does that.

======================  ========================================================================
``channels_ha.E001``    ``REDIS_CONNECTION_CONFIG`` / ``REDIS_URL`` is invalid
``channels_ha.E002``    a ``CHANNEL_LAYERS`` entry cannot be built (bad options, or shape)
``channels_ha.E003``    a channels-ha ``CACHES`` entry cannot be built (bad options)
``channels_ha.E004``    ``CHANNELS_HA_METRICS`` is on but ``prometheus_client`` is not installed
``channels_ha.W001``    the sentinels have no password while the data nodes have one
``channels_ha.W002``    TLS without certificate or host name verification
``channels_ha.W003``    a single Redis node: nothing to fail over to
``channels_ha.W004``    fewer than 3 sentinels
``channels_ha.W005``    a channel layer or cache whose Redis settings are written by hand
``channels_ha.W006``    a per-process cache (``LocMemCache``) next to a Redis deployment
======================  ========================================================================
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from ._config import RedisConfig, SentinelConfig, TLSConfig
from ._settings import (
    backend_family,
    layer_configs,
    layer_hosts,
    layer_options,
    require_config,
    setting,
)
from ._sources import select_source
from .exceptions import ConfigurationError

__all__ = ["CHECK_IDS", "TAG", "check_configuration", "check_deployment"]

TAG = "channels_ha"
CHECK_IDS = tuple(f"channels_ha.E00{n}" for n in range(1, 5)) + tuple(
    f"channels_ha.W00{n}" for n in range(1, 7)
)
_BUILD_ERRORS = (ConfigurationError, TypeError, ValueError, OSError)
_ENV_HINT = (
    "Fix the variable; `channels-ha check` prints what it parses to. The accepted forms are in "
    "docs/configuration.md."
)
_BUILD_HINT = (
    "Pass only the documented options (docs/configuration.md); channels_ha.{function}() "
    "builds the setting from the validated Redis configuration."
)
_SETTING_HINT = (
    "Build it from the validated configuration: CHANNEL_LAYERS = channels_ha.channel_layers() "
    "and CACHES = channels_ha.caches(), which read REDIS_CONNECTION_CONFIG / REDIS_URL."
)
Usage = tuple[str, RedisConfig]  # (the setting or variable that uses it, the configuration)


# -- errors ----------------------------------------------------------------------------------


def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Errors: configurations and options that cannot work."""
    env_error = _environment_error()
    errors = [] if env_error is None else [env_error]
    errors += _layer_errors(skip_env=env_error is not None)
    errors += _cache_errors(skip_env=env_error is not None)
    return errors + _metrics_errors()


def _environment_error() -> CheckMessage | None:
    source = select_source()
    try:
        source.parse()
    except ConfigurationError as err:
        return Error(str(err), hint=_ENV_HINT, obj=source.name, id="channels_ha.E001")
    return None


def _layer_errors(skip_env: bool) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for alias, entry in _entries("CHANNEL_LAYERS", "channels_ha", "channels_redis"):
        problem = _layer_problem(alias, entry, skip_env)
        if problem is not None:
            hint = _BUILD_HINT.format(function="channel_layers")
            obj = f"CHANNEL_LAYERS[{alias!r}]"
            errors.append(Error(problem, hint=hint, obj=obj, id="channels_ha.E002"))
    return errors


def _layer_problem(alias: str, entry: Mapping[str, Any], skip_env: bool) -> str | None:
    """Why a layer entry cannot work. A channels_redis entry is checked for its shape only
    (a dict CONFIG, a list of hosts): its hosts may take forms only channels_redis knows."""
    try:
        options = layer_options(alias, entry)
        hosts = layer_hosts(alias, options)
    except ConfigurationError as err:
        return str(err)
    if backend_family(entry.get("BACKEND")) != "channels_ha":
        return None
    if skip_env and not (options.get("config") or hosts):
        return None  # it reads the environment, and E001 says what is wrong there
    return _build_problem(_build_layer, alias, entry, options)


def _build_layer(alias: str, entry: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    if options.get("config") is not None:
        require_config(options["config"], f"CHANNEL_LAYERS[{alias!r}]['CONFIG']['config']")
    import_string(entry["BACKEND"])(**options)


def _cache_errors(skip_env: bool) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for alias, entry in _entries("CACHES", "channels_ha"):
        params = {key: value for key, value in entry.items() if key not in ("BACKEND", "LOCATION")}
        location = entry.get("LOCATION", "")
        if skip_env and not (location or (params.get("OPTIONS") or {}).get("config")):
            continue  # it reads the environment, and E001 says what is wrong there
        problem = _build_problem(_build_cache, entry["BACKEND"], location, params)
        if problem is not None:
            hint = _BUILD_HINT.format(function="caches")
            obj = f"CACHES[{alias!r}]"
            errors.append(Error(problem, hint=hint, obj=obj, id="channels_ha.E003"))
    return errors


def _build_cache(backend: str, location: Any, params: dict[str, Any]) -> None:
    error = import_string(backend)(location, params).configuration_error
    if error is not None:
        raise error


def _build_problem(build: Callable[..., object], *args: Any) -> str | None:
    """Why ``build(*args)`` fails, or None; building opens no connection."""
    try:
        build(*args)
    except _BUILD_ERRORS as err:
        return f"{err}" if isinstance(err, ConfigurationError) else f"{type(err).__name__}: {err}"
    return None


def _metrics_errors() -> list[CheckMessage]:
    if not getattr(settings, "CHANNELS_HA_METRICS", False):
        return []
    if importlib.util.find_spec("prometheus_client") is not None:
        return []
    return [
        Error(
            "CHANNELS_HA_METRICS is on, but prometheus_client is not installed.",
            hint='Install the extra: pip install "channels-ha[metrics]".',
            obj="CHANNELS_HA_METRICS",
            id="channels_ha.E004",
        )
    ]


# -- warnings (--deploy) ---------------------------------------------------------------------


def check_deployment(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warnings: setups that work but put production at risk."""
    usages = _usages()
    warnings = [warning for usage in usages for warning in _config_warnings(*usage)]
    return warnings + _hand_written() + (_per_process_caches() if usages else [])


def _entries(name: str, *families: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """The ``(alias, entry)`` pairs of a setting whose backend is of one of ``families``."""
    for alias, entry in setting(name).items():
        if isinstance(entry, Mapping) and backend_family(entry.get("BACKEND")) in families:
            yield alias, entry


def _usages() -> list[Usage]:
    """Every valid configuration the settings use, once, named by its first user."""
    found: list[Usage] = []
    for usage in [*_layer_usages(), *_cache_usages(), *_environment_usage()]:
        if all(usage[1] != config for _, config in found):
            found.append(usage)
    return found


def _layer_usages() -> Iterable[Usage]:
    for alias, entry in _entries("CHANNEL_LAYERS", "channels_ha", "channels_redis"):
        try:
            configs = layer_configs(alias, entry)
        except ConfigurationError:
            continue  # E002, or the channels_redis entry's own problem
        for config in configs:
            yield f"CHANNEL_LAYERS[{alias!r}]", config


def _cache_usages() -> Iterable[Usage]:
    from .cache import cache_config

    for alias, entry in _entries("CACHES", "channels_ha"):
        try:
            config = cache_config(entry.get("LOCATION", ""), entry.get("OPTIONS") or {})
        except ConfigurationError:
            continue  # E003
        yield f"CACHES[{alias!r}]", config


def _environment_usage() -> Iterable[Usage]:
    source = select_source()
    if source.name.startswith("the default"):
        return
    try:
        yield source.name, source.parse()
    except ConfigurationError:
        return  # E001


def _config_warnings(user: str, config: RedisConfig) -> list[CheckMessage]:
    warnings = _tls_warnings(user, config)
    if isinstance(config, SentinelConfig):
        warnings += _sentinel_warnings(user, config)
    if config.mode == "single":
        warnings.append(
            Warning(
                f"A single Redis node ({config.node_labels()[0]}): when it fails, channels "
                "and cache are down until it is back.",
                hint="Use Sentinel (redis+sentinel://) or Cluster for automatic failover. If a "
                "managed service fails over behind this one address, add 'channels_ha.W003' to "
                "SILENCED_SYSTEM_CHECKS.",
                obj=user,
                id="channels_ha.W003",
            )
        )
    return warnings


def _sentinel_warnings(user: str, config: SentinelConfig) -> list[CheckMessage]:
    warnings: list[CheckMessage] = []
    if config.password is not None and config.sentinel_password is None:
        warnings.append(
            Warning(
                "The sentinels accept clients without a password while the data nodes "
                "require one: anyone who reaches a sentinel can reconfigure it or force a "
                "failover.",
                hint="Set requirepass in sentinel.conf and pass it as sentinel_kwargs.password "
                "(REDIS_CONNECTION_CONFIG) or sentinel_password (REDIS_URL query).",
                obj=user,
                id="channels_ha.W001",
            )
        )
    if len(config.sentinels) < 3:
        warnings.append(
            Warning(
                f"Only {len(config.sentinels)} sentinel(s): with fewer than 3, losing one "
                "machine can leave too few sentinels to agree on a failover.",
                hint="Run at least 3 sentinels on separate machines and list them all.",
                obj=user,
                id="channels_ha.W004",
            )
        )
    return warnings


def _tls_warnings(user: str, config: RedisConfig) -> list[CheckMessage]:
    hops: list[tuple[str, TLSConfig | None]] = [("data nodes", config.tls)]
    if isinstance(config, SentinelConfig):
        hops.append(("sentinels", config.sentinel_tls))
    return [
        Warning(
            f"TLS to the {hop} does not verify the server "
            f"(ssl_cert_reqs {tls.cert_reqs}, host name "
            f"{'checked' if tls.verifies_hostname else 'not checked'}): a man in the middle "
            "can read and change every message.",
            hint='Set ssl_cert_reqs to "required", keep ssl_check_hostname on, and point '
            "ssl_ca_certs at the CA that signed the servers' certificates.",
            obj=user,
            id="channels_ha.W002",
        )
        for hop, tls in hops
        if tls is not None and (tls.cert_reqs == "none" or not tls.verifies_hostname)
    ]


def _hand_written() -> list[CheckMessage]:
    problems = [
        (f"CHANNEL_LAYERS[{alias!r}]", _layer_by_hand(alias, entry))
        for alias, entry in _entries("CHANNEL_LAYERS", "channels_ha", "channels_redis")
    ]
    problems += [
        (
            f"CACHES[{alias!r}]",
            "Django's RedisCache reaches fixed addresses and does not follow a failover.",
        )
        for alias, _ in _entries("CACHES", "django_redis")
    ]
    return [
        Warning(problem, hint=_SETTING_HINT, obj=user, id="channels_ha.W005")
        for user, problem in problems
        if problem
    ]


def _layer_by_hand(alias: str, entry: Mapping[str, Any]) -> str | None:
    """What makes a layer entry hand-written, or None if it comes from channel_layers()
    (or is malformed: E002 says so)."""
    try:
        hosts = layer_hosts(alias, layer_options(alias, entry))
    except ConfigurationError:
        return None
    if backend_family(entry.get("BACKEND")) == "channels_ha":
        return "The layer gets raw 'hosts' instead of a validated 'config'." if hosts else None
    if not hosts or not all(_built_by_channel_layers(host) for host in hosts):
        return "channels_redis gets 'hosts' that channels_ha.channel_layers() did not build."
    return None


def _built_by_channel_layers(host: object) -> bool:
    """Whether a channels_redis ``hosts`` entry is what ``channel_layers()`` makes of a config."""
    from redis.asyncio.sentinel import SentinelManagedSSLConnection

    from ._sources import parse_hosts_entry

    options = host
    if isinstance(host, Mapping) and host.get("connection_class") is SentinelManagedSSLConnection:
        options = {key: value for key, value in host.items() if key != "connection_class"}
        options["ssl"] = True
    try:
        return parse_hosts_entry(options).to_channels_redis_host() == host
    except ConfigurationError:
        return False


def _per_process_caches() -> list[CheckMessage]:
    return [
        Warning(
            "A per-process memory cache while Redis is configured: each process caches on "
            "its own, so invalidations and rate limits do not reach the others.",
            hint="Use CACHES = channels_ha.caches(), the Redis cache on the same configuration "
            "as the channel layer (Sentinel and Cluster included).",
            obj=f"CACHES[{alias!r}]",
            id="channels_ha.W006",
        )
        for alias, _ in _entries("CACHES", "locmem")
    ]
