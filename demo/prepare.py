"""``python -m demo.prepare``: migrate the database and forget stale presence, before workers start.

Run by the launcher in a process of its own, so that the launcher itself never loads Django
(its settings, logging and database connections belong to the workers).
"""

from __future__ import annotations

import os


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    import django
    from django.core.management import call_command

    django.setup()
    from demo.notes import store

    call_command("migrate", interactive=False, verbosity=0)
    store.reset_presence()


if __name__ == "__main__":
    main()
