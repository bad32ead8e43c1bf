"""``channels-ha check`` (placeholder)."""

from __future__ import annotations

import argparse
from typing import Any


def add_check_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("check", help="validate the config")
    parser.set_defaults(run=lambda args: 2)
