"""URLs of the test project: the health views and the metrics view, as docs/operations.md
shows them."""

from __future__ import annotations

from django.urls import path

from channels_ha.health import health_view, live_view
from channels_ha.metrics import metrics_view

urlpatterns = [
    path("healthz", health_view),
    path("healthz/fast", health_view, {"timeout_s": 0.5}),
    path("livez", live_view),
    path("metrics", metrics_view),
]
