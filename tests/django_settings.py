"""A minimal Django project for the tests of the Django integration.

Tests that need Django call :func:`setup` (through a fixture); everything else in the suite runs
without Django configured. Per-test settings come from ``django.test.override_settings``.
"""

from __future__ import annotations

SECRET_KEY = "channels-ha-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
INSTALLED_APPS = ["channels_ha"]
ROOT_URLCONF = "tests.django_urls"
USE_TZ = True
DATABASES: dict[str, object] = {}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}


def setup() -> None:
    """Configure Django from this module, once per process."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(**{key: value for key, value in globals().items() if key.isupper()})
        django.setup()
