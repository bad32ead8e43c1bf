"""A settings.py example from the docs, added to the project ``django-admin startproject`` writes
and checked by ``manage.py check`` in a fresh interpreter: what a user who follows the docs runs.

Executing the block alone hid that it replaced startproject's INSTALLED_APPS, which the default
urls.py (the admin) needs.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "myproject"  # the name the docs' ASGI_APPLICATION uses
CHECK_TIMEOUT_S = 60.0


def startproject(directory: Path, settings_code: str) -> Path:
    """A startproject layout in ``directory`` whose settings.py ends with ``settings_code``."""
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", PROJECT, str(directory)],
        check=True,
        capture_output=True,
        timeout=CHECK_TIMEOUT_S,
    )
    settings = directory / PROJECT / "settings.py"
    settings.write_text(settings.read_text() + "\n" + settings_code + "\n")
    return directory


def settings_of(directory: Path) -> dict[str, Any]:
    """The namespace of the project's settings.py, run in this process."""
    return runpy.run_path(str(directory / PROJECT / "settings.py"))


def manage_check(directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a fresh interpreter (apps loaded, URLconf imported)."""
    environment = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        check=False,
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
    )
