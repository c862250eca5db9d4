"""benchmarks/bench_training.py runs on the shipped test table and reports every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TEST_TABLE

ROOT = Path(__file__).resolve().parents[1]


def test_the_training_benchmark_reports_steps_and_stages(tmp_path):
    out = tmp_path / "bench.json"
    # its own process: the benchmark wraps the stages' functions with timers
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_training.py"),
                    "--models", "lenet", "--steps", "1", "--naive", "--table",
                    str(TEST_TABLE), "--json", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    result = json.loads(out.read_text())["results"][0]
    assert set(result["seconds_per_step"]) == {"float", "mixed", "naive"}
    assert all(s > 0 for s in result["seconds_per_step"].values())
    naive = result["stages"]["naive"]
    # naive rewrites every device every step: all stages show
    for stage in ("analog read", "conversion", "backward", "optimizer", "write-and-verify",
                  "re-prepare"):
        assert naive[stage] > 0, stage
    assert naive["conversion"] <= naive["analog read"]
