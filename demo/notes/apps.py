"""The notes app's configuration (label ``notes``)."""

from __future__ import annotations

from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "demo.notes"
    label = "notes"
    default_auto_field = "django.db.models.BigAutoField"
