"""End to end on real MNIST, the CLI round trip, and clear errors for bad input."""

import json
import os
import shutil

import pytest
import torch

from softhebb.cli import main
from softhebb.run import RunConfig, RunError, atomic_write, evaluate_run, load_run, run, run_name


def test_hebbian_features_beat_random_features_on_real_cifar10(data_root, tmp_path):
    """The core claim on a slice of real CIFAR-10: one label-free Hebbian epoch beats the same
    network with its random initial weights (measured: 54.0 % vs 39.5 %).

    On MNIST slices the random network is as good or better at this scale (1 hidden layer,
    10,000 images: 96.4 % vs 97.3 %), so the comparison is made where the paper shows it.
    """
    common = dict(preset="2SoftHebbCnnCIFAR", dataset="cifar10", train_limit=10000, test_limit=2000, probe_epochs=10,
                  eval_every=10, seed=0)
    trained = run(RunConfig(**common), tmp_path / "hebb", data_root, progress=False, echo=False)
    random = run(RunConfig(**common, hebb_epochs=0), tmp_path / "random", data_root, progress=False, echo=False)
    assert trained["test_acc"] > random["test_acc"] + 5, (trained["test_acc"], random["test_acc"])


def test_end_to_end_smoke_run_on_a_slice_of_real_mnist(data_root, tmp_path):
    """A smoke test of the whole pipeline on MNIST (random features also pass this bar)."""
    res = run(RunConfig(preset="2SoftHebbCnnCIFAR", dataset="mnist", train_limit=10000, test_limit=2000, probe_epochs=5,
                        eval_every=5), tmp_path / "mnist", data_root, progress=False, echo=False)
    assert res["test_acc"] > 90
    assert res["train_acc"] > 85  # under dropout 0.5 after 5 epochs (89.7 % measured)


def test_cli_train_then_eval_round_trip(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "mnist", "--preset", "2SoftHebbCnnCIFAR", "--train-limit", "300", "--test-limit", "200",
            "--probe-epochs", "2", "--data-dir", str(data_root), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["preset"]["name"] == "2SoftHebbCnnCIFAR" and config["run"]["seed"] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["hebbian", "probe", "probe"]
    capsys.readouterr()
    assert main(["eval", str(out), "--data-dir", str(data_root), "--limit", "200", "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_acc"] == pytest.approx(result["test_acc"])
    # Python API: the saved network loads (safetensors + config) with trained Hebbian weights
    model, _ = load_run(out)
    assert model.blocks[0].layer.num_updates.item() == 30
    # A finished run is never silently overwritten ...
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text()) == result
    # ... unless asked.
    assert main(args + ["--overwrite"]) == 0


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["train", "--preset", "4SoftHebbCnnCIFR", "--dataset", "cifar10"]) == 2
    assert "Did you mean 4SoftHebbCnnCIFAR" in capsys.readouterr().err


def test_wrong_data_root_names_the_missing_file(tmp_path, capsys, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("offline")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "md5" in err
    assert not (tmp_path / "o").exists()  # nothing created for a run that could not start


def test_corrupt_file_names_file_and_expected_checksum(data_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root / "mnist", root / "mnist")
    bad = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.chmod(0o644)
    import gzip
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # a wrong label, valid format
    bad.write_bytes(gzip.compress(bytes(raw)))
    assert main(["train", "--dataset", "mnist", "--data-dir", str(root), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte" in err and "sha256" in err


def test_backprop_presets_are_recognised():
    assert RunConfig(preset="4CnnCIFAR").backprop and not RunConfig().backprop


def test_bad_config_values_are_rejected():
    with pytest.raises(RunError, match="'hebb_batch'"):
        RunConfig(hebb_batch=0)
    with pytest.raises(RunError, match="'dataset'"):
        RunConfig(dataset="imagenet-21k")
    for hybrid in ({"precision": "bf16"}, {"dataset": "stl10", "preset": "5SoftHebbCnnSTL"}, {"hebb_epochs": 0},
                   {"preset": "2CnnCIFAR"}, {"probe_augment": "shift"}, {"probe_epochs": 0}):
        with pytest.raises(RunError, match="hybrid needs an in-memory dataset"):
            RunConfig(mode="hybrid", **hybrid)


def test_a_preset_protocol_replaces_the_dataset_protocol_unless_a_run_sets_it():
    mlp = RunConfig(preset="2SoftMlpMNIST_converged", dataset="mnist")  # the authors' B.3.A protocol, no flags
    assert (mlp.hebb_batch, mlp.probe_epochs, mlp.probe_batch) == (32, 10, 32)
    set_here = RunConfig(preset="2SoftMlpMNIST", dataset="mnist", hebb_batch=10, probe_epochs=3)
    assert (set_here.hebb_batch, set_here.probe_epochs, set_here.probe_batch) == (10, 3, 32)
    cnn = RunConfig(preset="SoftHebbCnnMNIST", dataset="mnist")
    assert (cnn.hebb_batch, cnn.probe_epochs, cnn.probe_batch) == (10, 50, 64)
    assert run_name(mlp, short_if_default=True) == "mnist-2SoftMlpMNIST_converged-s0"
    from softhebb.network import PresetError, resolve_preset
    for bad, message in (({"hebb_batch": 0}, "'hebb_batch' must be a positive int"),
                         ({"probe_lr": 1e-3}, "expected an object with some of")):
        with pytest.raises(PresetError, match=message):
            resolve_preset({"name": "p", "blocks": [{"type": "linear", "out": 4}], "protocol": bad})


def test_bad_preset_values_fail_before_anything_is_written(tmp_path, capsys):
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"blocks": [{"type": "conv", "out": 8, "rule": "bp"}, {"type": "conv", "out": 8}]}))
    for bad, message in ((["--set", "groups=5"], "groups=5 must divide the block's input channels (1)"),
                         (["--set", "pool=max_2_2_2"], "padding between 0 and half the kernel"),
                         (["--set", "rule=bp"], "'block_overrides'"),
                         (["--preset", str(mixed)], "mixes backprop")):
        assert main(["train", "--dataset", "mnist", *bad, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def test_default_run_directories_of_variants_do_not_collide():
    def name(**options) -> str:
        return run_name(RunConfig(**options), short_if_default=True)

    assert name(seed=1) == "cifar10-4SoftHebbCnnCIFAR-s1"
    assert name(device="cpu", workers=2, probe_dropout=0.5) == "cifar10-4SoftHebbCnnCIFAR-s0"  # the same run
    variants = [{}, {"hebb_epochs": 0}, {"precision": "bf16"}, {"block_overrides": {"t_invert": 0.5}}, {"probe_lr": 3e-4},
                {"hebb_epochs": 0, "random_bn": "data"}]
    assert len({name(**v) for v in variants}) == len(variants)
    assert name(hebb_epochs=2, device="cpu") == name(hebb_epochs=2)  # --resume on another device finds the run
    # a preset that fits MNIST only with its override is named, not refused
    assert name(preset="6SoftHebbCnnImNet", dataset="mnist", block_overrides={"padding": 2}).startswith("mnist-6SoftHebb")


def test_eval_refuses_a_dataset_with_other_classes_or_an_empty_subset(tmp_path, monkeypatch):
    from softhebb import run as run_module
    from softhebb.network import build_model

    out = tmp_path / "r"
    model = build_model("SoftHebbCnnMNIST_2layer", (1, 28, 28), 10, seed=0)
    run_module.save_model(model, out / "model.safetensors", {})
    config = {"run": {"dataset": "mnist", "seed": 0}, "preset": model.preset, "in_shape": [1, 28, 28], "num_classes": 10}
    (out / "config.json").write_text(json.dumps(config))

    class Test:  # a 100-class dataset with MNIST's image shape; never reaches the images
        shape = (1, 28, 28)
    monkeypatch.setattr(run_module, "load_dataset", lambda *a: Test())
    monkeypatch.setitem(run_module.DATASETS, "mnist100", run_module.DATASETS["cifar100"])
    with pytest.raises(RunError, match="10-class classifier, but mnist100 has 100 classes"):
        evaluate_run(out, "mnist100")
    with pytest.raises(RunError, match="limit must be"):
        evaluate_run(out, limit=0)


def test_run_files_are_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "result.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644


def test_load_run_refuses_non_runs(tmp_path):
    with pytest.raises(RunError, match="not a finished softhebb run"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(RunError):
        load_run(tmp_path)


def test_presets_command_lists_and_shows(capsys):
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert "4SoftHebbCnnCIFAR" in listing and "SoftHebbCnnMNIST" in listing
    assert main(["presets", "4SoftHebbCnnCIFAR"]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"][2]["out"] == 1536


def test_cuda_request_without_cuda_is_clear():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from softhebb.run import resolve_device
    with pytest.raises(RunError, match="CUDA is not available"):
        resolve_device("cuda")


def test_a_mirror_preset_trains_saves_and_evaluates_to_the_same_accuracy(data_root, tmp_path):
    out = tmp_path / "mirror"
    res = run(RunConfig(preset="4SoftHebbCnnCIFAR_mirror", dataset="mnist", train_limit=200, test_limit=100,
                        probe_epochs=1), out, data_root, progress=False, echo=False)
    model, _ = load_run(out)
    assert model.mirror
    assert evaluate_run(out, data_dir=data_root, limit=100)["test_acc"] == pytest.approx(res["test_acc"])


def test_hybrid_mode_refuses_a_mirrored_classifier():
    """Hybrid mode's Hebbian layers learn from the classifier's forward pass, which would then see the mirrors too."""
    with pytest.raises(RunError, match="without a mirrored classifier"):
        RunConfig(preset="4SoftHebbCnnCIFAR_mirror", mode="hybrid")


def test_a_probe_grid_preset_trains_saves_and_evaluates_to_the_same_accuracy(data_root, tmp_path):
    """The multi-block readout through the whole pipeline: features without the prefix cache, the wider classifier
    saved and loaded, and `eval` recomputing the same features."""
    out = tmp_path / "concat"
    res = run(RunConfig(preset="4SoftHebbCnnCIFAR_concat", dataset="mnist", train_limit=200, test_limit=100,
                        probe_epochs=1), out, data_root, progress=False, echo=False)
    model, _ = load_run(out)
    assert model.num_features == 384 * 16 + 1536 * 3 * 3
    assert evaluate_run(out, data_dir=data_root, limit=100)["test_acc"] == pytest.approx(res["test_acc"])
