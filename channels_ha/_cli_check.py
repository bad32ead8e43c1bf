"""``channels-ha check``: validate the Redis configuration and print its redacted summary.

A thin shell over ``_sources`` (and, with ``--connect``, the live probe): exit 0 when the
configuration is valid (and, with ``--connect``, the probe ok), 1 with a one-paragraph message
on stderr when not, never a traceback. With ``--json`` stdout is one JSON document, the probe's
report under ``probe``, so a pipe into a JSON reader works with and without ``--connect``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._config import RedisConfig
from ._constants import DEFAULT_PREFIX
from ._probe_report import ProbeReport
from ._sources import CONFIG_VARIABLE, URL_VARIABLE, select_source
from .exceptions import ConfigurationError

__all__ = ["add_check_command", "run_check"]

EXIT_OK, EXIT_INVALID = 0, 1


def add_check_command(commands: Any) -> None:
    """Register ``check`` on the ``channels-ha`` sub-command parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "check",
        help="validate the Redis configuration and print a redacted summary",
        description=f"Validate {CONFIG_VARIABLE} or {URL_VARIABLE} (or the values given "
        "here instead) without connecting, and print what they connect to.",
    )
    parser.add_argument("--url", help="a Redis URL to check instead of the environment")
    parser.add_argument("--config", help=f"a {CONFIG_VARIABLE} JSON object to check instead")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print the summary (and the probe\'s report, as "probe") as one JSON document',
    )
    parser.add_argument("--connect", action="store_true", help="also probe the servers live")
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"the channel layer's key prefix, under which --connect tries a write that "
        f"writes nothing (default: {DEFAULT_PREFIX})",
    )
    parser.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Validate, print the summary, and probe if asked; returns the exit status."""
    source = select_source(url=args.url, connection_config=args.config)
    try:
        config = source.parse()
    except ConfigurationError as err:
        print(f"channels-ha check: {err}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        return _print_json(config, args.connect, args.prefix)
    ignored = "".join(f" ({name} is also set and ignored)" for name in source.ignored)
    print(f"Redis configuration from {source.name}{ignored} is valid:")
    print(config.summary(), flush=True)  # shown while the probe waits for slow nodes
    if not args.connect:
        return EXIT_OK
    report = _probe(config, args.prefix)
    print(report.to_text())
    return EXIT_OK if report.ok else EXIT_INVALID


def _print_json(config: RedisConfig, connect: bool, prefix: str) -> int:
    """One document: the summary, and the probe's report (redacted, as every report) under
    ``probe``; two documents in a row would make ``json.load`` fail with "Extra data"."""
    facts = config.summary_dict()
    report = _probe(config, prefix) if connect else None
    if report is not None:
        facts["probe"] = report.to_dict()
    print(json.dumps(facts, indent=2))
    return EXIT_INVALID if report is not None and not report.ok else EXIT_OK


def _probe(config: RedisConfig, prefix: str) -> ProbeReport:
    from ._probe import probe

    return probe(config, prefix=prefix)
