"""Which channels-ha code a benchmark measures: a snapshot taken before anything imports it.

Other engineers edit the layer in the same work tree while benchmarks run, and worker processes
import the layer when they start: without a snapshot, a parent running the old code would meet
workers running the new one (a changed key layout then looks like lost messages), and the table
would mix versions, or measure somebody's half-finished edit. ``bench/run.py`` therefore
exports ``channels_ha/`` to a temporary directory first (by default as committed at ``HEAD``,
so that a table names the commit it measured; ``--code worktree`` copies the work tree, to
measure uncommitted changes) and puts that directory first on ``sys.path``, which spawned
workers inherit. Nothing here imports channels_ha: the snapshot must exist before the first
import.
"""

from __future__ import annotations

import argparse
import atexit
import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "channels_ha"
WORKTREE = "worktree"
CODE_HELP = "the channels_ha to measure: a git commit (default HEAD) or 'worktree'"


def code_option(argv: Sequence[str]) -> str:
    """The ``--code`` option, read before the real command line is parsed."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--code", default="HEAD")
    known, _ = parser.parse_known_args(argv)
    code: str = known.code
    return code


def freeze(code: str) -> Path:
    """The package at ``code`` in a fresh directory, removed at exit; returns the directory."""
    directory = Path(tempfile.mkdtemp(prefix="channels-ha-bench-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    if code == WORKTREE or not (ROOT / ".git").exists():  # an unpacked release: no commits
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / PACKAGE, directory / PACKAGE, ignore=ignore)
    else:
        archive = _git("archive", "--format=tar", code, PACKAGE).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(directory, filter="data")
    return directory


def describe(code: str) -> str:
    """``commit a4a6401`` or ``the work tree at a4a6401 + uncommitted changes``."""
    try:
        commit = _git("rev-parse", "--short", code if code != WORKTREE else "HEAD").stdout
        dirty = code == WORKTREE and _git("status", "--porcelain", "--", PACKAGE).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{code} (not a git checkout)"
    if code != WORKTREE:
        return f"commit {commit.decode().strip()}"
    changes = " + uncommitted changes" if dirty else ""
    return f"the work tree at {commit.decode().strip()}{changes}"


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, check=True, timeout=60
    )
