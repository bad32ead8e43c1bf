"""The ASGI application each worker serves: pages and static files over HTTP, notes over WS."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

http = ASGIStaticFilesHandler(get_asgi_application())  # sets Django up before the imports below

from channels_ha import close_layers_at_shutdown  # noqa: E402
from demo.notes.routing import websocket_urlpatterns  # noqa: E402 - needs Django set up

# The launcher SIGKILLs a worker 5 s after its SIGTERM (demo/workers.py): uvicorn's graceful
# shutdown takes up to 2 s (demo/worker.py), closing the channel layer up to this.
CLOSE_TIMEOUT_S = 2.0

# Closes the channel layer (channels-ha's or channels_redis's) when uvicorn stops the worker.
application = close_layers_at_shutdown(
    ProtocolTypeRouter(
        {
            "http": http,
            # Browsers send Origin; a page on another site must not drive a visitor's socket.
            "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
        }
    ),
    timeout_s=CLOSE_TIMEOUT_S,
)
