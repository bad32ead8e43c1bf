"""The Django app: ``INSTALLED_APPS += ["channels_ha"]`` adds the system checks, the
``channels_ha`` management command and, with ``CHANNELS_HA_METRICS = True``, the metrics."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class ChannelsHAConfig(AppConfig):
    """Registers the checks (tag ``channels_ha``) and, if asked, the Prometheus collector."""

    name = "channels_ha"
    verbose_name = "channels-ha"

    def ready(self) -> None:
        from .checks import TAG, check_configuration, check_deployment

        checks.register(check_configuration, TAG)
        checks.register(check_deployment, TAG, deploy=True)
        if getattr(settings, "CHANNELS_HA_METRICS", False):
            _register_metrics()


def _register_metrics() -> None:
    from .metrics import register  # imports without prometheus_client; register() needs it

    try:
        register()
    except ImportError:
        return  # the app still starts; check E004 says what is missing
