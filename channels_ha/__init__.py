"""channels-ha: a highly available, fast Redis channel layer for Django Channels.

The public API is what ``__all__`` lists; every other module is private (``_name``), except
``channels_ha.exceptions`` and the ``channels_ha.sandbox`` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import (
    ClusterConfig,
    NodeAddress,
    RedisConfig,
    SentinelConfig,
    SingleNodeConfig,
    TLSConfig,
)
from ._interop import channel_layers
from ._sources import load_config, parse_connection_config, parse_hosts_entry
from ._url import parse_url
from .exceptions import (
    ChannelsHAError,
    ConfigurationError,
    ConnectionLost,
    RedisCommandError,
    RedisUnavailable,
    SandboxError,
)

if TYPE_CHECKING:
    from ._layer import RedisChannelLayer

__version__ = "0.1.0"

__all__ = [
    "ChannelsHAError",
    "ClusterConfig",
    "ConfigurationError",
    "ConnectionLost",
    "NodeAddress",
    "RedisChannelLayer",
    "RedisCommandError",
    "RedisConfig",
    "RedisUnavailable",
    "SandboxError",
    "SentinelConfig",
    "SingleNodeConfig",
    "TLSConfig",
    "__version__",
    "channel_layers",
    "load_config",
    "parse_connection_config",
    "parse_hosts_entry",
    "parse_url",
]


def __getattr__(name: str) -> Any:
    # The layer imports Django and Channels; settings.py imports this package to build
    # CHANNEL_LAYERS, before Django is set up, so the layer loads only when asked for.
    if name == "RedisChannelLayer":
        from ._layer import RedisChannelLayer

        return RedisChannelLayer
    raise AttributeError(f"module 'channels_ha' has no attribute {name!r}")
