"""The ASGI application each worker serves: pages and static files over HTTP, notes over WS."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

http = ASGIStaticFilesHandler(get_asgi_application())  # sets Django up before the imports below

from demo.notes.routing import websocket_urlpatterns  # noqa: E402 - needs Django set up

application = ProtocolTypeRouter(
    {
        "http": http,
        # Browsers send Origin; a page on another site must not drive a visitor's socket.
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
