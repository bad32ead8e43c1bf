"""The benchmark suite still runs: a quick pass of every workload on a single node.

This keeps bench/ from rotting; it asserts nothing about speed, which depends on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"channels_ha", "core", "pubsub"}
SMOKE_TIMEOUT_S = 90


def test_quick_benchmark_prints_the_table_and_channels_ha_has_no_errors(tmp_path: Path) -> None:
    """`bench/run.py --quick` prints the table, every layer ran every row, channels-ha cleanly."""
    results = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick"]
    command += ["--topology", "standalone", "--json", str(results)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("| topology | workload | layer |")
    measurements = json.loads(results.read_text())
    rows = {m["row"] for m in measurements if m["layer"] in LAYERS}
    ran = {(m["row"], m["layer"]) for m in measurements}
    assert ran >= {(row, layer) for row in rows for layer in LAYERS}
    ours = [m for m in measurements if m["layer"] == "channels_ha"]
    assert len(ours) == 7  # W1 in 1 and 2 processes, W2, W3 in 1 and N processes, latency, sync
    assert [(m["row"], m["status"], m["errors"]) for m in ours] == [
        (m["row"], "ok", {}) for m in ours
    ]


def test_quick_failover_benchmark_channels_ha_loses_nothing(tmp_path: Path) -> None:
    """W4 runs (its own Sentinel per run, master killed mid-way), and channels-ha raised
    nothing, lost nothing and duplicated nothing."""
    results = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--workloads", "w4"]
    command += ["--topology", "sentinel", "--layers", "channels_ha", "--json", str(results)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (measurement,) = json.loads(results.read_text())
    assert measurement["status"] == "ok", measurement
    assert measurement["errors"] == {}, measurement
    assert measurement["gap_s"] > 0  # the failover was measured, not skipped


def test_call_counter_prints_calls_per_message_for_each_layer() -> None:
    """`bench/calls.py` runs both shapes on every layer and prints a count for each."""
    command = [sys.executable, str(ROOT / "bench" / "calls.py")]
    command += ["--messages", "200", "--group-sends", "20"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:4] for line in done.stdout.splitlines()[2:]]
    assert {(shape.strip(), layer.strip()) for shape, layer, _ in rows} == {
        (shape, layer) for shape in ("w1", "w3") for layer in LAYERS
    }
    for _, _, calls in rows:
        assert float(calls.split()[0].replace(",", "")) > 0
