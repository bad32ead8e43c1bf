"""Runs the benchmark suite: ``python bench/run.py --help`` (or ``python -m bench.run``).

The work is in :mod:`bench.cli`. This file makes the ``bench`` package importable when the
script is run by path, and puts a snapshot of ``channels_ha/`` first on ``sys.path`` before
anything imports it (see :mod:`bench.provenance`); spawned worker processes inherit both.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.provenance import code_option, freeze

    sys.path.insert(0, str(freeze(code_option(sys.argv[1:]))))
    from bench.cli import main as run_cli

    run_cli(sys.argv[1:])


if __name__ == "__main__":
    main()
