"""The notes and presence operations, synchronous (consumers call them in Django's DB thread).

Every write runs in one IMMEDIATE transaction (see settings), so two workers editing the same
note serialise on SQLite's lock and each edit gets its own version number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F

from .models import MAX_TEXT, Note, Presence

MAX_NOTES_PER_ROOM = 200


class Refused(Exception):
    """An operation the page should explain instead of applying (the message says why)."""


@dataclass(frozen=True)
class Snapshot:
    """What a tab needs when it connects: the notes and who else is here."""

    notes: list[dict[str, Any]]
    people: list[dict[str, Any]]


def join(room: str, person: dict[str, Any] | None) -> Snapshot:
    """Record ``person`` (``None`` for a quiet client) and read the room."""
    if person is not None:
        Presence.objects.create(
            client_id=person["id"], room=room, name=person["name"], pid=person["pid"]
        )
    notes = [note.as_dict() for note in Note.objects.filter(room=room).order_by("id")]
    people = [p.as_dict() for p in Presence.objects.filter(room=room) if _alive(p.pid)]
    return Snapshot(notes, people)


def leave(client_id: str) -> None:
    Presence.objects.filter(client_id=client_id).delete()


def reset_presence() -> None:
    """Forget every socket: the launcher calls it before starting fresh workers."""
    Presence.objects.all().delete()


def add_note(room: str, text: object, by: str) -> dict[str, Any]:
    text = clean_text(text, required=True)
    with transaction.atomic():
        if Note.objects.filter(room=room).count() >= MAX_NOTES_PER_ROOM:
            raise Refused(f"this room is full ({MAX_NOTES_PER_ROOM} notes); delete some first")
        return Note.objects.create(room=room, text=text, updated_by=by).as_dict()


def edit_note(room: str, note_id: int, text: object, by: str) -> dict[str, Any]:
    text = clean_text(text, required=False)  # emptied while typing: still the same note
    with transaction.atomic():
        notes = Note.objects.filter(room=room, pk=note_id)
        if not notes.update(text=text, updated_by=by, version=F("version") + 1):
            raise Refused("that note was deleted")
        return notes.get().as_dict()


def delete_note(room: str, note_id: int) -> bool:
    """Delete a note; ``False`` if someone else deleted it first."""
    deleted, _ = Note.objects.filter(room=room, pk=note_id).delete()
    return deleted > 0


def clean_text(text: object, *, required: bool) -> str:
    if not isinstance(text, str):
        raise Refused("a note's text must be a string")
    if required and not text.strip():
        raise Refused("a note needs some text")
    if len(text) > MAX_TEXT:
        raise Refused(f"a note holds at most {MAX_TEXT} characters")
    return text


def _alive(pid: int) -> bool:
    """Whether a worker still runs: rows of a crashed worker must not show as present."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
