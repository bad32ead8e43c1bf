"""WebSocket routes: one socket per tab, joined to one room."""

from __future__ import annotations

from django.urls import re_path

from .consumers import NotesConsumer

websocket_urlpatterns = [
    re_path(r"^ws/rooms/(?P<room>[A-Za-z0-9_-]{1,40})/$", NotesConsumer.as_asgi()),
]
