"""What the notes page stores: the notes of each room, and who has a socket open."""

from __future__ import annotations

from datetime import datetime

from django.db import models

MAX_TEXT = 280
MAX_NAME = 40


class Note(models.Model):
    """A short note; ``version`` grows with every edit, so a client ignores stale copies."""

    room: models.CharField[str, str] = models.CharField(max_length=40, db_index=True)
    text: models.CharField[str, str] = models.CharField(max_length=MAX_TEXT)
    version: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=1)
    updated_by: models.CharField[str, str] = models.CharField(max_length=MAX_NAME)
    updated_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(auto_now=True)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.pk,
            "text": self.text,
            "version": self.version,
            "by": self.updated_by,
            "at": self.updated_at.timestamp(),
        }


class Presence(models.Model):
    """One open socket: who is in which room, served by which worker process."""

    client_id: models.CharField[str, str] = models.CharField(max_length=32, primary_key=True)
    room: models.CharField[str, str] = models.CharField(max_length=40, db_index=True)
    name: models.CharField[str, str] = models.CharField(max_length=MAX_NAME)
    pid: models.PositiveIntegerField[int, int] = models.PositiveIntegerField()

    def as_dict(self) -> dict[str, object]:
        return {"id": self.client_id, "name": self.name, "pid": self.pid}
