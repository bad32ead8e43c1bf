"""``channels-ha sandbox`` (placeholder)."""

from __future__ import annotations

import argparse
from typing import Any


def add_sandbox_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("sandbox", help="start a local topology")
    parser.set_defaults(run=lambda args: 2)
