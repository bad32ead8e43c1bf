"""Django settings of the demo: one app, SQLite, and the channel layer from the environment.

The launcher (``demo/run.py``) sets the environment for its workers:

``REDIS_URL`` / ``REDIS_CONNECTION_CONFIG``
    Where Redis is (read by ``channels_ha.channel_layers()``).
``DEMO_CHANNEL_LAYER``
    ``channels_ha`` (default) or ``channels_redis``, to compare the two on the same page.
``DEMO_DB_PATH``
    The SQLite file (default ``demo/db.sqlite3``).
``DEMO_CONTROL_SOCKET``
    The launcher's control socket, set only when it runs the Sentinel sandbox: it enables the
    sandbox panel and the "kill the master" button.
``DJANGO_SECRET_KEY``
    Shared by the workers; the launcher makes a fresh one per run.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import channels_ha

BASE_DIR = Path(__file__).resolve().parent

LAYER_BACKENDS = {
    "channels_ha": "channels_ha.RedisChannelLayer",
    "channels_redis": "channels_redis.core.RedisChannelLayer",
}
LAYER = os.environ.get("DEMO_CHANNEL_LAYER", "channels_ha")
if LAYER not in LAYER_BACKENDS:
    raise channels_ha.ConfigurationError(
        f"DEMO_CHANNEL_LAYER={LAYER!r}; expected one of {', '.join(LAYER_BACKENDS)}"
    )
CHANNEL_LAYERS = channels_ha.channel_layers(backend=LAYER_BACKENDS[LAYER])

CONTROL_SOCKET = os.environ.get("DEMO_CONTROL_SOCKET") or None

# A key made up per process would still work (the demo has no sessions or signed cookies),
# but the launcher shares one so that both workers agree.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DEMO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "channels",
    "channels_ha",  # system checks (run by migrate), `manage.py channels_ha status`
    "demo.notes",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "demo.urls"
ASGI_APPLICATION = "demo.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]

# Two worker processes write to one SQLite file: WAL lets readers run beside the writer, and
# IMMEDIATE transactions take the write lock up front, so a busy database makes a writer wait
# (up to the timeout) instead of failing on a lock upgrade.
DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DB_PATH") or str(BASE_DIR / "db.sqlite3"),
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
USE_TZ = True
TIME_ZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "worker": {"format": "[worker %(process)d] %(levelname)s %(name)s: %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "worker"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
