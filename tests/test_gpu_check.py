"""The lent-GPU script runs rarely, so its code paths are kept alive here: on the CPU against itself."""

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
