"""``channels-ha sandbox KIND``: run a local topology until Ctrl-C or SIGTERM.

It prints ``export`` lines to paste into a shell (or ``eval``) and one comment line per node,
then waits. On SIGINT or SIGTERM it stops every process it started, removes its files and
exits 0; it exits 1 with a message when the topology cannot start (no ``redis-server``, say).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from typing import Any

from ..exceptions import SandboxError
from ._kinds import TOPOLOGY_KINDS, start_topology
from ._lifecycle import stopped_by_signals
from ._topology import Topology


def add_sandbox_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "sandbox",
        help="run a local Redis topology until Ctrl-C",
        description="Start a Redis topology on free loopback ports, print the settings that "
        "point channels-ha at it, and run until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("kind", choices=TOPOLOGY_KINDS, help="the topology to start")
    parser.add_argument("--tls", action="store_true", help="TLS-only nodes (sentinel, cluster)")
    parser.add_argument("--password", help="password of the data nodes (requirepass)")
    parser.add_argument("--sentinel-password", help="password of the sentinels (sentinel only)")
    parser.set_defaults(run=run_sandbox)


def run_sandbox(args: argparse.Namespace) -> int:
    """Start the topology, print its settings, wait for a stop signal, clean up."""
    with stopped_by_signals():
        try:
            began = time.monotonic()
            topology = start_topology(args.kind, **_options(args))
        except SandboxError as err:
            print(f"channels-ha sandbox: {err}", file=sys.stderr)
            return 1
        with topology:
            _print_settings(topology, time.monotonic() - began)
            _wait_for_stop()
    print("channels-ha sandbox: stopped", file=sys.stderr)
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"password": args.password}
    if args.tls:
        options["tls"] = True
    if args.sentinel_password is not None:
        if args.kind != "sentinel":
            raise SandboxError("--sentinel-password applies to the sentinel topology only")
        options["sentinel_password"] = args.sentinel_password
    return options


def _print_settings(topology: Topology, elapsed_s: float) -> None:
    for name, value in topology.env().items():
        print(f"export {name}={shlex.quote(value)}")
    print(f"# {topology.kind} topology ready in {elapsed_s:.1f} s; Ctrl-C stops it")
    for line in topology.describe():
        print(f"#   {line}")
    print(f"# configs and logs: {topology.directory}")
    sys.stdout.flush()


def _wait_for_stop() -> None:
    # Runs until a handled signal raises _Stop out of signal.pause(); nothing else wakes it
    # for good, so this is the one loop without a bound.
    while True:
        signal.pause()
