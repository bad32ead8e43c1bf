"""HTTP routes: the notes page, the sandbox's kill switch, and channels-ha's health probes."""

from __future__ import annotations

from django.urls import path

from channels_ha.health import health_view, live_view
from demo.notes import views

urlpatterns = [
    path("", views.index, name="index"),
    path("api/sandbox/kill-master", views.kill_master, name="kill-master"),
    path("healthz", health_view, name="healthz"),  # 200 while a writable master answers
    path("livez", live_view, name="livez"),
]
