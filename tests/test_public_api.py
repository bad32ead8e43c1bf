"""The public API: what ``channels_ha.__all__`` promises is importable, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import channels_ha
from channels_ha import exceptions


def test_every_public_name_imports() -> None:
    """Every name in __all__ resolves to an object."""
    for name in channels_ha.__all__:
        assert getattr(channels_ha, name) is not None, name


def test_every_exception_is_exported() -> None:
    """Every exception of channels_ha.exceptions (LayerClosed, which send() raises into the
    application during close(), among them) is in channels_ha.__all__ too."""
    missing = [name for name in exceptions.__all__ if name not in channels_ha.__all__]
    assert missing == []
    for name in exceptions.__all__:
        assert getattr(channels_ha, name) is getattr(exceptions, name), name


def test_import_is_cheap() -> None:
    """Importing the package (as settings.py does) loads neither Django, redis-py nor pydantic."""
    heavy = "{'django', 'redis', 'pydantic'}"
    code = f"import sys, channels_ha; print(sorted({heavy} & {{*sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
