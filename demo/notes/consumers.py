"""The notes socket: one per browser tab; every change reaches the room through its group.

Client to server, JSON: ``{"type": "add", "text"}``, ``{"type": "edit", "id", "text"}``,
``{"type": "delete", "id"}``. Each may carry ``ref`` and ``sent_at``, echoed back in the
broadcast, so a tab (or the load test) recognises its own change and can time it.

Server to client: ``hello`` (this worker's pid, you, the notes, who is here), ``note`` (added
or edited), ``deleted``, ``presence`` (join or leave), ``topology`` (the panel), ``error``.

Query string: ``name`` (shown to the others); ``quiet=1`` for load-test clients, which are
not announced, since 1,000 joins would cost 500,000 presence messages before a test begins.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import store
from .models import MAX_NAME
from .panel import panel

PANEL_INTERVAL_S = 1.0  # how often the panel is compared with what the tab has
PANEL_REFRESH_S = 5.0  # sent at least this often, changed or not
MAX_REF = 64


class NotesConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    room = ""
    group = ""
    name = ""
    client_id = ""
    person: dict[str, Any] | None = None  # None: not announced (quiet)
    _panel: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = f"notes.{self.room}"
        query = parse_qs(self.scope["query_string"].decode("latin1"))
        self.client_id = uuid.uuid4().hex[:12]
        self.name = _display_name(query.get("name", [""])[0], self.client_id)
        quiet = query.get("quiet") == ["1"]
        person = None if quiet else {"id": self.client_id, "name": self.name, "pid": os.getpid()}
        # Join the group before reading the room: a change committed after the read is then
        # broadcast to this socket too (the version numbers make a double copy harmless).
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        snapshot = await database_sync_to_async(store.join)(self.room, person)
        self.person = person
        await self.send_json(self._hello(snapshot))
        if person is not None:
            await self._broadcast({"type": "presence.changed", "event": "join", "person": person})
        self._panel = asyncio.create_task(self._push_panel())

    def _hello(self, snapshot: store.Snapshot) -> dict[str, Any]:
        return {
            "type": "hello",
            "pid": os.getpid(),
            "you": {"id": self.client_id, "name": self.name},
            "room": self.room,
            "notes": snapshot.notes,
            "people": snapshot.people,
        }

    async def disconnect(self, code: int) -> None:
        if self._panel is not None:
            self._panel.cancel()
            await asyncio.gather(self._panel, return_exceptions=True)
        await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.person is not None:
            await database_sync_to_async(store.leave)(self.client_id)
            await self._broadcast(
                {"type": "presence.changed", "event": "leave", "person": self.person}
            )

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Run the handler, without Channels' ``aclose_old_connections()`` before it.

        Channels (4.2 and later) closes stale database connections before every handler, in
        the one shared sync thread; with a thousand sockets in a room that thread hop took a
        third of a worker's CPU. These handlers reach the database only through
        ``database_sync_to_async``, which closes stale connections around each call itself.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # -- from the tab ----------------------------------------------------------------------

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return json.loads(text_data)
        except ValueError:
            return None  # answered with an error instead of closing the socket

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "message": "expected a JSON object"})
            return
        try:
            event = await database_sync_to_async(_apply)(self.room, self.name, content)
        except store.Refused as err:
            await self.send_json({"type": "error", "message": str(err), **_echo(content)})
            return
        await self._broadcast({**event, **_echo(content), "origin": self.client_id})

    async def _broadcast(self, event: dict[str, Any]) -> None:
        await self.channel_layer.group_send(self.group, event)

    # -- from the group --------------------------------------------------------------------

    async def note_changed(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "note", "note": event["note"], **_echo(event)})

    async def note_deleted(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "deleted", "id": event["id"], **_echo(event)})

    async def presence_changed(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {"type": "presence", "event": event["event"], "person": event["person"]}
        )

    # -- the panel -------------------------------------------------------------------------

    async def _push_panel(self) -> None:
        """Send the panel when it changes, and at least every ``PANEL_REFRESH_S``."""
        last: dict[str, Any] | None = None
        sent_at = 0.0
        while True:
            current = await panel.get(self.channel_layer)  # the same object until it changes
            if current is not last or time.monotonic() - sent_at >= PANEL_REFRESH_S:
                await self.send_json({"type": "topology", **current})
                last, sent_at = current, time.monotonic()
            await asyncio.sleep(PANEL_INTERVAL_S)


def _apply(room: str, by: str, content: dict[str, Any]) -> dict[str, Any]:
    """Apply one change to the database; return the group message announcing it."""
    kind = content.get("type")
    if kind == "add":
        return {"type": "note.changed", "note": store.add_note(room, content.get("text"), by)}
    if kind == "edit":
        note = store.edit_note(room, _note_id(content), content.get("text"), by)
        return {"type": "note.changed", "note": note}
    if kind == "delete":
        note_id = _note_id(content)
        store.delete_note(room, note_id)  # deleted already: announce it again, harmlessly
        return {"type": "note.deleted", "id": note_id}
    raise store.Refused(f"unknown message type {kind!r}")


def _note_id(content: dict[str, Any]) -> int:
    note_id = content.get("id")
    if isinstance(note_id, bool) or not isinstance(note_id, int):
        raise store.Refused("which note? 'id' must be a number")
    return note_id


def _echo(content: dict[str, Any]) -> dict[str, Any]:
    """The fields a client may attach to a change and get back with its broadcast."""
    echo: dict[str, Any] = {}
    ref, sent_at, origin = content.get("ref"), content.get("sent_at"), content.get("origin")
    if isinstance(ref, str) and len(ref) <= MAX_REF:
        echo["ref"] = ref
    if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool):
        echo["sent_at"] = sent_at
    if isinstance(origin, str):
        echo["origin"] = origin
    return echo


def _display_name(raw: str, client_id: str) -> str:
    name = " ".join(raw.split())[:MAX_NAME]
    return name or f"guest-{client_id[:4]}"
