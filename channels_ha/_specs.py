"""Turning a validated configuration into what the layer connects with."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._constants import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_REPLY_TIMEOUT_S
from ._hints import hints_for
from ._resp import Endpoint
from ._server import Credentials, FixedLocator, SentinelLocator, ServerSettings
from ._shard import SentinelWatchSpec, ShardSpec
from ._tls import ssl_context

if TYPE_CHECKING:
    from ._config import (
        ClusterConfig,
        RedisConfig,
        SentinelConfig,
        SingleNodeConfig,
        TLSConfig,
    )


def shard_spec(config: RedisConfig, index: int, client_name: str) -> ShardSpec:
    """One shard of the layer: a single node, a Sentinel master or a whole Cluster."""
    settings = _settings(config, client_name)
    if config.mode == "single":
        return ShardSpec(index, FixedLocator(_single_endpoint(config)), settings)
    if config.mode == "sentinel":
        return _sentinel_shard(config, index, settings)
    return _cluster_shard(config, index, settings)


def _cluster_shard(config: ClusterConfig, index: int, settings: ServerSettings) -> ShardSpec:
    context = _context(config.tls)
    nodes = tuple(
        Endpoint(node.host, node.port, ssl_context=context, server_hostname=node.host)
        for node in config.startup_nodes
    )
    return ShardSpec(index, _StartupNodes(nodes), settings, cluster=nodes)


@dataclass(frozen=True)
class _StartupNodes:
    """Where a Cluster is first reached; the router finds each slot's master from there."""

    nodes: tuple[Endpoint, ...]

    async def locate(self) -> Endpoint:
        return self.nodes[0]

    def describe(self) -> str:
        return "cluster via " + ", ".join(node.describe() for node in self.nodes)


def _settings(config: RedisConfig, client_name: str) -> ServerSettings:
    password = config.password.get_secret_value() if config.password else None
    return ServerSettings(
        credentials=Credentials(config.username, password),
        db=config.db,
        connect_timeout_s=config.socket_connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S,
        reply_timeout_s=config.socket_timeout_s or DEFAULT_REPLY_TIMEOUT_S,
        failover_timeout_s=config.failover_timeout_s,
        client_name=client_name,
        hints=hints_for(config),
    )


def _context(tls: TLSConfig | None, prefix: str = "") -> ssl.SSLContext | None:
    return None if tls is None else ssl_context(tls, prefix)


def _single_endpoint(config: SingleNodeConfig) -> Endpoint:
    if config.unix_socket_path:
        return Endpoint(host="", port=0, unix_path=config.unix_socket_path)
    assert config.address is not None
    host = config.address.host
    return Endpoint(
        host, config.address.port, ssl_context=_context(config.tls), server_hostname=host
    )


def _sentinel_shard(config: SentinelConfig, index: int, settings: ServerSettings) -> ShardSpec:
    """The data nodes' files are read first: the sentinels inherit those they do not set in
    sentinel_kwargs, so a file failing there is one of sentinel_kwargs."""
    master_context = _context(config.tls)
    if config.sentinel_tls == config.tls:
        sentinel_context = master_context
    else:
        sentinel_context = _context(config.sentinel_tls, "sentinel_kwargs.")
    sentinels = tuple(
        Endpoint(node.host, node.port, ssl_context=sentinel_context, server_hostname=node.host)
        for node in config.sentinels
    )
    password = config.sentinel_password
    credentials = Credentials(
        config.sentinel_username, password.get_secret_value() if password else None
    )
    connect_timeout_s = config.sentinel_socket_connect_timeout_s or settings.connect_timeout_s
    # A sentinel's reply waits sentinel_kwargs' socket_timeout, else the connect timeout: the
    # data nodes' socket_timeout is sized for large replies, a sentinel's come from memory.
    reply_timeout_s = config.sentinel_socket_timeout_s or connect_timeout_s
    locator = SentinelLocator(
        sentinels=sentinels,
        master_name=config.master_name,
        sentinel_credentials=credentials,
        master_template=Endpoint("", 0, ssl_context=master_context),
        connect_timeout_s=connect_timeout_s,
        reply_timeout_s=reply_timeout_s,
    )
    watch = SentinelWatchSpec(
        sentinels, config.master_name, credentials, connect_timeout_s, reply_timeout_s
    )
    return ShardSpec(index, locator, settings, watch)
