"""Names of a package imported on first use (PEP 562).

Importing ``channels_ha`` must stay cheap: settings.py imports it before Django is set up,
and the pytest plugin is loaded by every pytest run of a project that has it installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose ``homes`` map a name to the
    module (relative to ``package``) that defines it; a name is cached in ``namespace`` once
    loaded."""

    def getattr_(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name], package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *homes})  # a loaded name is in both

    return getattr_, dir_
