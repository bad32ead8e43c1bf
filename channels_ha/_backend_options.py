"""The options of a channels_redis backend, checked when its ``CHANNEL_LAYERS`` entry is built.

channels_redis takes an unknown option (``capcity``, or channels-ha's ``failover_timeout``) as
a TypeError at the first ``get_channel_layer()`` (core), or ignores it (pubsub); configuration.md
promises an error naming it, with the closest known one, when the setting is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from typing import Any

from ._options import did_you_mean
from .exceptions import ConfigurationError

__all__ = ["check_backend_options"]

# Where a class's **kwargs go: a class of the same module, or nowhere (None: ignored).
_KWARGS_GO_TO: dict[str, str | None] = {
    "RedisPubSubChannelLayer": "RedisPubSubLoopLayer",
    "RedisPubSubLoopLayer": None,
}
_NOT_OPTIONS = {"self", "channel_layer"}  # channel_layer: set by the pubsub layer itself
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def check_backend_options(backend: str, options: Iterable[str]) -> None:
    """Raises ConfigurationError for the first option ``backend`` does not take; checks
    nothing when that cannot be known (not importable, **kwargs going somewhere unknown)."""
    known = _accepted(backend)
    if known is None:
        return
    for name in options:
        if name not in known:
            shown = [option for option in known if option != "hosts"]  # channel_layers() sets it
            raise ConfigurationError(
                f"Channel layer option {name!r} is unknown to {backend}"
                f"{did_you_mean(name, known)}; expected one of {', '.join(shown)}."
            )


def _accepted(backend: str) -> list[str] | None:
    module_name, _, class_name = backend.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    known: list[str] = []
    next_class: str | None = class_name
    for _ in range(len(_KWARGS_GO_TO) + 1):  # each class once
        if next_class is None:
            return known
        parameters = _parameters(getattr(module, next_class, None))
        if parameters is None:
            return None
        known += [p.name for p in parameters if p.kind in _NAMED and p.name not in _NOT_OPTIONS]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return known
        if next_class not in _KWARGS_GO_TO:
            return None
        next_class = _KWARGS_GO_TO[next_class]
    return None


def _parameters(cls: Any) -> list[inspect.Parameter] | None:
    if not inspect.isclass(cls):
        return None
    return list(inspect.signature(cls.__init__).parameters.values())
