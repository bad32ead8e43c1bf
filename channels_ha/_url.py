"""``REDIS_URL`` parsing: redis-py's URL forms plus ``redis+sentinel://`` and ``redis+cluster://``.

A URL is first turned into the flat options of ``REDIS_CONNECTION_CONFIG`` (query parameters
keep their names), so both sources share one builder and one set of error messages. Errors
echo the URL only in redacted form and never echo a value taken from it.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

from pydantic import SecretStr

from ._config import RedisConfig
from ._options import TLS_KEYS, Source, build_config, check_keys

__all__ = ["SCHEMES", "parse_url", "redact_url", "url_options"]

SCHEMES = {  # scheme -> (mode, how the location reads, TLS)
    "redis": ("single", "tcp", False),
    "rediss": ("single", "tcp", True),
    "unix": ("single", "unix", False),
    "redis+sentinel": ("sentinel", "sentinel", False),
    "rediss+sentinel": ("sentinel", "sentinel", True),
    "redis+cluster": ("cluster", "cluster", False),
    "rediss+cluster": ("cluster", "cluster", True),
}
QUERY_KEYS = (
    "db",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "failover_timeout",
    *TLS_KEYS,
)
SENTINEL_QUERY_KEYS = (*QUERY_KEYS, "sentinel_username", "sentinel_password")
_PASSWORD_QUERY_KEYS = {name for name in SENTINEL_QUERY_KEYS if "password" in name}
logger = logging.getLogger("channels_ha.config")
_plus_noted: set[str] = set()  # password parameters whose '+' was already warned about
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")
_UTF8_ESCAPES = "%-escapes of UTF-8 text (é is %C3%A9; %E9, Latin-1's, is not UTF-8)"
_MISPLACED_AT = (
    "an '@' after the host part; if a password holds '/', '?', '#' or '&', percent-encode "
    "them (%2F, %3F, %23, %26)"
)


def redact_url(url: str) -> str:
    """The URL with its userinfo password, the value of any ``*password*`` or unknown
    parameter and any query item that is not ``name=value`` shown as ``***``.

    The userinfo ends at the last ``@``, which over-redacts odd URLs rather than leak a
    password holding an unescaped ``/`` or ``?``. Parameter names are judged decoded, as the
    parser reads them; an item without ``=`` may be the rest of a password holding ``&``.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, location = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{location}"
    before, question, query = rest.partition("?")
    if question:
        items, after_password = [], False
        for item in query.split("&"):
            items.append(_redact_item(item, after_password))
            after_password = after_password or "password" in unquote(item).lower()
        rest = before + "?" + "&".join(items)
    return scheme + separator + rest


def _redact_item(item: str, after_password: bool) -> str:
    """An item after a password that is not a known parameter may be part of it; the value
    of an unknown parameter may be a password under a misspelt name (``ssl_pasword=``)."""
    name, equals, _ = item.partition("=")
    name = unquote(name)
    known = name in SENTINEL_QUERY_KEYS
    if not equals or (after_password and not known):
        return "***" if item else item
    return item if known and "password" not in name.lower() else f"{name}=***"


def parse_url(url: str, *, source: str = "argument url") -> RedisConfig:
    """Parse a Redis URL into a config, validating it fully and without any I/O."""
    where = Source(f"{source} ({redact_url(url)})", echo_values=False)
    return build_config(url_options(url, where), where)


def url_options(url: str, source: Source) -> dict[str, Any]:
    """The URL as flat options, in the vocabulary of ``REDIS_CONNECTION_CONFIG``."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise source.error(f"unknown URL scheme '{scheme}'; expected one of {known}")
    mode, location, tls = SCHEMES[scheme.lower()]
    netloc, path, query = _split(rest)
    if "@" in path and location != "unix":  # a socket file may be named redis@6379.sock
        raise source.error(f"{_MISPLACED_AT}; expected [user:password@]host[:port][/path]")
    credentials, hosts = _userinfo(netloc, source)
    options = {"mode": mode, **credentials, **_LOCATIONS[location](hosts, path, source)}
    options |= _query(query, mode, source)
    return options | ({"ssl": True} if tls else {})


def _split(rest: str) -> tuple[str, str, str]:
    """``netloc``, ``path`` and ``query``, the netloc ending at the first ``/`` or ``?``."""
    ends = [index for index in (rest.find("/"), rest.find("?")) if index >= 0]
    end = min(ends, default=len(rest))
    path, _, query = rest[end:].partition("?")
    return rest[:end], path, query


def _decoded(text: str, key: str, source: Source, *, plus: bool = False) -> str:
    """``text`` with its %-escapes decoded as UTF-8 (and '+' read as a space in a query
    value). Seen: ``%E9`` (Latin-1's é) in a password became U+FFFD, a password nobody set,
    refused by Redis with no word on why. The error names the key, never the value, and
    drops the decoder's, which quotes a byte of it."""
    try:
        return unquote(text.replace("+", " ") if plus else text, errors="strict")
    except UnicodeDecodeError:
        raise source.expected(key, _UTF8_ESCAPES) from None


def _userinfo(netloc: str, source: Source) -> tuple[dict[str, Any], str]:
    """Percent-decoded username and secret password (the data nodes'), and the host list."""
    userinfo, _, hosts = netloc.rpartition("@")
    raw_username, _, raw_password = userinfo.partition(":")
    username = _decoded(raw_username, "username", source)
    password = _decoded(raw_password, "password", source)
    credentials: dict[str, Any] = {"username": username} if username else {}
    return credentials | ({"password": SecretStr(password)} if password else {}), hosts


def _database(text: str) -> dict[str, str]:
    """``db`` from a path segment such as ``/2``; absent when empty."""
    db = text.strip("/")
    return {"db": db} if db else {}


def _tcp(hosts: str, path: str, source: Source) -> dict[str, Any]:
    if "," in hosts:
        raise source.expected(
            "address", "one host (use redis+sentinel:// or redis+cluster:// for several)"
        )
    return {"address": _decoded(hosts, "address", source) or "localhost", **_database(path)}


def _unix(hosts: str, path: str, source: Source) -> dict[str, Any]:
    if hosts:
        raise source.expected(
            "unix_socket_path", "no host in a unix URL, e.g. unix:///run/redis.sock"
        )
    return {"unix_socket_path": _decoded(path, "unix_socket_path", source)}


def _node_list(hosts: str, key: str, source: Source) -> list[str]:
    return [_decoded(host, key, source) for host in hosts.split(",")] if hosts else []


def _sentinel(hosts: str, path: str, source: Source) -> dict[str, Any]:
    master, _, db = path.lstrip("/").partition("/")
    if not master:
        raise source.expected(
            "master_name",
            "the master name as the URL path, e.g. redis+sentinel://host:26379/mymaster",
        )
    return {
        "sentinels": _node_list(hosts, "sentinels", source),
        "master_name": _decoded(master, "master_name", source),
        **_database(db),
    }


def _cluster(hosts: str, path: str, source: Source) -> dict[str, Any]:
    return {"startup_nodes": _node_list(hosts, "startup_nodes", source), **_database(path)}


_LOCATIONS = {"tcp": _tcp, "unix": _unix, "sentinel": _sentinel, "cluster": _cluster}


def _query(query: str, mode: str, source: Source) -> dict[str, Any]:
    """Query parameters, checked against the options a URL of this mode may carry. A name
    that is not plain is not echoed: it may be the tail of a password holding '?' or '&'."""
    for item in filter(None, query.split("&")):
        name, equals, _ = item.partition("=")
        if not equals or "@" in name:
            problem = _MISPLACED_AT if "@" in name else "a query item without '=' (not shown)"
            raise source.error(f"{problem}; expected name=value parameters")
    raw = [item.partition("=")[::2] for item in filter(None, query.split("&"))]
    pairs = [(_query_name(name, source), value) for name, value in raw]
    known = SENTINEL_QUERY_KEYS if mode == "sentinel" else QUERY_KEYS
    password = ""  # the first password parameter so far: what follows may be part of it
    for name, _ in pairs:
        if name in known:
            password = password or (name if "password" in name.lower() else "")
            continue
        if not _PLAIN_NAME.fullmatch(name):
            problem = "a query parameter with an unexpected name (not shown)"
        elif password:
            problem = (
                f"an unknown query parameter after '{password}' (not shown: if the password "
                f"holds '&', percent-encode it as %26)"
            )
        else:
            continue  # named by check_keys, with a suggestion
        raise source.error(f"{problem}; expected one of {', '.join(known)}")
    check_keys(dict(pairs), known, source, noun="query parameter")
    _once_each(pairs, source)
    parameters: dict[str, Any] = {
        name: _decoded(value, name, source, plus=True) for name, value in pairs
    }
    for name in _PASSWORD_QUERY_KEYS & parameters.keys():  # hidden from here on
        parameters[name] = SecretStr(parameters[name])
    _note_plus(query)
    return parameters


def _query_name(name: str, source: Source) -> str:
    """A query parameter's decoded name; not shown when undecodable (a password's tail?)."""
    try:
        return unquote(name.replace("+", " "), errors="strict")
    except UnicodeDecodeError:
        raise source.error(
            f"a query parameter name that is not UTF-8 (not shown); expected {_UTF8_ESCAPES}"
        ) from None


def _once_each(pairs: list[tuple[str, str]], source: Source) -> None:
    """A parameter given twice is an error: redis-py's ``from_url`` takes the first value, so
    a URL shared with a Django cache or Celery would mean two things (``?db=1&db=2``: two
    databases). Only the name is shown; the values may be passwords."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise source.error(
                f"'{name}': query parameter given twice; expected it once (redis-py, reading "
                "the same URL for a cache or Celery, would take the first value)"
            )
        seen.add(name)


def _note_plus(query: str) -> None:
    """Warns, once per parameter and process, of a password parameter holding a literal '+'.

    A query value reads '+' as a space, in redis-py's ``from_url`` too, so that is kept; but
    the userinfo keeps a '+', and a base64 password put in both places (a templated
    ``:$(REDIS_PASSWORD)@...?sentinel_password=$(REDIS_PASSWORD)``) then works on the data
    nodes and fails on the sentinels. A password meant with a space can be written %20."""
    for item in query.split("&"):
        name, _, value = item.partition("=")
        name = unquote(name)
        if name in _PASSWORD_QUERY_KEYS and "+" in value and name not in _plus_noted:
            _plus_noted.add(name)
            logger.warning(
                "Redis URL query parameter '%s' holds a '+', read as a space as in any URL "
                "query (and redis-py); if the password has a '+', write it %%2B.",
                name,
            )
