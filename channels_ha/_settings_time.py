"""A configuration error met while Django imports the settings module: a message, not a traceback.

``load_config()``, ``channel_layers()`` and ``caches()`` are called at the top of settings.py,
so that a typo stops the process at startup instead of failing the first WebSocket. There the
ConfigurationError is still raised, as anywhere: settings may catch it (a fallback layer for
a Docker build), and a server that boots workers tells a failed boot from an exit by the
exception (gunicorn stops on "Worker failed to boot", and would boot a worker again and
again after a SystemExit). But left uncaught, it would reach the user as ~40 lines of
traceback through manage.py or uvicorn, the message on the last line. So it is raised
without the parser's frames, and the first time one is raised there this process's
``sys.excepthook`` learns to print such an error, uncaught, as its message alone; every
other exception goes to the hook that was there before. A child process of multiprocessing
(uvicorn's ``--workers`` and ``--reload``) prints its errors without the hook: there it is a
traceback whose last line is ``channels_ha.exceptions.ConfigurationError:`` and the message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from .exceptions import ConfigurationError

_MAX_FRAMES = 200  # the import of a settings module is never deeper than this


_MARK = "_channels_ha_settings"  # on an error raised while settings were imported


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
def reported_at_settings_import(function: str) -> Iterator[None]:
    """Raises a ConfigurationError met while settings are imported so that, uncaught, it
    prints as its message and where it came from (see the module's docstring)."""
    try:
        yield
    except ConfigurationError as err:
        module = settings_module_loading()
        if module is None or getattr(err, _MARK, False):  # (an inner call made it one)
            raise
        _install_hook()
        # A ConfigurationError by name in any traceback that prints it all the same (a
        # multiprocessing child, uvicorn's --workers or --reload, gunicorn's log).
        error = ConfigurationError(
            f"{err}\n(channels_ha.{function}() in the settings module {module}; "
            "`channels-ha check` shows what the environment parses to.)"
        )
        setattr(error, _MARK, True)
        raise error from None


def _install_hook() -> None:
    previous = sys.excepthook
    if getattr(previous, "_channels_ha", False):
        return

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        if isinstance(error, ConfigurationError) and getattr(error, _MARK, False):
            print(error, file=sys.stderr)
        else:
            previous(kind, error, trace)

    hook._channels_ha = True  # type: ignore[attr-defined]
    sys.excepthook = hook
