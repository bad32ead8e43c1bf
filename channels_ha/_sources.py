"""Where the configuration comes from: ``REDIS_CONNECTION_CONFIG``, ``REDIS_URL`` or code.

Precedence, in one place: values passed in code replace the environment entirely; within
either, the JSON connection config wins over the URL; with neither, the default
``redis://localhost:6379/0`` applies. The choice is logged once per process, redacted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import SecretStr

from ._config import RedisConfig
from ._options import IGNORED_KEYS, KNOWN_KEYS, Source, build_config, check_keys
from ._settings_time import reported_at_settings_import
from ._url import parse_url, redact_url, url_options
from .exceptions import ConfigurationError

__all__ = [
    "CONFIG_VARIABLE",
    "DEFAULT_URL",
    "URL_VARIABLE",
    "ConfigSource",
    "load_config",
    "parse_connection_config",
    "parse_hosts_entry",
    "select_source",
]

URL_VARIABLE = "REDIS_URL"
CONFIG_VARIABLE = "REDIS_CONNECTION_CONFIG"
DEFAULT_URL = "redis://localhost:6379/0"
_EXAMPLE = '{"sentinels": [["sentinel1", 26379]], "master_name": "mymaster"}'
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}

logger = logging.getLogger("channels_ha.config")
_announced: set[tuple[str, tuple[str, ...], str]] = set()  # choices already logged


def parse_connection_config(
    value: str | Mapping[str, Any], *, source: str = "argument connection_config"
) -> RedisConfig:
    """Parse a ``REDIS_CONNECTION_CONFIG`` value (JSON text or a mapping); no I/O."""
    where = Source(source)
    options = _json_object(value, where) if isinstance(value, str) else value
    if not isinstance(options, Mapping):
        raise where.error(f"expected an object (a mapping), got {type(options).__name__}")
    check_keys(options, KNOWN_KEYS, where)  # before the address URL relabels the source
    return build_config(*_expand_address(options, where))


def _json_object(text: str, source: Source) -> Any:
    """The decoded JSON object; the error gives the position, never the (secret) text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"{err.msg} at line {err.lineno}, column {err.colno}"
        raise source.error(
            f"not valid JSON ({where}); expected a JSON object such as {_EXAMPLE}"
        ) from err
    except (ValueError, RecursionError) as err:  # an integer of thousands of digits; nesting
        raise source.error(
            f"JSON that Python cannot read ({type(err).__name__}: a number too long or "
            f"nesting too deep); expected a JSON object such as {_EXAMPLE}"
        ) from None
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "null")
        raise source.error(f"expected a JSON object {{...}}, got a JSON {kind}")
    return value


def _expand_address(options: Mapping[str, Any], source: Source) -> tuple[Mapping[str, Any], Source]:
    """Replace an ``address`` URL by the options it stands for; a key given twice is an error.

    Values from a URL are not echoed in errors from then on: a password with an unescaped
    ``/`` would otherwise surface as a "port".
    """
    address = options.get("address")
    if not isinstance(address, str) or "://" not in address:
        return options, source
    source = Source(f"{source.label} (address {redact_url(address)})", echo_values=False)
    from_url = url_options(address, source)
    if from_url.pop("mode") != "single":
        raise source.expected("address", "a redis://, rediss:// or unix:// URL")
    rest = {key: value for key, value in options.items() if key != "address"}
    for key in sorted(from_url.keys() & rest.keys() - IGNORED_KEYS.keys()):
        if not _same_value(key, from_url[key], rest[key]):
            raise source.error(
                f"'{key}' is given in the 'address' URL and as a key, with different values; "
                "expected it once"
            )
    return {**rest, **from_url}, source


def _same_value(key: str, from_url: object, given: object) -> bool:
    """Whether a key repeats the URL's value (``/0`` and ``"db": 0``), which channels_redis
    configurations often do. Credentials must match exactly."""
    plain = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in (from_url, given)]
    if plain[0] == plain[1]:
        return True
    if key == "username" or "password" in key:
        return False
    if str(plain[0]).lower() == str(plain[1]).lower():
        return True
    try:
        return float(plain[0]) == float(plain[1])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def parse_hosts_entry(entry: object, *, source: str = "hosts entry") -> RedisConfig:
    """Parse one channels_redis ``hosts`` item: a URL, a ``(host, port)`` pair or a dict."""
    if isinstance(entry, str):
        return parse_url(entry, source=source)
    if isinstance(entry, list | tuple) and len(entry) == 2:
        return parse_connection_config({"host": entry[0], "port": entry[1]}, source=source)
    if isinstance(entry, Mapping):
        return parse_connection_config(_redis_py_cert_reqs(entry), source=source)
    raise ConfigurationError(
        f"Invalid Redis configuration in {source}: expected a URL string, a (host, port) pair "
        f"or a dict, got {type(entry).__name__}."
    )


# Keys that say where Redis is; a configuration with none of them means localhost:6379.
_LOCATING_KEYS = frozenset(
    {"address", "host", "port", "unix_socket_path", "sentinels", "startup_nodes"}
)


@dataclass(frozen=True)
class ConfigSource:
    """The value chosen by the precedence rules, and the names of those it overrode."""

    name: str
    value: str | Mapping[str, Any]
    kind: Literal["url", "connection_config"]
    ignored: tuple[str, ...] = ()

    def parse(self) -> RedisConfig:
        """Parse the chosen value; errors name this source."""
        if self.kind == "url":
            return parse_url(str(self.value), source=self.name)
        where = Source(self.name)
        options = _json_object(self.value, where) if isinstance(self.value, str) else self.value
        config = parse_connection_config(options, source=self.name)
        if self.ignored and not _LOCATING_KEYS & set(options):
            # A configuration naming no Redis means localhost:6379; beside a URL it overrides,
            # it is a leftover (an empty ``{}`` templated into a manifest), not a choice: the
            # URL would be ignored, and the app would reach a Redis that is not there.
            raise where.error(
                f"names no Redis (no {', '.join(sorted(_LOCATING_KEYS))}), which means "
                f"localhost:6379, while {' and '.join(self.ignored)} is set and would be "
                "ignored; expected the address here, or this variable unset (blank counts "
                "as unset)"
            )
        return config


def select_source(
    *,
    url: str | None = None,
    connection_config: str | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigSource:
    """Apply the precedence rules; blank environment variables count as unset."""
    if url is not None or connection_config is not None:
        return _choose(connection_config, url, "argument connection_config", "argument url")
    env = os.environ if environ is None else environ
    config, address = (
        env.get(name, "").strip() or None for name in (CONFIG_VARIABLE, URL_VARIABLE)
    )
    return _choose(config, address, CONFIG_VARIABLE, URL_VARIABLE)


def _choose(
    config: str | Mapping[str, Any] | None, url: str | None, config_name: str, url_name: str
) -> ConfigSource:
    if config is not None:
        ignored = (url_name,) if url is not None else ()
        return ConfigSource(config_name, config, "connection_config", ignored)
    if url is not None:
        return ConfigSource(url_name, url, "url")
    return ConfigSource(f"the default {DEFAULT_URL}", DEFAULT_URL, "url")


def load_config(
    *,
    url: str | None = None,
    connection_config: str | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RedisConfig:
    """The validated configuration from code values or the environment (``os.environ``).

    Raises ConfigurationError; raised while Django imports the settings module and left
    uncaught, it prints as its message alone (``_settings_time``)."""
    with reported_at_settings_import("load_config"):
        source = select_source(url=url, connection_config=connection_config, environ=environ)
        config = source.parse()
    _announce(source, config)
    return config


def _announce(source: ConfigSource, config: RedisConfig) -> None:
    """Log the choice at INFO, once per distinct choice: settings modules load repeatedly."""
    facts = config.summary_dict()
    described = f"{facts['mode']} via {', '.join(facts['nodes'])}, db {facts['db']}"
    key = (source.name, source.ignored, described)
    if key in _announced:
        return
    _announced.add(key)
    ignored = "".join(f"; {name} is also set and ignored" for name in source.ignored)
    logger.info(
        "Redis configuration from %s: %s%s",
        source.name,
        described,
        ignored,
        extra={"config_source": source.name, "redis_mode": facts["mode"]},
    )


def _redis_py_cert_reqs(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """``"ssl_cert_reqs": None`` means "none" to redis-py, and channels_redis's Heroku
    example passes it; only here: in ``REDIS_CONNECTION_CONFIG`` a JSON null is an error
    rather than a silent way to turn verification off."""
    entry = _none_means_none(entry)
    kwargs = entry.get("sentinel_kwargs")
    if isinstance(kwargs, Mapping):
        entry["sentinel_kwargs"] = _none_means_none(kwargs)
    return entry


def _none_means_none(options: Mapping[str, Any]) -> dict[str, Any]:
    options = dict(options)
    if "ssl_cert_reqs" in options and options["ssl_cert_reqs"] is None:
        options["ssl_cert_reqs"] = "none"
    return options
