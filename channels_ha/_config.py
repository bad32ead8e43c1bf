"""The parsed Redis configuration: immutable models that every other module consumes.

Parsing (``_url``, ``_sources``, ``_options``) produces these models and nothing else touches
the raw input again, so a password is a :class:`pydantic.SecretStr` from the moment it is read
and every ``repr``, ``str`` and summary is redacted. Building the models does no I/O; only
:meth:`TLSConfig.ssl_context` reads files.
"""

from __future__ import annotations

import ssl
from typing import Annotated, Any, Literal, TypeAlias, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import _redis_kwargs
from ._config_fields import (
    CertReqs,
    ConnectTimeout,
    Database,
    Host,
    MasterName,
    OptionalKeyPassPhrase,
    OptionalPassword,
    Port,
    PositiveSeconds,
    ReplyTimeout,
    Seconds,
    SentinelTimeout,
    SocketPath,
    Username,
    conflict,
    expected,
    require,
)
from ._config_summary import summary_text
from ._constants import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_REPLY_TIMEOUT_S

__all__ = [
    "DEFAULT_FAILOVER_TIMEOUT_S",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_SENTINEL_PORT",
    "ClusterConfig",
    "NodeAddress",
    "RedisConfig",
    "SentinelConfig",
    "SingleNodeConfig",
    "TLSConfig",
]

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_FAILOVER_TIMEOUT_S = 30.0  # seconds the layer waits for a new master


class _Frozen(BaseModel):
    # Inputs stay out of pydantic's own messages: they may be passwords, and a chained
    # ValidationError ends up in tracebacks and logs.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def split_host_port(text: str, default_port: int) -> dict[str, Any]:
    """``"host"``, ``"host:port"`` or ``"[v6]:port"`` as NodeAddress fields (not yet validated)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise expected('a "host:port" address with IPv6 hosts in brackets, e.g. "[::1]:6379"')
        return {"host": host, "port": rest[1:] or default_port}
    if text.count(":") > 1:
        raise expected('an IPv6 host in brackets, e.g. "[::1]:6379"')
    host, _, port = text.partition(":")
    return {"host": host, "port": port or default_port}


def _node_coercer(default_port: int) -> BeforeValidator:
    """Accept ``"host:port"`` strings and ``[host, port]`` pairs where a NodeAddress is due."""

    def coerce(value: object) -> object:
        if isinstance(value, str):
            return split_host_port(value, default_port)
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise expected('a [host, port] pair or a "host:port" string')
            return {"host": value[0], "port": value[1]}
        if isinstance(value, dict | NodeAddress):
            return value
        raise expected('a "host:port" string or a [host, port] pair')

    return BeforeValidator(coerce)


class NodeAddress(_Frozen):
    """One TCP endpoint; resolution is left to redis-py so parsing stays free of DNS."""

    host: Host
    port: Port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


RedisNode = Annotated[NodeAddress, _node_coercer(DEFAULT_REDIS_PORT)]
SentinelNode = Annotated[NodeAddress, _node_coercer(DEFAULT_SENTINEL_PORT)]


class TLSConfig(_Frozen):
    """How to verify and authenticate one TLS hop (data nodes or sentinels)."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    password: OptionalKeyPassPhrase = None  # of an encrypted key (redis-py's ssl_password)
    cert_reqs: CertReqs = "required"
    check_hostname: bool | None = None  # None: on unless cert_reqs is "none", as in redis-py

    @field_validator("keyfile")
    @classmethod
    def _keyfile_needs_certfile(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("certfile") is None:
            raise conflict("no key file without a certificate file (set the certfile too)")
        return value

    @field_validator("password")
    @classmethod
    def _password_needs_certfile(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None and info.data.get("certfile") is None:
            raise conflict(
                "no key pass phrase without a client certificate (set the certfile and the "
                "keyfile it unlocks)"
            )
        return value

    @field_validator("check_hostname")
    @classmethod
    def _hostname_needs_verification(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("cert_reqs") == "none":
            raise conflict(
                'false or unset when certificates are not verified (ssl_cert_reqs "none")'
            )
        return value

    @property
    def verifies_hostname(self) -> bool:
        """Whether the server's name is checked against its certificate."""
        if self.check_hostname is None:
            return self.cert_reqs != "none"
        return self.check_hostname

    def ssl_context(self) -> ssl.SSLContext:
        """A client context for this policy; reads the CA and certificate files (I/O), and
        names the setting of a file that is missing, unreadable, not PEM or encrypted."""
        from ._tls import ssl_context  # _tls needs this module: imported on use

        return ssl_context(self)

    def redis_kwargs(self) -> dict[str, Any]:
        """The ``ssl_*`` keyword arguments redis-py's SSL connections take; the key's pass
        phrase in clear text, as redis-py needs it."""
        kwargs = {"ssl_ca_certs": self.ca_certs, "ssl_certfile": self.certfile}
        kwargs["ssl_keyfile"] = self.keyfile
        kwargs["ssl_password"] = None if self.password is None else self.password.get_secret_value()
        options = {k: v for k, v in kwargs.items() if v is not None}
        return {
            **options,
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_check_hostname": self.verifies_hostname,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for summaries; the key's pass phrase only as set or not."""
        return {
            "verify": self.cert_reqs,
            "check_hostname": self.verifies_hostname,
            "ca_certs": self.ca_certs,
            "client_cert": self.certfile is not None,
            "key_password_set": self.password is not None,
        }


_VERIFY_MODES = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


def _security(
    tls: TLSConfig | None, username: str | None, password: SecretStr | None
) -> dict[str, Any]:
    """TLS and auth facts for one hop; the password is reported only as present or not."""
    return {
        "tls": tls is not None,
        "tls_options": None if tls is None else tls.describe(),
        "auth": username is not None or password is not None,
        "username": username,
        "password_set": password is not None,
    }


class _BaseConfig(_Frozen):
    """Fields every topology shares; durations are seconds, as in redis-py."""

    mode: Literal["single", "sentinel", "cluster"]
    username: Username | None = None
    password: OptionalPassword = None
    db: Database = 0
    tls: TLSConfig | None = None
    socket_timeout_s: ReplyTimeout | None = None  # None: DEFAULT_REPLY_TIMEOUT_S
    socket_connect_timeout_s: ConnectTimeout | None = None  # None: DEFAULT_CONNECT_TIMEOUT_S
    socket_keepalive: bool = False
    health_check_interval_s: Seconds = 0.0
    failover_timeout_s: PositiveSeconds = DEFAULT_FAILOVER_TIMEOUT_S

    def node_labels(self) -> list[str]:
        """The addresses a client starts from, for humans."""
        raise NotImplementedError

    def _sentinel_security(self) -> dict[str, Any] | None:
        return None

    def _master_name(self) -> str | None:
        return None

    def summary_dict(self) -> dict[str, Any]:
        """What this configuration connects to and how, JSON-able and without secrets."""
        return {
            "mode": self.mode,
            "nodes": self.node_labels(),
            "master_name": self._master_name(),
            "db": self.db,
            "data_nodes": _security(self.tls, self.username, self.password),
            "sentinels": self._sentinel_security(),
            "timeouts_s": self._timeouts(),
            "timeouts_defaulted": [
                name
                for name, value in (
                    ("socket", self.socket_timeout_s),
                    ("socket_connect", self.socket_connect_timeout_s),
                )
                if value is None
            ],
            "socket_keepalive": self.socket_keepalive,
        }

    def _timeouts(self) -> dict[str, float]:
        """The values the layer and the cache use, defaults included (channels_redis, fed by
        ``channel_layers(backend=...)``, gets only those set: redis-py then waits forever)."""
        return {
            "socket": _or(self.socket_timeout_s, DEFAULT_REPLY_TIMEOUT_S),
            "socket_connect": _or(self.socket_connect_timeout_s, DEFAULT_CONNECT_TIMEOUT_S),
            "health_check_interval": self.health_check_interval_s,
            "failover": self.failover_timeout_s,
        }

    def summary(self) -> str:
        """The summary as a few lines of text for operators (``channels-ha check``)."""
        return summary_text(self.summary_dict())

    def to_channels_redis_host(self) -> dict[str, Any]:
        """One ``hosts`` entry for channels_redis; it holds the password in clear text."""
        return _redis_kwargs.channels_redis_host(cast("RedisConfig", self))


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class SingleNodeConfig(_BaseConfig):
    """One Redis server over TCP or a unix socket; no failover beyond reconnecting."""

    mode: Literal["single"] = "single"
    address: RedisNode | None = None
    unix_socket_path: SocketPath | None = None

    @field_validator("unix_socket_path")
    @classmethod
    def _no_tls_over_unix(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("tls") is not None:
            raise conflict("no TLS with a unix socket (redis-py has no TLS over unix sockets)")
        return value

    @model_validator(mode="after")
    def _one_location(self) -> SingleNodeConfig:
        if (self.address is None) == (self.unix_socket_path is None):
            raise conflict("exactly one of address and unix_socket_path")
        return self

    def node_labels(self) -> list[str]:
        """``host:port``, or ``unix:<path>`` for a socket."""
        return [str(self.address) if self.address else f"unix:{self.unix_socket_path}"]


class SentinelConfig(_BaseConfig):
    """A master found through Redis Sentinel; sentinels have their own auth and TLS."""

    mode: Literal["sentinel"] = "sentinel"
    sentinels: Annotated[tuple[SentinelNode, ...], require(bool, "at least one sentinel")]
    master_name: MasterName
    sentinel_username: Username | None = None
    sentinel_password: OptionalPassword = None
    sentinel_tls: TLSConfig | None = None
    sentinel_socket_timeout_s: SentinelTimeout | None = None  # None: same as socket_timeout_s
    sentinel_socket_connect_timeout_s: SentinelTimeout | None = None  # None: the data nodes'

    def node_labels(self) -> list[str]:
        """The sentinels' addresses."""
        return [str(node) for node in self.sentinels]

    def _master_name(self) -> str | None:
        return self.master_name

    def _sentinel_security(self) -> dict[str, Any] | None:
        return _security(self.sentinel_tls, self.sentinel_username, self.sentinel_password)


class ClusterConfig(_BaseConfig):
    """A Redis Cluster reached through any of its startup nodes."""

    mode: Literal["cluster"] = "cluster"
    startup_nodes: Annotated[tuple[RedisNode, ...], require(bool, "at least one startup node")]

    @field_validator("db")
    @classmethod
    def _cluster_has_one_database(cls, value: int) -> int:
        if value != 0:
            raise expected("0 (Redis Cluster has only database 0)")
        return value

    def node_labels(self) -> list[str]:
        """The startup nodes' addresses."""
        return [str(node) for node in self.startup_nodes]


RedisConfig: TypeAlias = SingleNodeConfig | SentinelConfig | ClusterConfig
