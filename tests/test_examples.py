"""The examples and the README's Python snippets run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]


def test_minimal_example_learns_without_labels_and_probes(data_root):
    env = {**os.environ, "SOFTHEBB_DATA": str(data_root)}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "minimal.py"), "--limit", "1000", "--probe-epochs", "4"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    radius = [float(v) for v in re.findall(r"mean \|‖w‖ - 1\| = ([\d.]+)", out.stdout)]
    assert len(radius) == 2 and radius[0] < 24  # block 0 moved from its initial radius 25 towards the unit sphere
    acc = float(re.search(r"test accuracy ([\d.]+) %", out.stdout).group(1))
    assert acc > 60  # 10 classes: chance is 10 % (88 % measured with these settings)


def test_readme_layer_snippet_runs():
    """The README's 'Using the layers in your own model' block, on random images."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import torch\nfrom softhebb import HebbianConv2d.*?)```", text, re.S)
    assert block, "the README's layer example is missing"
    batches = [torch.rand(10, 3, 32, 32) for _ in range(3)]
    scope = {"batches": batches}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102 — our own README
    layer = scope["net"][1]
    assert int(layer.num_updates) == 3


def test_readme_python_api_snippet_runs(data_root, monkeypatch, capsys):
    """The README's preset / phases / probe block, on 300 real MNIST images per split."""
    import softhebb.data
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(from softhebb import build_model.*?)```", text, re.S)
    assert block, "the README's Python API example is missing"
    load = softhebb.data.load_dataset

    def small(name, split, root=None):
        ds = load(name, split, data_root)
        return softhebb.data.ImageDataset(ds.name, ds.split, ds.images[:300], ds.labels[:300], ds.classes)

    monkeypatch.setattr(softhebb.data, "load_dataset", small)
    exec(compile(block.group(1), "README.md", "exec"), {})  # noqa: S102 — our own README
    assert "'test_acc'" in capsys.readouterr().out
