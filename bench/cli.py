"""The benchmark command line, behind ``bench/run.py``.

Prints one markdown table on stdout (progress and provenance go to stderr); ``--json`` also
writes every single measurement, which is what the smoke test reads. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from .layers import LAYERS
from .provenance import CODE_HELP, describe
from .results import Measurement, summarise_all
from .runner import Plan, run, stderr_progress
from .table import render
from .targets import DEFAULT_TOPOLOGIES, TOPOLOGIES
from .workload import QUICK, Sizes
from .workloads import DEFAULT_WORKLOADS, WORKLOADS


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    description = "Runs the channels-ha benchmarks; prints a markdown table (docs/benchmarks.md)."
    parser = argparse.ArgumentParser(prog="bench/run.py", description=description)
    option = parser.add_argument
    topologies = f"of {','.join(TOPOLOGIES)} (cluster: channels_ha only)"
    option("--topology", type=_split, default=",".join(DEFAULT_TOPOLOGIES), help=topologies)
    workloads = f"of {','.join(WORKLOADS)}"
    option("--workloads", type=_split, default=",".join(DEFAULT_WORKLOADS), help=workloads)
    option("--layers", type=_split, default=",".join(LAYERS), help=f"of {','.join(LAYERS)}")
    option("--repeat", type=int, default=1, help="runs of every row; the table shows medians")
    option("--quick", action="store_true", help="small counts: a smoke run of a few seconds")
    option("--timeout", type=float, help="seconds allowed per row and layer")
    option("--json", type=Path, help="also write every single measurement to this file")
    option("--code", default="HEAD", help=CODE_HELP)  # read by run.py, before any import
    return parser


def _check(kind: str, given: Sequence[str], known: Sequence[str]) -> None:
    unknown = [name for name in given if name not in known]
    if unknown:
        sys.exit(f"unknown {kind}: {', '.join(unknown)}; choose from {', '.join(known)}")


def _plan(args: argparse.Namespace) -> Plan:
    _check("topology", args.topology, TOPOLOGIES)
    _check("workload", args.workloads, list(WORKLOADS))
    _check("layer", args.layers, LAYERS)
    sizes = QUICK if args.quick else Sizes()
    if args.timeout:
        sizes = replace(sizes, timeout_s=args.timeout)
    workloads = tuple(WORKLOADS[name] for name in args.workloads)
    return Plan(args.topology, workloads, args.layers, max(args.repeat, 1), sizes)


def _report(measurements: list[Measurement], json_path: Path | None) -> None:
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(m) for m in measurements], indent=1))
    print(render(summarise_all(measurements)))


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    plan = _plan(args)
    import channels_ha

    where = Path(channels_ha.__file__).parent
    stderr_progress(f"measuring channels_ha of {describe(args.code)}, imported from {where}")
    _report(run(plan, stderr_progress), args.json)
