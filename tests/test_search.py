"""`softhebb search`: Optuna study on a seeded 20 % validation split, resumable, pruned, with result tables."""

import csv
import json
import os

import pytest
import torch

try:
    import optuna
except ImportError:  # CI installs the `search` extra: there a missing Optuna is a failure, not a skip
    if os.environ.get("CI") or os.environ.get("SOFTHEBB_REQUIRE_DATA") == "1":
        raise
    pytest.skip("optuna is not installed (pip install 'softhebb[search]')", allow_module_level=True)

import softhebb.search as search_module
from softhebb.cli import main
from softhebb.data import ImageDataset, load_dataset
from softhebb.network import get_preset, resolve_preset
from softhebb.run import RunError
from softhebb.search import SearchConfig, _ranges, apply_params, search, validation_split

TINY = {"name": "tiny", "blocks": [
    {"type": "conv", "out": 6, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "max_4_2_1"},
    {"type": "conv", "out": 10, "kernel": 3, "padding": 1, "t_invert": 0.5, "lr": 0.02, "lr_schedule": "linear",
     "radius": 5, "activation": "triangle_1.4", "pool": "avg_2_2_0"}]}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_search_on_real_mnist_writes_tables_resumes_and_never_loads_the_test_set(data_root, tmp_path, monkeypatch,
                                                                                       capsys):
    splits = []

    def spy(name, split, root=None):
        splits.append(split)
        return load_dataset(name, split, root)

    monkeypatch.setattr(search_module, "load_dataset", spy)
    out = tmp_path / "s"
    args = ["search", "--dataset", "mnist", "--preset", "SoftHebbCnnMNIST_2layer", "--train-limit", "300",
            "--probe-epochs", "1", "--data-dir", str(data_root), "--out", str(out), "--device", "cpu"]
    assert main(args + ["--trials", "2"]) == 0
    assert splits == ["train"]
    assert (out / "study.db").is_file()
    rows = read_csv(out / "trials.csv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1] and {r["state"] for r in rows} == {"complete"}
    baseline = next(r for r in rows if r["trial"] == "0")  # the preset's own values come first
    assert float(baseline["b0.t_invert"]) == 1.0 and float(baseline["b1.triangle"]) == 1.4
    assert baseline["note"] == "the preset's own values" and float(baseline["val_acc"]) > 10
    assert set(rows[0]) >= {"b0.t_invert", "b0.lr", "b0.power_lr", "b0.triangle", "b1.t_invert", "val_acc", "seconds"}
    md = (out / "trials.md").read_text()
    assert "**Best: trial" in md and "validation accuracy" in md and "test set is never used" in md
    best = json.loads((out / "best_preset.json").read_text())
    assert resolve_preset(best)["blocks"][0]["t_invert"] > 0

    # Re-running continues the same study up to the new total; at the total it does nothing.
    assert main(args + ["--trials", "3"]) == 0
    assert sorted(int(r["trial"]) for r in read_csv(out / "trials.csv")) == [0, 1, 2]
    capsys.readouterr()
    assert main(args + ["--trials", "3"]) == 0
    assert "already has 3 finished trials" in capsys.readouterr().out
    assert len(read_csv(out / "trials.csv")) == 3
    # Other protocol settings would make the trials incomparable: refused.
    assert main(args + ["--trials", "4", "--probe-epochs", "2"]) == 2
    assert "started with other options (probe_epochs: 1 there, 2 now)" in capsys.readouterr().err


@pytest.fixture
def fake(monkeypatch):
    def load(name, split, root=None):
        g = torch.Generator().manual_seed(0)
        return ImageDataset(name, split, torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8, generator=g),
                            torch.randint(0, 10, (100,), generator=g), tuple(str(d) for d in range(10)))

    monkeypatch.setattr(search_module, "load_dataset", load)
    monkeypatch.setattr(search_module, "get_preset", lambda name: resolve_preset(TINY))


def test_intermediate_accuracy_is_reported_every_epoch_and_poor_trials_are_pruned(fake, tmp_path, monkeypatch):
    cfg = SearchConfig(dataset="mnist", preset="tiny", trials=2, probe_epochs=3, device="cpu", pruner="none")
    study = search(cfg, tmp_path / "a", echo=False)
    assert [sorted(t.intermediate_values) for t in study.trials] == [[1, 2, 3], [1, 2, 3]]
    assert all(t.value == t.intermediate_values[3] for t in study.trials)  # the value is the last epoch's

    # A pruner that stops everything below 101 %: every trial ends after its first probe epoch.
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: optuna.pruners.ThresholdPruner(lower=101.0))
    study = search(SearchConfig(dataset="mnist", preset="tiny", trials=2, probe_epochs=3, device="cpu"), tmp_path / "b",
                   echo=False)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    rows = read_csv(tmp_path / "b" / "trials.csv")
    assert [r["state"] for r in rows] == ["pruned", "pruned"] and all(r["probe_epochs"] == "1" for r in rows)
    assert "**Best" not in (tmp_path / "b" / "trials.md").read_text() and not (tmp_path / "b" / "best_preset.json").exists()


def test_diverging_trials_get_zero_and_a_note(fake, tmp_path, monkeypatch):
    spec = json.loads(json.dumps(TINY))
    spec["blocks"][0]["lr"] = 1e30  # the whole lr range diverges
    monkeypatch.setattr(search_module, "get_preset", lambda name: resolve_preset(spec))
    study = search(SearchConfig(dataset="mnist", preset="tiny", trials=1, probe_epochs=1, params=("lr",), device="cpu"),
                   tmp_path, echo=False)
    assert study.trials[0].value == 0.0 and "diverged: block 0" in study.trials[0].user_attrs["note"]


def test_validation_split_is_seeded_disjoint_and_a_fifth():
    tr, va = validation_split(1003, 0.2, seed=5)
    assert va.numel() == 200 and tr.numel() == 803
    assert set(tr.tolist()).isdisjoint(va.tolist()) and set(tr.tolist()) | set(va.tolist()) == set(range(1003))
    assert torch.equal(validation_split(1003, 0.2, seed=5)[1], va)
    assert not torch.equal(validation_split(1003, 0.2, seed=6)[1], va)
    with pytest.raises(RunError, match="empty split"):
        validation_split(3, 0.2)


def test_search_space_is_per_layer_and_centred_on_the_preset():
    preset = get_preset("SoftHebbCnnMNIST")
    space = _ranges(preset, ("t_invert", "lr", "power_lr", "triangle"))
    assert sorted(space) == sorted(f"b{i}.{p}" for i in range(3) for p in ("t_invert", "lr", "power_lr", "triangle"))
    assert space["b1.t_invert"] == pytest.approx((0.065, 6.5, True, 0.65))
    assert space["b0.triangle"][3] == 0.7
    for lo, hi, _, v in space.values():
        assert lo <= v <= hi
    spec = apply_params(preset, {"b1.lr": 0.02, "b2.triangle": 1.7}, "x")
    assert spec["blocks"][1]["lr"] == 0.02 and spec["blocks"][2]["activation"] == "triangle_1.7"
    assert resolve_preset(spec)["name"] == "x" and preset["blocks"][1]["lr"] == 0.005  # the preset is not changed
    # no power_lr for a linear-decay block
    assert "b1.power_lr" not in _ranges(resolve_preset(TINY), ("power_lr",))


@pytest.mark.parametrize("change,match", [
    ({"val_fraction": 0.0}, "'val_fraction'"), ({"params": ("t_invert", "radius")}, "'params'"),
    ({"trials": 0}, "'trials'"), ({"pruner": "hyperband"}, "'pruner'"), ({"probe_epochs": 0}, "'probe_epochs'"),
])
def test_bad_search_options_are_refused(change, match):
    with pytest.raises(RunError, match=match):
        SearchConfig(**change)
