"""The field types of the Redis configuration models: each an annotated type whose
validators phrase a refusal as what the value should have been (our message format), and
never echo a credential.
"""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, SecretStr
from pydantic_core import PydanticCustomError

from ._constants import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_REPLY_TIMEOUT_S

_T = TypeVar("_T")


def expected(expectation: str) -> PydanticCustomError:
    """An error whose message is what the value should have been, for our message format."""
    return PydanticCustomError("expected", expectation)


def conflict(expectation: str) -> PydanticCustomError:
    """Like :func:`expected`, for a value that is wrong only next to another (not echoed)."""
    return PydanticCustomError("conflict", expectation)


def unechoed(expectation: str) -> PydanticCustomError:
    """Like :func:`expected`, for a value that must stay out of the message (a credential)."""
    return PydanticCustomError("unechoed", expectation)


def require(check: Callable[[_T], bool], expectation: str, *, echo: bool = True) -> AfterValidator:
    """A validator rejecting values that fail ``check``, phrased as an expectation."""

    def validate(value: _T) -> _T:
        if not check(value):
            raise expected(expectation) if echo else unechoed(expectation)
        return value

    return AfterValidator(validate)


def _number(expectation: str) -> BeforeValidator:
    """Refuses booleans where a number is due: JSON ``true`` would pass for 1 (port 1,
    database 1, one second) without a word."""

    def validate(value: object) -> object:
        if isinstance(value, bool):
            raise expected(expectation)
        return value

    return BeforeValidator(validate)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)  # IPv6 scope ids ("fe80::1%eth0") included
    except ValueError:
        return False
    return True


def _is_host_name(value: str) -> bool:
    """What the resolver takes: IDNA-encodable, labels of 1 to 63 bytes, 253 in all.

    The resolver rejects anything else with UnicodeError or ValueError, not OSError, so a
    name let through here would fail every connection attempt in an unexpected way."""
    name = value.removesuffix(".")  # a fully qualified "redis.example.com."
    if not name or any(not c.isprintable() or c.isspace() or c in "/@,[]?#%:\\" for c in name):
        return False
    try:
        encoded = name.encode("idna")
    except UnicodeError:
        return False
    return len(encoded) <= 253 and all(0 < len(label) <= 63 for label in encoded.split(b"."))


def _is_host(value: str) -> bool:
    return _is_ip(value) or _is_host_name(value)


def _is_utf8(value: str | SecretStr) -> bool:
    """Redis gets credentials as UTF-8; a surrogate (a non-UTF-8 byte read from the
    environment, or a lone JSON ``\\ud800`` escape) cannot be sent."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_socket_path(value: str) -> bool:
    if not value or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return True


_UTF8 = "text that can be encoded as UTF-8 (not a non-UTF-8 byte, e.g. from the environment)"
Host = Annotated[
    str, require(_is_host, "a host name (labels of 1 to 63 characters) or an IP address")
]
Username = Annotated[str, require(_is_utf8, _UTF8, echo=False)]
Password = Annotated[SecretStr, require(_is_utf8, _UTF8, echo=False)]


def _empty_is_none(value: object) -> object:
    """An empty password means none, as in a URL and in redis-py (which then sends no AUTH):
    settings templated as ``os.environ.get("REDIS_PASSWORD", "")`` must keep working."""
    empty = value == "" or (isinstance(value, SecretStr) and not value.get_secret_value())
    return None if empty else value


OptionalPassword = Annotated[Password | None, BeforeValidator(_empty_is_none)]
_PASS_PHRASE_MAX_BYTES = 1024  # OpenSSL's PEM_BUFSIZE: Python's ssl refuses longer ones
KeyPassPhrase = Annotated[
    Password,
    require(
        lambda value: len(value.get_secret_value().encode()) <= _PASS_PHRASE_MAX_BYTES,
        f"at most {_PASS_PHRASE_MAX_BYTES} bytes (OpenSSL's limit for a key pass phrase)",
        echo=False,
    ),
]
OptionalKeyPassPhrase = Annotated[KeyPassPhrase | None, BeforeValidator(_empty_is_none)]
SocketPath = Annotated[
    str, require(_is_socket_path, "a file path the system can use (no NUL characters)")
]
_PORT, _DB = "a port number from 1 to 65535", "a database number >= 0"
_SECONDS, _POSITIVE_SECONDS = "a duration in seconds >= 0", "a duration in seconds > 0"
Port = Annotated[int, _number(_PORT), require(lambda p: 1 <= p <= 65535, _PORT)]
Seconds = Annotated[
    float, _number(_SECONDS), require(lambda s: math.isfinite(s) and s >= 0, _SECONDS)
]
Database = Annotated[int, _number(_DB), require(lambda d: d >= 0, _DB)]


def _timeout(default: str) -> str:
    """What a socket timeout must be; ``default`` says what leaving it out means. 0 is refused:
    the layer took it for its default, redis-py (in the cache) would time out every read at
    once, and some read it as "no timeout"."""
    return f"a duration in seconds > 0 (leave it out for {default})"


def _is_positive(seconds: float) -> bool:
    return math.isfinite(seconds) and seconds > 0


def _positive(expectation: str) -> AfterValidator:
    return require(_is_positive, expectation)


_REPLY = _timeout(f"the default, {DEFAULT_REPLY_TIMEOUT_S:g} s")
_CONNECT = _timeout(f"the default, {DEFAULT_CONNECT_TIMEOUT_S:g} s")
_SENTINEL = _timeout("the data nodes' value")
ReplyTimeout = Annotated[float, _number(_REPLY), _positive(_REPLY)]
ConnectTimeout = Annotated[float, _number(_CONNECT), _positive(_CONNECT)]
SentinelTimeout = Annotated[float, _number(_SENTINEL), _positive(_SENTINEL)]
PositiveSeconds = Annotated[float, _number(_POSITIVE_SECONDS), _positive(_POSITIVE_SECONDS)]


def _is_master_name(name: str) -> bool:
    # U+FFFD is what a URL's %-escape of bytes that are not UTF-8 decodes to: the sentinels
    # would be asked about a master of another name, and wait out failover_timeout for it.
    return bool(name) and name.isprintable() and "\ufffd" not in name


MasterName = Annotated[
    str,
    require(
        _is_master_name,
        "a master name of printable UTF-8 characters (no control characters; in a URL, "
        "%-escapes that decode to UTF-8)",
    ),
]


def _cert_reqs_as_redis_py_takes_them(value: object) -> object:
    """``ssl.CERT_*`` constants, as redis-py takes them (its ``None`` is translated for
    channels_redis hosts entries only, see ``_sources``)."""
    if isinstance(value, ssl.VerifyMode):
        return {ssl.CERT_NONE: "none", ssl.CERT_OPTIONAL: "optional"}.get(value, "required")
    return value


CertReqs = Annotated[
    Literal["required", "optional", "none"], BeforeValidator(_cert_reqs_as_redis_py_takes_them)
]
