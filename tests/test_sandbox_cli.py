"""``channels-ha sandbox`` prints settings, runs until a signal, then leaves nothing behind."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from channels_ha.sandbox._lifecycle import signals_held, stopped_by_signals
from channels_ha.sandbox.pytest_plugin import KINDS

_COMMAND = [sys.executable, "-m", "channels_ha._cli", "sandbox"]
_START_TIMEOUT_S = 30
Launch = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def launch() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``channels-ha sandbox ...``; whatever a failing test leaves running is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*_COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=_START_TIMEOUT_S)


def _read_until_ready(process: subprocess.Popen[str]) -> list[str]:
    """Lines printed up to the last node line (the command flushes them all at once)."""
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:  # bounded by what the command prints before waiting
        lines.append(line.rstrip("\n"))
        if line.startswith("# configs and logs: "):  # the last line before the wait
            break
    return lines


def _pids(lines: list[str]) -> list[int]:
    return [int(line.rsplit("pid ", 1)[1]) for line in lines if " pid " in line]


def _exports(lines: list[str]) -> dict[str, str]:
    pairs = (shlex.split(line)[1].split("=", 1) for line in lines if line.startswith("export "))
    return dict(pairs)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def _stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=_START_TIMEOUT_S)
    return process.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_standalone_runs_until_signalled(launch: Launch, signum: int) -> None:
    """It prints a working REDIS_URL, then on SIGTERM or Ctrl-C stops its node and exits 0."""
    process = launch("standalone")
    lines = _read_until_ready(process)
    exports = _exports(lines)
    client = redis.Redis.from_url(exports["REDIS_URL"])
    assert client.ping() is True
    client.close()
    directory = Path(lines[-1].removeprefix("# configs and logs: "))
    assert directory.is_dir()
    status, stderr = _stop(process, signum)
    assert (status, stderr.strip()) == (0, "channels-ha sandbox: stopped")
    assert not any(_alive(pid) for pid in _pids(lines))
    assert not directory.exists()


@pytest.mark.slow
def test_sentinel_with_options_prints_both_settings(launch: Launch) -> None:
    """With --tls and both passwords it prints the sentinel URL and JSON config, then cleans up."""
    process = launch("sentinel", "--tls", "--password", "pw", "--sentinel-password", "spw")
    lines = _read_until_ready(process)
    exports = _exports(lines)
    assert exports["REDIS_URL"].startswith("rediss+sentinel://:pw@127.0.0.1:")
    assert '"sentinel_password": "spw"' in exports["REDIS_CONNECTION_CONFIG"]
    assert len(_pids(lines)) == 6
    assert _stop(process, signal.SIGTERM)[0] == 0
    assert not any(_alive(pid) for pid in _pids(lines))


def test_missing_redis_server_exits_1(launch: Launch) -> None:
    """Without redis-server on PATH it explains how to install it and exits 1."""
    process = launch("standalone", env={**os.environ, "PATH": "/nonexistent"})
    _, stderr = process.communicate(timeout=_START_TIMEOUT_S)
    assert process.returncode == 1
    assert "sudo apt-get install redis-server" in stderr


def test_sentinel_password_needs_sentinel(launch: Launch) -> None:
    """``--sentinel-password`` on another topology is refused with exit 1."""
    process = launch("standalone", "--sentinel-password", "x")
    _, stderr = process.communicate(timeout=_START_TIMEOUT_S)
    assert process.returncode == 1
    assert "sentinel topology only" in stderr


def test_every_kind_is_a_choice() -> None:
    """The command offers exactly the sandbox's topology kinds."""
    result = subprocess.run([*_COMMAND, "--help"], capture_output=True, text=True, check=True)
    assert "{" + ",".join(KINDS) + "}" in result.stdout


def test_a_held_stop_signal_stops_right_after_the_block() -> None:
    """A stop signal during signals_held() (the demo polls its workers so) does not cut the
    block short, and stops the run as soon as the block ends; also with another thread
    running, as in the demo's launcher, where the kernel may hand the signal to that thread."""
    release = threading.Event()

    def run_python() -> None:  # a thread running Python code takes process signals
        deadline = time.monotonic() + 10
        while not release.is_set() and time.monotonic() < deadline:
            pass

    other = threading.Thread(target=run_python)
    other.start()
    finished_blocks = 0
    try:
        for _ in range(200):  # which thread the kernel picks varies: try it many times
            with stopped_by_signals():
                with signals_held():
                    os.kill(os.getpid(), signal.SIGINT)
                    finished_blocks += 1
                pytest.fail("the held signal did not stop the run after the block")
    finally:
        release.set()
        other.join()
    assert finished_blocks == 200
