"""The ``channels-ha`` command: a thin shell over the config, probe and sandbox modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channels-ha",
        description="Validate, probe and sandbox the Redis behind a channels-ha deployment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from ._cli_check import add_check_command
    from .sandbox._cli import add_sandbox_command

    add_check_command(commands)
    add_sandbox_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``channels-ha`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
