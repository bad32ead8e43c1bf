"""``manage.py channels_ha status``: probe the Redis behind a channel layer, live.

A thin shell over :func:`channels_ha.probe`: the report of ``channels-ha check --connect``, for
each shard of the channel layer ``--alias`` (the environment's configuration when that alias is
a layer that does not use Redis; an error when ``CHANNEL_LAYERS`` has no such alias, as for the
health check); ``--json`` prints ``{"ok", "alias", "shards": [report, ...]}``. Exits 1 unless
every report is ok.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ..._probe import PROBE_TIMEOUT_S, probe
from ..._probe_report import ProbeReport
from ..._settings import alias_configs, alias_prefix
from ...exceptions import ConfigurationError


class Command(BaseCommand):
    help = "Operate channels-ha: 'status' probes the Redis behind a channel layer."
    # About Redis only: other apps' check errors must not hide (or fail) a Redis status.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        status = commands.add_parser(
            "status",
            help="probe the Redis behind a channel layer (as channels-ha check --connect)",
        )
        status.add_argument("--alias", default="default", help="the CHANNEL_LAYERS alias")
        status.add_argument("--json", action="store_true", help="print the report as JSON")
        status.add_argument(
            "--timeout",
            type=_timeout,
            default=PROBE_TIMEOUT_S,
            help=f"seconds per step, > 0 (default {PROBE_TIMEOUT_S:g})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["alias"]
        try:
            configs = alias_configs(alias)
        except ConfigurationError as err:
            raise CommandError(str(err)) from err
        timeout = _seconds(options["timeout"])
        if timeout is None:  # call_command's keyword options skip argparse, and its type=
            raise CommandError(f"argument --timeout: {_expected(options['timeout'])}")
        prefix = alias_prefix(alias)  # the write check's key is the layer's
        reports = [probe(config, timeout, prefix) for config in configs]
        self.stdout.write(_json(alias, reports) if options["json"] else _text(reports))
        if not all(report.ok for report in reports):
            raise CommandError(f"the Redis behind channel layer {alias!r} is not ok")


def _timeout(text: str) -> float:
    """``--timeout`` on the command line (see ``_seconds``). Django words the error as
    ``argument --timeout: ...`` (a CommandError from call_command)."""
    seconds = _seconds(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(_expected(text))
    return seconds


def _seconds(value: object) -> float | None:
    """``value`` as a finite number of seconds > 0, else None: 0, a negative number or NaN
    would bound every step to nothing (each node then reported "unreachable"), infinity would
    bound nothing. A number, or its text as on the command line; not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _expected(value: object) -> str:
    return f"expected a finite number of seconds > 0, such as {PROBE_TIMEOUT_S:g}, got {value!r}"


def _json(alias: str, reports: list[ProbeReport]) -> str:
    ok = all(report.ok for report in reports)
    shards = [report.to_dict() for report in reports]
    return json.dumps({"ok": ok, "alias": alias, "shards": shards}, indent=2)


def _text(reports: list[ProbeReport]) -> str:
    if len(reports) == 1:
        return reports[0].to_text()
    return "\n".join(f"shard {i}:\n{report.to_text()}" for i, report in enumerate(reports))
