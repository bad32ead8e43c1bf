"""``./scripts/demo``: the collaborative notes demo, on two workers, until Ctrl-C or SIGTERM.

With neither ``REDIS_URL`` nor ``REDIS_CONNECTION_CONFIG`` set, it starts the embedded
Sentinel sandbox (1 master, 2 replicas, 3 sentinels on free loopback ports) and the page gets
a "kill the master" button; with either set, it uses that Redis. It migrates the SQLite
database, starts the workers, prints the URL, and on Ctrl-C or SIGTERM stops what it started:
workers first (they close their sockets), then Redis, then its temporary files.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from channels_ha import ChannelsHAError, load_config
from channels_ha.sandbox._lifecycle import owned_directory, signals_held, stopped_by_signals

from .control import ControlServer
from .workers import REPO_ROOT, LaunchError, Worker, listening_sockets

LAYERS = ("channels_ha", "channels_redis")
SUPERVISE_INTERVAL_S = 0.5  # how soon a crashed worker is noticed
PREPARE_TIMEOUT_S = 60.0
WORKERS_READY_TIMEOUT_S = 30.0
REDIS_VARIABLES = ("REDIS_URL", "REDIS_CONNECTION_CONFIG")  # either one: the user's Redis
PRIVATE_PREFIX = "channels-ha-demo-"  # + pid: the launcher's files (the sandbox's control socket)

logger = logging.getLogger("demo")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    with stopped_by_signals():
        try:
            _run(args)
        except (LaunchError, ChannelsHAError) as err:
            print(f"demo: {err}", file=sys.stderr)
            return 1
    print("demo: stopped; workers, Redis and temporary files are gone")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Run the collaborative notes demo on two ASGI workers until Ctrl-C. "
        "Without REDIS_URL or REDIS_CONNECTION_CONFIG it starts a Sentinel sandbox.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    parser.add_argument("--workers", type=_positive, default=2, help="ASGI worker processes")
    parser.add_argument(
        "--layer",
        choices=LAYERS,
        default=os.environ.get("DEMO_CHANNEL_LAYER", "channels_ha"),
        help="channel layer backend (default: $DEMO_CHANNEL_LAYER or channels_ha)",
    )
    parser.add_argument("--db", type=Path, help="SQLite file (default: demo/db.sqlite3)")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> None:
    _raise_file_limit()
    with ExitStack() as cleanup:  # unwinds in reverse: workers, control, Redis, files
        sockets = listening_sockets(args.host, args.port, args.workers)
        cleanup.callback(_close_all, sockets)
        url = _url(sockets[0])  # before the workers take the sockets over
        private = owned_directory(PRIVATE_PREFIX)  # a killed launcher's are removed first
        cleanup.callback(shutil.rmtree, private, ignore_errors=True)
        env = _worker_env(args)
        print("channels-ha demo")
        if any(os.environ.get(name) for name in REDIS_VARIABLES):
            print(
                f"  Redis: yours, {load_config().summary().splitlines()[0]} (from the environment)"
            )
        else:
            env.update(_start_sandbox(cleanup, private / "control.sock"))
        _prepare_database(env)
        workers = [Worker(sock, env) for sock in sockets]
        cleanup.callback(_stop_workers, workers)
        _start_workers(workers)
        _announce(args, url, workers)
        _supervise(workers)


def _start_sandbox(cleanup: ExitStack, control_path: Path) -> dict[str, str]:
    """Start the sandbox and its control socket; return what points the workers at them."""
    from .sandbox import Sandbox

    print("  Redis: embedded Sentinel sandbox, stopped on exit (starting...)")
    sandbox = Sandbox()
    cleanup.callback(sandbox.stop)
    sandbox.start()
    for line in sandbox.describe():
        print(f"    {line}")
    server = ControlServer(
        control_path, {"status": sandbox.status, "kill-master": sandbox.kill_master}
    )
    server.start()
    cleanup.callback(server.stop)
    return {**sandbox.env(), "DEMO_CONTROL_SOCKET": str(control_path)}


def _worker_env(args: argparse.Namespace) -> dict[str, str]:
    allowed = "127.0.0.1,localhost,[::1]"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        allowed = "*" if args.host in ("0.0.0.0", "::") else f"{allowed},{args.host}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DEMO_CHANNEL_LAYER": args.layer,
        "DEMO_ALLOWED_HOSTS": allowed,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DEMO_CONTROL_SOCKET", None)  # only a sandbox of ours can be controlled
    if args.db is not None:
        env["DEMO_DB_PATH"] = str(args.db.resolve())
    return env


def _prepare_database(env: dict[str, str]) -> None:
    """Migrate and forget stale presence, in a child process (see ``demo/prepare.py``)."""
    command = [sys.executable, "-m", "demo.prepare"]
    try:
        subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, timeout=PREPARE_TIMEOUT_S)
    except subprocess.SubprocessError as err:
        raise LaunchError(f"preparing the database failed ({err}); see the output above") from err


def _start_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.spawn()
    deadline = time.monotonic() + WORKERS_READY_TIMEOUT_S
    for worker in workers:
        worker.wait_ready(deadline)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _announce(args: argparse.Namespace, url: str, workers: list[Worker]) -> None:
    pids = ", ".join(f"pid {worker.pid}" for worker in workers)
    print(f"  layer: {args.layer}; workers: {pids}, sharing one port (SO_REUSEPORT)")
    print(f"\n  Open {url} in two or more tabs. Ctrl-C stops everything.\n")


def _supervise(workers: list[Worker]) -> None:
    """Wait for a stop signal (raised as ``_Stop``); a worker exiting on its own is an error."""
    while True:
        for worker in workers:
            with signals_held():
                code = worker.exit_code()
            if code is not None:
                raise LaunchError(f"worker {worker.pid} exited with status {code}; stopping")
        time.sleep(SUPERVISE_INTERVAL_S)  # a stop signal raises _Stop out of this sleep


def _stop_workers(workers: list[Worker]) -> None:
    for worker in workers:  # signal all first: they shut down in parallel
        worker.terminate()
    for worker in workers:
        worker.stop()


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _raise_file_limit() -> None:
    """Each WebSocket is a descriptor: lift the soft limit to the hard one (the load test)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- signals -----------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
