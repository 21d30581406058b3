"""The benchmark scripts run rarely (the GPU check only where a GPU is), so their code paths are kept alive here, on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_gpu_check_equality_and_backprop_run_and_pass_on_the_cpu():
    cpu = torch.device("cpu")
    eq = gpu_check.equality(cpu, "4SoftHebbCnnCIFAR_quarterNeurons", 20)
    assert eq["ok"] and eq["features_max_rel_diff"] == 0.0
    bp = gpu_check.backprop(cpu)
    assert bp["ok"] and bp["grad_max_rel_diff"] == 0.0 and 0 <= bp["one_epoch"]["test_acc"] <= 100


def test_nonfinite_check_benchmark_runs_every_layer():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "nonfinite_check.py"
    out = subprocess.run([sys.executable, str(script), "--repeats", "2"], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["layer"] for r in rows] == ["3->96 5x5", "96->384 3x3", "384->1536 3x3"]
    assert all(r["step_ms"] > 0 and r["unchecked_ms"] > 0 for r in rows)
