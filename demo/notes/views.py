"""The notes page, and the sandbox's "kill the master" switch."""

from __future__ import annotations

import re

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from demo import control

ROOM_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,40}")  # as in routing.py


@require_GET
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    room = request.GET.get("room", "main")
    config = {
        "room": room if ROOM_PATTERN.fullmatch(room) else "main",
        "sandbox": settings.CONTROL_SOCKET is not None,
        "layer": settings.LAYER,
    }
    return render(request, "notes/index.html", {"config": config})


@require_POST
async def kill_master(request: HttpRequest) -> JsonResponse:
    """SIGKILL the sandbox's current master (CSRF-protected; sandbox mode only)."""
    if settings.CONTROL_SOCKET is None:
        raise Http404("the demo runs on an external Redis: nothing here to kill")
    try:
        reply = await control.request(settings.CONTROL_SOCKET, "kill-master")
    except control.ControlError as err:
        return JsonResponse({"error": str(err)}, status=409)
    return JsonResponse(reply)
