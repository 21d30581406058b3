"""The supervised Hebbian classifier against a per-sample loop, on data it must separate, and wired into runs."""

import math

import pytest
import torch

from softhebb.config import RunConfig
from softhebb.hebb_classifier import train_hebbian_classifier
from softhebb.network import build_model, get_preset
from softhebb.rundir import RunError

PRESET = {"name": "tiny-hc", "classifier": {"rule": "hebbian", "lr": 0.2, "radius": 3.0, "dropout": 0.0}, "blocks": [
    {"type": "conv", "out": 4, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "radius": 5, "pool": "avg_4_4_0"}]}
SHAPE = (1, 8, 8)  # 4 channels × 2 × 2 = 16 features


def reference(features, labels, classes, epochs, batch, seed, lr, radius):
    """Sample by sample: Δw_k = Σ_{n: y_n = k} (x_n − u_nk·w_k), over max|Δw|, at lr·(1 − t/T)."""
    gen = torch.Generator().manual_seed(seed)
    n, f = features.shape
    w = torch.rand(classes, f, generator=gen) * (radius * math.sqrt(3.0 / f))
    w = w.double()
    step, total = 0, epochs * n / batch
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for idx in order.split(batch):
            dw = torch.zeros_like(w)
            for i in idx.tolist():
                x, k = features[i].double(), int(labels[i])
                dw[k] += x - float(x @ w[k]) * w[k]
            w += lr * max(0.0, 1 - step / total) * dw / dw.abs().max()
            step += 1
    return w


def test_update_matches_the_per_sample_reference():
    model = build_model(PRESET, SHAPE, 3, seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(30, 16, generator=g), torch.randint(0, 3, (30,), generator=g)
    train_hebbian_classifier(model, x, y, x[:6], y[:6], epochs=3, batch_size=7, seed=4, progress=False)
    expected = reference(x, y, 3, 3, 7, 4, lr=0.2, radius=3.0)
    torch.testing.assert_close(model.classifier.weight.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.classifier.bias, torch.zeros(3))


def test_it_learns_classes_from_labels_alone():
    model = build_model(PRESET, SHAPE, 4, seed=0)
    g = torch.Generator().manual_seed(2)
    prototypes = torch.rand(4, 16, generator=g) * 2
    y = torch.randint(0, 4, (400,), generator=g)
    x = prototypes[y] + 0.3 * torch.rand(400, 16, generator=g)
    rows = []
    result = train_hebbian_classifier(model, x[:300], y[:300], x[300:], y[300:], epochs=5, batch_size=10,
                                      log=rows.append, progress=False)
    assert result["test_acc"] >= 95.0
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["lr"] < 0.2 * 0.05  # decayed almost to 0
    # each neuron's weights point at its class
    cos = torch.nn.functional.cosine_similarity(model.classifier.weight[:, None], prototypes[None], dim=2)
    assert (cos.argmax(1) == torch.arange(4)).all()


def test_runs_refuse_what_it_cannot_do():
    assert get_preset("4SoftHebbCnnCIFAR_HebbClassifier")["classifier"]["rule"] == "hebbian"
    with pytest.raises(RunError, match="supervised Hebbian classifier trains on features computed once"):
        RunConfig(preset="4SoftHebbCnnCIFAR_HebbClassifier", probe_augment="shift")
    from softhebb.network import PresetError, resolve_preset
    with pytest.raises(PresetError, match="'rule' must be 'bp'"):
        resolve_preset({**PRESET, "classifier": {"rule": "krotov"}})


def test_a_run_trains_it_instead_of_the_probe_and_saves_it(tmp_path, monkeypatch):
    import json

    import softhebb.config as config_module
    import softhebb.run as run_module
    from softhebb.data import ImageDataset
    from softhebb.network import resolve_preset

    def load(name, split, root=None):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 60 if split == "train" else 20
        return ImageDataset(name, split, torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                            torch.randint(0, 10, (n,), generator=g), tuple(str(d) for d in range(10)))

    monkeypatch.setattr(run_module, "load_dataset", load)
    for module in (run_module, config_module):
        monkeypatch.setattr(module, "get_preset", lambda name: resolve_preset(PRESET))
    cfg = RunConfig(preset="tiny-hc", dataset="mnist", probe_epochs=2, probe_batch=8, device="cpu")
    result = run_module.run(cfg, tmp_path / "r", progress=False, echo=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["phase"] == "hebbian_classifier"] == [1, 2]
    assert not any(r["phase"] == "probe" for r in rows)
    model = run_module.load_run(tmp_path / "r")[0]
    assert torch.equal(model.classifier.bias, torch.zeros(10)) and model.classifier.weight.abs().sum() > 0
    assert 0 <= result["test_acc"] <= 100
