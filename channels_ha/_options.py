"""The flat option vocabulary and its translation into the config models.

``REDIS_CONNECTION_CONFIG``, the query string of ``REDIS_URL`` and channels_redis ``hosts``
dicts all speak the same keys (``socket_timeout``, ``ssl_ca_certs``, ``sentinels``...), so one
builder turns them into models and one formatter words every error: the source, the key path,
what was expected; a value is echoed only when the source allows it and never a password.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from ._config import (
    DEFAULT_REDIS_PORT,
    ClusterConfig,
    RedisConfig,
    SentinelConfig,
    SingleNodeConfig,
    TLSConfig,
)
from .exceptions import ConfigurationError

__all__ = [
    "IGNORED_KEYS",
    "KNOWN_KEYS",
    "TLS_KEYS",
    "Source",
    "build_config",
    "check_keys",
    "did_you_mean",
]

SINGLE_KEYS = ("address", "host", "port", "unix_socket_path")
SENTINEL_KEYS = (
    "sentinels",
    "master_name",
    "sentinel_kwargs",
    "sentinel_username",
    "sentinel_password",
)
CLUSTER_KEYS = ("startup_nodes",)
MODE_KEYS = {"single": SINGLE_KEYS, "sentinel": SENTINEL_KEYS, "cluster": CLUSTER_KEYS}
TLS_KEYS = {  # option key -> TLSConfig field
    "ssl_ca_certs": "ca_certs",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_password": "password",
    "ssl_cert_reqs": "cert_reqs",
    "ssl_check_hostname": "check_hostname",
}
COMMON_KEYS = {  # option key -> field shared by every model
    "username": "username",
    "password": "password",
    "db": "db",
    "socket_timeout": "socket_timeout_s",
    "socket_connect_timeout": "socket_connect_timeout_s",
    "socket_keepalive": "socket_keepalive",
    "health_check_interval": "health_check_interval_s",
    "failover_timeout": "failover_timeout_s",
}
SENTINEL_KWARGS_KEYS = {  # sentinel_kwargs key -> SentinelConfig field (TLS keys aside)
    "username": "sentinel_username",
    "password": "sentinel_password",
    "socket_timeout": "sentinel_socket_timeout_s",
    "socket_connect_timeout": "sentinel_socket_connect_timeout_s",
}
_NO_POOL = "channels-ha holds a fixed few connections per process"
_RETRIES = "channels-ha retries every operation until failover_timeout"
_BYTES = "channels-ha reads and writes bytes"
_OWN_NAMES = "channels-ha names its connections channels-ha:<pid>:<layer>"
IGNORED_KEYS = {  # redis-py connection options that change nothing here -> why
    "max_connections": _NO_POOL,
    "single_connection_client": _NO_POOL,
    "retry": _RETRIES,
    "retry_on_timeout": _RETRIES,
    "retry_on_error": _RETRIES,
    "encoding": _BYTES,
    "encoding_errors": _BYTES,
    "decode_responses": _BYTES,
    "protocol": "channels-ha speaks RESP2 itself",
    "client_name": _OWN_NAMES,
    "lib_name": _OWN_NAMES,
    "lib_version": _OWN_NAMES,
    "socket_keepalive_options": "the system's TCP keepalive timings apply",
}
_SENTINEL_IGNORED_KEYS = {
    **IGNORED_KEYS,
    "socket_keepalive": "the channel layer's connections to sentinels always use TCP keepalive",
}
KNOWN_KEYS = ("mode", "ssl", *SINGLE_KEYS, *SENTINEL_KEYS, *CLUSTER_KEYS, *TLS_KEYS, *COMMON_KEYS)
_KNOWN_SENTINEL_KWARGS = ("ssl", *SENTINEL_KWARGS_KEYS, *TLS_KEYS)
Loc = tuple[str | int, ...]  # a pydantic error location
_MODELS: dict[str, type[BaseModel]] = {
    "single": SingleNodeConfig,
    "sentinel": SentinelConfig,
    "cluster": ClusterConfig,
}
_RENAMED: dict[Loc, str] = {(field,): key for key, field in COMMON_KEYS.items() if key != field}
_MISSING = {
    "sentinels": "a list of sentinels ('master_name' needs 'sentinels')",
    "master_name": "the name of the master the sentinels monitor ('sentinels' needs 'master_name')",
    "startup_nodes": "a list of cluster nodes",
}
_EXPECTATIONS = {
    "missing": "a value",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing_size": "an integer of sensible size",
    "finite_number": "a finite number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "an object",
    "dict_type": "an object",
    "literal_error": "one of {expected}",
    "extra_forbidden": "no such key",
}
_BOOL = TypeAdapter(bool, config=ConfigDict(hide_input_in_errors=True))
_M = TypeVar("_M", bound=BaseModel)
_UNSET: Any = object()
logger = logging.getLogger("channels_ha.config")
_ignored_noted: set[str] = set()  # ignored options already logged by this process
Origin = Mapping[Loc, str]  # model field path -> option key path
Built = tuple[dict[str, Any], Origin]  # model fields of one mode, and where they came from
TLSOptions = dict[str, Any] | None  # the data nodes' ssl_* options; None when TLS is off


@dataclass(frozen=True)
class Source:
    """Where options came from; ``echo_values`` is off when values could hold a secret."""

    label: str
    echo_values: bool = True

    def error(self, problem: str) -> ConfigurationError:
        """One paragraph naming this source."""
        return ConfigurationError(f"Invalid Redis configuration in {self.label}: {problem}.")

    def expected(self, path: str, expectation: str, value: object = _UNSET) -> ConfigurationError:
        """``'<path>': expected <expectation>, got <value>``."""
        return self.error(self.problem(path, expectation, value))

    def problem(self, path: str, expectation: str, value: object = _UNSET) -> str:
        """The clause for one bad value; the value is shown only if harmless."""
        where = f"'{path}': " if path else ""
        return f"{where}expected {expectation}{self._got(path, value)}"

    def _got(self, path: str, value: object) -> str:
        if not self.echo_values or value is _UNSET or "password" in path:
            return ""
        if not isinstance(value, str | int | float | bool) and value is not None:
            return ""
        text = json.dumps(value)
        if "@" in text or "://" in text:  # could be a URL with credentials
            return ""
        return f", got {text if len(text) <= 60 else text[:57] + '...'}"


def check_keys(
    options: Mapping[Any, Any],
    known: Sequence[str],
    source: Source,
    *,
    prefix: str = "",
    noun: str = "key",
    ignored: Mapping[str, str] = IGNORED_KEYS,
) -> None:
    """Reject the first unknown key, suggesting the closest known one.

    redis-py's pool and codec options are let through (and then unused): a ``REDIS_URL`` is
    often shared with a cache or Celery, and channels_redis ``hosts`` dicts carry them."""
    for key in options:
        if key in ignored:
            _note_ignored(f"{prefix}{key}", ignored[key])
        elif key not in known:
            hint = did_you_mean(key, known, prefix)
            raise source.error(
                f"'{prefix}{key}': unknown {noun}{hint}; expected one of {', '.join(known)}"
            )


def did_you_mean(key: object, known: Sequence[str], prefix: str = "") -> str:
    """`` (did you mean '<closest>'?)`` for a misspelt key, or nothing when none is close."""
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _note_ignored(key: str, why: str) -> None:
    if key not in _ignored_noted:
        _ignored_noted.add(key)
        logger.info("Redis option '%s' is accepted and ignored: %s.", key, why)


def validate(model: type[_M], data: Mapping[str, Any], source: Source, origin: Origin) -> _M:
    """``model.model_validate`` with pydantic's errors reworded into one paragraph."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_problem(error, source, origin) for error in err.errors())
        raise source.error(problems) from err  # the models hide input values in errors


def _problem(error: ErrorDetails, source: Source, origin: Origin) -> str:
    path = _path(error["loc"], origin)
    kind = error["type"]
    if kind == "missing":
        return source.problem(path, _MISSING.get(path, "a value (it is required)"))
    if kind in ("conflict", "unechoed"):
        return source.problem(path, error["msg"])
    if kind == "expected":
        return source.problem(path, error["msg"], error["input"])
    template = _EXPECTATIONS.get(kind, error["msg"])
    return source.problem(path, template.format(**error.get("ctx", {})), error["input"])


def _path(loc: Loc, origin: Origin) -> str:
    """A pydantic location as the option path the user wrote, e.g. ``sentinels[1].port``."""
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in origin:
            return origin[loc[:cut]] + _suffix(loc[cut:])
    return _suffix(loc).lstrip(".")


def _suffix(parts: Loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


def _flag(options: Mapping[str, Any], key: str, source: Source, prefix: str = "") -> bool | None:
    """A boolean option, or None when absent."""
    if key not in options:
        return None
    try:
        return _BOOL.validate_python(options[key])
    except ValidationError as err:
        raise source.expected(prefix + key, "true or false", options[key]) from err


def _tls_keys(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: options[key] for key in TLS_KEYS if key in options}


def _tls(given: Mapping[str, Any], source: Source, origin: Mapping[str, str]) -> TLSConfig:
    """TLSConfig from ``ssl_*`` options; ``origin`` maps each key to the path to report."""
    fields = {TLS_KEYS[key]: value for key, value in given.items()}
    paths: dict[Loc, str] = {(TLS_KEYS[key],): path for key, path in origin.items()}
    return validate(TLSConfig, fields, source, paths)


def _reject_tls_keys(given: Mapping[str, Any], source: Source, prefix: str) -> None:
    if given:
        raise source.expected(
            prefix + next(iter(given)),
            'TLS to be on for this option (use a rediss:// URL or set "ssl": true)',
        )


def _data_tls(options: Mapping[str, Any], source: Source) -> TLSOptions:
    """The data nodes' ``ssl_*`` options, or None when TLS is off."""
    given = _tls_keys(options)
    if not _flag(options, "ssl", source):
        _reject_tls_keys(given, source, "")
        return None
    return given


def infer_mode(options: Mapping[str, Any], source: Source) -> str:
    """The explicit ``mode``, else the one whose keys are present; mixing modes is an error."""
    explicit = options.get("mode")
    if explicit is not None and (not isinstance(explicit, str) or explicit not in MODE_KEYS):
        raise source.expected("mode", "one of 'single', 'sentinel', 'cluster'", explicit)
    present = {mode: [key for key in keys if key in options] for mode, keys in MODE_KEYS.items()}
    modes = {mode for mode, keys in present.items() if keys} | ({explicit} if explicit else set())
    if len(modes) > 1:
        mixed = "; ".join(
            f"{mode} mode: {', '.join(present[mode]) or 'mode'}" for mode in sorted(modes)
        )
        raise source.error(
            f"keys of more than one mode are mixed ({mixed}); expected the keys of one mode only"
        )
    return explicit or next(iter(modes), "single")


def build_config(options: Mapping[str, Any], source: Source) -> RedisConfig:
    """Turn flat options into a validated, immutable config (pure: no I/O)."""
    check_keys(options, KNOWN_KEYS, source)
    mode = infer_mode(options, source)
    data_tls = _data_tls(options, source)
    fields: dict[str, Any] = {COMMON_KEYS[k]: v for k, v in options.items() if k in COMMON_KEYS}
    if data_tls is not None:
        fields["tls"] = _tls(data_tls, source, {key: key for key in data_tls})
    specific, origin = _BUILDERS[mode](options, source, data_tls)
    data = {**fields, **specific, "mode": mode}
    return cast("RedisConfig", validate(_MODELS[mode], data, source, {**_RENAMED, **origin}))


def _single(options: Mapping[str, Any], source: Source, data_tls: TLSOptions) -> Built:
    """Fields of a single node: one of address, host/port, unix_socket_path."""
    ways = [key for key in ("address", "unix_socket_path") if key in options]
    ways += ["host/port"] if "host" in options or "port" in options else []
    if len(ways) > 1:
        raise source.error(
            f"{' and '.join(ways)} are both given; expected only one way to locate the server"
        )
    if ways and ways[0] != "host/port":
        return {ways[0]: options[ways[0]]}, {}
    address = {
        "host": options.get("host", "localhost"),
        "port": options.get("port", DEFAULT_REDIS_PORT),
    }
    return {"address": address}, {("address", "host"): "host", ("address", "port"): "port"}


def _cluster(options: Mapping[str, Any], source: Source, data_tls: TLSOptions) -> Built:
    """Fields of a cluster: its startup nodes."""
    return {key: options[key] for key in CLUSTER_KEYS if key in options}, {}


def _sentinel(options: Mapping[str, Any], source: Source, data_tls: TLSOptions) -> Built:
    """Fields of a Sentinel setup; ``sentinel_kwargs`` may carry the sentinels' auth and TLS."""
    kwargs = options.get("sentinel_kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise source.expected("sentinel_kwargs", "an object of sentinel connection options")
    check_keys(
        kwargs,
        _KNOWN_SENTINEL_KWARGS,
        source,
        prefix="sentinel_kwargs.",
        ignored=_SENTINEL_IGNORED_KEYS,
    )
    own_keys = ("sentinels", "master_name", "sentinel_username", "sentinel_password")
    fields = {key: options[key] for key in own_keys if key in options}
    origin: dict[Loc, str] = {}
    for key, field in SENTINEL_KWARGS_KEYS.items():
        if key in kwargs:
            _once(fields, field, f"sentinel_kwargs.{key}", source)
            fields[field], origin[(field,)] = kwargs[key], f"sentinel_kwargs.{key}"
    fields["sentinel_tls"] = _sentinel_tls(kwargs, source, data_tls)
    return fields, origin


def _once(fields: Mapping[str, Any], field: str, other: str, source: Source) -> None:
    if field in fields:
        raise source.error(f"'{field}' and '{other}' are both given; expected only one of them")


def _sentinel_tls(
    kwargs: Mapping[str, Any], source: Source, data_tls: TLSOptions
) -> TLSConfig | None:
    """TLS to the sentinels: the data nodes' unless ``sentinel_kwargs`` says otherwise."""
    own = _tls_keys(kwargs)
    enabled = _flag(kwargs, "ssl", source, "sentinel_kwargs.")
    if not (data_tls is not None if enabled is None else enabled):
        _reject_tls_keys(own, source, "sentinel_kwargs.")
        return None
    origin = {key: key for key in data_tls or {}} | {key: f"sentinel_kwargs.{key}" for key in own}
    return _tls({**(data_tls or {}), **own}, source, origin)


_BUILDERS = {"single": _single, "sentinel": _sentinel, "cluster": _cluster}
