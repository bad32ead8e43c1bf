"""channels-ha: a highly available, fast Redis channel layer for Django Channels.

The public API is what ``__all__`` lists; every other module is private (``_name``), except
``channels_ha.exceptions`` and the ``channels_ha.sandbox`` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .exceptions import (
    ChannelsHAError,
    ConfigurationError,
    ConnectionLost,
    ForeignChannel,
    LayerClosed,
    RedisCommandError,
    RedisUnavailable,
    SandboxError,
    SandboxPortTaken,
)

if TYPE_CHECKING:
    from ._config import (
        ClusterConfig,
        NodeAddress,
        RedisConfig,
        SentinelConfig,
        SingleNodeConfig,
        TLSConfig,
    )
    from ._interop import caches, channel_layers
    from ._layer import RedisChannelLayer
    from ._lifespan import close_layers_at_shutdown
    from ._probe import probe
    from ._probe_report import ProbeReport
    from ._sources import load_config, parse_connection_config, parse_hosts_entry
    from ._url import parse_url

__version__ = "0.1.0"

# Names load on first use (PEP 562): settings.py imports this package before Django is set
# up, and the pytest plugin imports it in every test run, so importing it must stay cheap.
_HOMES = {
    "ClusterConfig": "._config",
    "NodeAddress": "._config",
    "RedisConfig": "._config",
    "SentinelConfig": "._config",
    "SingleNodeConfig": "._config",
    "TLSConfig": "._config",
    "caches": "._interop",
    "channel_layers": "._interop",
    "RedisChannelLayer": "._layer",
    "close_layers_at_shutdown": "._lifespan",
    "probe": "._probe",
    "ProbeReport": "._probe_report",
    "load_config": "._sources",
    "parse_connection_config": "._sources",
    "parse_hosts_entry": "._sources",
    "parse_url": "._url",
}

__all__ = [
    "ChannelsHAError",
    "ClusterConfig",
    "ConfigurationError",
    "ConnectionLost",
    "ForeignChannel",
    "LayerClosed",
    "NodeAddress",
    "ProbeReport",
    "RedisChannelLayer",
    "RedisCommandError",
    "RedisConfig",
    "RedisUnavailable",
    "SandboxError",
    "SandboxPortTaken",
    "SentinelConfig",
    "SingleNodeConfig",
    "TLSConfig",
    "__version__",
    "caches",
    "channel_layers",
    "close_layers_at_shutdown",
    "load_config",
    "parse_connection_config",
    "parse_hosts_entry",
    "parse_url",
    "probe",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
