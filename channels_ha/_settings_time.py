"""A configuration error met while Django imports the settings module: a message, not a traceback.

``load_config()``, ``channel_layers()`` and ``caches()`` are called at the top of settings.py,
so that a typo stops the process at startup instead of failing the first WebSocket. Raised
there, a ConfigurationError reaches the user as a traceback from whatever imported the
settings (manage.py, uvicorn, gunicorn, Celery), its message on the last line. So there, and
only there, it becomes a SystemExit carrying the message: the process stops with status 1
and the message alone. Called from anywhere else (a test, a script), the functions raise
ConfigurationError as documented.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .exceptions import ConfigurationError

_MAX_FRAMES = 200  # the import of a settings module is never deeper than this


def settings_module_loading() -> str | None:
    """The settings module (``DJANGO_SETTINGS_MODULE``) whose import runs this call, if any:
    a module body of that name on the stack (settings split over several modules included:
    the named one imports the rest)."""
    name = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not name:
        return None
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == name:
            return name
        if frame.f_back is None:
            return None
        frame = frame.f_back
    return None


@contextmanager
def stop_at_settings_import(function: str) -> Iterator[None]:
    """Re-raises a ConfigurationError as SystemExit(message) while settings are imported."""
    try:
        yield
    except ConfigurationError as err:
        module = settings_module_loading()
        if module is None:
            raise
        raise SystemExit(
            f"{err}\n(channels_ha.{function}() in the settings module {module}; "
            "`channels-ha check` shows what the environment parses to.)"
        ) from None
