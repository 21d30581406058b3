"""Faults and bad input: kill and resume, NaN updates, absurd settings, unsafe files, bad output folders.

Every refusal must say what is wrong and leave no partial output behind.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import softhebb.config as config_module
import softhebb.run as run_module
from softhebb.cli import main
from softhebb.data import ImageDataset
from softhebb.network import PresetError, build_model, resolve_preset
from softhebb.run import CHECKPOINT, RunConfig, RunError, load_checkpoint, load_run, run
from softhebb.hebbian import NonFiniteError, hebbian_phase

TINY = {"name": "tiny", "blocks": [
    {"type": "conv", "out": 6, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "max_4_2_1"},
    {"type": "conv", "out": 10, "kernel": 3, "padding": 1, "t_invert": 0.5, "lr": 0.02, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "avg_2_2_0"}]}


@pytest.fixture
def fake(monkeypatch):
    """run() on 120 random 28×28 "MNIST" images with the TINY preset; returns a setter for the preset and labels."""
    state = {"preset": TINY, "bad_label": None}

    def load(name, split, root=None):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 120 if split == "train" else 40
        labels = torch.randint(0, 10, (n,), generator=g)
        if state["bad_label"] is not None and split == "train":
            labels[3] = state["bad_label"]
        return ImageDataset(name, split, torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), labels,
                            tuple(str(d) for d in range(10)))

    monkeypatch.setattr(run_module, "load_dataset", load)
    for module in (run_module, config_module):  # the config validates the preset, the run builds it
        monkeypatch.setattr(module, "get_preset", lambda name: resolve_preset(state["preset"]))
    return state


def cfg(**kw):
    return RunConfig(**{"preset": "tiny", "dataset": "mnist", "hebb_batch": 10, "probe_epochs": 4, "probe_batch": 16,
                        "eval_every": 1, "device": "cpu", **kw})


def rows(path):
    out = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("seconds", None)
        out.append(r)
    return out


def assert_same_run(a, b):
    sa, sb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert rows(a) == rows(b)
    ra, rb = (json.loads((p / "result.json").read_text()) for p in (a, b))
    assert (ra["test_acc"], ra["test_loss"]) == (rb["test_acc"], rb["test_loss"])


# -- checkpoint and resume ------------------------------------------------------------------------

def test_sigkill_mid_epoch_then_resume_reaches_the_same_weights(data_root, tmp_path):
    """A real process killed with SIGKILL right after its first checkpoint resumes to the same final weights."""
    args = [sys.executable, "-m", "softhebb.cli", "train", "--dataset", "mnist", "--preset", "SoftHebbCnnMNIST_2layer",
            "--train-limit", "200", "--test-limit", "100", "--probe-epochs", "3", "--eval-every", "1", "--device", "cpu",
            "--data-dir", str(data_root), "--no-progress", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(args + ["--out", str(tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "result.json").exists() and not (out / "model.safetensors").exists()
    position = load_checkpoint(out / CHECKPOINT)
    assert position["phase"] == "hebbian" and position["position"]["batch"] < 20  # 200 images / 10: mid-epoch

    # Without --resume the unfinished directory is refused, with a hint.
    again = subprocess.run(args + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "unfinished run; pass --resume" in again.stderr
    resumed = subprocess.run(args + ["--out", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(tmp_path / "whole", out)
    assert not (out / CHECKPOINT).exists() and not list(out.glob(".*.tmp"))  # finished: no checkpoint or temp files left

    # Resuming a finished run says so and changes nothing.
    before = (out / "result.json").read_text()
    done = subprocess.run(args + ["--out", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "already holds a finished run" in done.stderr and "nothing to resume" in done.stderr
    assert (out / "result.json").read_text() == before


class Crash(Exception):
    pass


def crash_then_resume(c, tmp_path, monkeypatch, every, hit):
    """Run ``c`` whole, then again crashing right after the checkpoint ``hit(state)`` picks, then resume it:
    both must end with the same weights, metrics and result. Returns the resumed run's result."""
    run(c, tmp_path / "whole", progress=False, echo=False, checkpoint_every=every)
    save = run_module.save_checkpoint

    def save_then_crash(path, state):
        save(path, state)
        if hit(state):
            raise Crash

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        run(c, tmp_path / "cut", progress=False, echo=False, checkpoint_every=every)
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    res = run(c, tmp_path / "cut", progress=False, echo=False, checkpoint_every=every, resume=True)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert not (tmp_path / "cut" / CHECKPOINT).exists()
    return res


@pytest.mark.parametrize("mode,crash_at", [
    ("successive", ("hebbian", {"stage": 1, "epoch": 0, "batch": 4})),  # mid-epoch of the second block
    ("simultaneous", ("hebbian", {"stage": 0, "epoch": 1, "batch": 2})),  # second epoch
    ("successive", ("probe", 2)),  # after probe epoch 2 of 4
])
def test_interrupted_run_resumes_to_the_same_weights(fake, tmp_path, monkeypatch, mode, crash_at):
    phase, where = crash_at
    def hit(state):
        return state["phase"] == phase and (state.get("position") == where or state.get("probe", {}).get("epoch") == where)

    res = crash_then_resume(cfg(mode=mode, hebb_epochs=2), tmp_path, monkeypatch, 2, hit)
    assert res["resumed_from"]["phase"] == phase


TINY_BP = {"name": "tinyBP", "blocks": [
    {"type": "conv", "rule": "bp", "out": 6, "kernel": 3, "padding": 1, "activation": "relu", "pool": "max_4_2_1"},
    {"type": "conv", "rule": "bp", "out": 10, "kernel": 3, "padding": 1, "activation": "relu", "pool": "avg_2_2_0"}]}


@pytest.mark.parametrize("bp_mode,crash_at", [
    ("end-to-end", {"stage": 0, "epoch": 2}),  # mid-training: Adam moments, schedule, data order and dropout RNG resume
    ("layerwise", {"stage": 1, "epoch": 1}),  # the second stage: block 0 done, block 1 one epoch in
    ("layerwise", {"stage": 0, "epoch": 4}),  # a finished stage: resumes at the start of the next one
])
def test_interrupted_backprop_run_resumes_to_the_same_weights(fake, tmp_path, monkeypatch, bp_mode, crash_at):
    fake["preset"] = TINY_BP
    res = crash_then_resume(cfg(preset="tinyBP", bp_mode=bp_mode), tmp_path, monkeypatch, 1, lambda state:
                            state["phase"] == "backprop" and state["backprop"]["epoch"] == crash_at["epoch"]
                            and state["backprop"]["stage"] == crash_at["stage"])
    assert res["resumed_from"] == {"phase": "backprop", **crash_at}


def test_interrupted_hybrid_run_resumes_to_the_same_weights(fake, tmp_path, monkeypatch):
    res = crash_then_resume(cfg(mode="hybrid"), tmp_path, monkeypatch, 1,
                            lambda state: state["phase"] == "hybrid" and state["hybrid"]["epoch"] == 2)
    assert res["resumed_from"] == {"phase": "hybrid", "epoch": 2}
    per_batch = [r for r in rows(tmp_path / "cut") if "seen" in r]
    assert [r["seen"] for r in per_batch] == [120 * e + min(16 * (b + 1), 120) for e in range(4) for b in range(8)]


@pytest.mark.parametrize("preset", [TINY, TINY_BP])
def test_checkpointing_does_not_change_the_run(fake, tmp_path, preset):
    """`softhebb reproduce` checkpoints every run; its results must be those of a plain `softhebb train`."""
    fake["preset"] = preset
    c = cfg(preset=preset["name"])
    run(c, tmp_path / "plain", progress=False, echo=False)
    run(c, tmp_path / "checkpointed", progress=False, echo=False, checkpoint_every=1)
    assert_same_run(tmp_path / "plain", tmp_path / "checkpointed")


def test_resume_needs_the_original_options(fake, tmp_path, monkeypatch):
    def crash(path, state):
        raise Crash
    monkeypatch.setattr(run_module, "save_checkpoint", crash)
    with pytest.raises(Crash):
        run(cfg(), tmp_path / "r", progress=False, echo=False, checkpoint_every=2)
    with pytest.raises(RunError, match=r"other options \(hebb_batch: 10 there, 20 now\)"):
        run(cfg(hebb_batch=20), tmp_path / "r", progress=False, echo=False, resume=True)
    with pytest.raises(RunError, match="--resume and --overwrite contradict"):
        run(cfg(), tmp_path / "r", progress=False, echo=False, resume=True, overwrite=True)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(fake, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"run": {**cfg().__dict__}, "preset": resolve_preset(TINY)}))
    (out / "metrics.jsonl").write_text('{"phase": "hebbian", "stale": true}\n')
    (out / ".model.safetensors.abc.tmp").write_bytes(b"half a file")
    run(cfg(), out, progress=False, echo=False, resume=True)
    run(cfg(), tmp_path / "fresh", progress=False, echo=False)
    assert_same_run(tmp_path / "fresh", out)
    assert not list(out.glob(".*.tmp"))


def test_finished_run_directory_is_never_silently_overwritten(fake, tmp_path):
    out = tmp_path / "done"
    run(cfg(), out, progress=False, echo=False)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunError, match="already holds a finished run; choose another --out or pass --overwrite"):
        run(cfg(), out, progress=False, echo=False)
    with pytest.raises(RunError, match=r"already holds a finished run \(test accuracy .*\); there is nothing to resume"):
        run(cfg(), out, progress=False, echo=False, resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


# -- NaN / Inf ------------------------------------------------------------------------------------

def exploding(block=1):
    spec = json.loads(json.dumps(TINY))
    spec["blocks"][block]["lr"] = 1e30  # valid (finite), but w grows without bound within two updates
    return spec


def test_nonfinite_update_stops_with_block_and_batch_named():
    model = build_model(exploding(0), (1, 28, 28), 10, seed=0)
    saved = []
    with pytest.raises(NonFiniteError, match=r"block 0 \(HebbianConv2d.*lr=1e\+30.*\): the Hebbian update of batch 2/12 in epoch 1"):
        hebbian_phase(model, torch.randint(0, 256, (120, 1, 28, 28), dtype=torch.uint8), batch_size=10, progress=False,
                      checkpoint=saved.append, checkpoint_every=3)
    assert saved == []  # the first checkpoint (after batch 3) would already have held NaN weights


def test_nonfinite_run_keeps_the_last_good_checkpoint_and_writes_no_result(fake, tmp_path):
    fake["preset"] = exploding(1)
    out = tmp_path / "nan"
    with pytest.raises(RunError, match=r"block 1 .*batch 2/12 in epoch 1 was NaN or Inf, so it was refused.*last good checkpoint"):
        run(cfg(), out, progress=False, echo=False, checkpoint_every=4)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "config.json", "metrics.jsonl"]
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["position"] == {"stage": 0, "epoch": 0, "batch": 12}  # end of block 0: the last good state
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_nonfinite_hybrid_run_stops_before_saving_a_result(fake, tmp_path):
    fake["preset"] = exploding(0)
    out = tmp_path / "nan"
    with pytest.raises(RunError, match=r"block 0 .*batch 2/8 in epoch 1 was NaN or Inf, so it was refused"):
        run(cfg(mode="hybrid"), out, progress=False, echo=False, checkpoint_every=1)
    assert not (out / "result.json").exists() and not (out / CHECKPOINT).exists()  # epoch 1 never looked finished


# -- absurd settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("change,match", [
    ({"lr": -0.1}, r"block 0: 'lr' must be a finite number >= 0 \(the Hebbian learning rate"),
    ({"t_invert": 0}, r"'t_invert' must be a finite number > 0"),
    ({"t_invert": -1.0}, r"'t_invert' must be a finite number > 0"),
    ({"t_invert": float("nan")}, r"'t_invert' must be a finite number > 0"),
    ({"power_lr": -1}, r"'power_lr' must be a finite number >= 0"),
    ({"radius": 0}, r"'radius' must be a finite number > 0"),
    ({"out": 0}, r"'out' must be a positive int"),
    ({"kernel": 0}, r"'kernel' must be an integer >= 1"),
    ({"stride": 1.5}, r"'stride' must be an integer >= 1"),
    ({"padding": -1}, r"'padding' must be an integer >= 0"),
    ({"rule": "hebb"}, r"'rule' must be one of"),
    ({"lr_schedule": "cosine"}, r"'lr_schedule' must be one of \('radius', 'linear'\)"),
    ({"padding_mode": "mirror"}, r"'padding_mode' must be one of"),
    ({"bn": "yes"}, r"'bn' must be true or false"),
    ({"activation": "triangle_0"}, r"block 0: triangle power must be > 0"),
    ({"activation": "triangle_x"}, r"block 0: could not convert"),
    ({"pool": "max_0_2_0"}, r"pool kernel and stride must be >= 1"),
])
def test_absurd_preset_values_are_refused_when_the_preset_resolves(change, match):
    spec = json.loads(json.dumps(TINY))
    spec["blocks"][0].update(change)
    with pytest.raises(PresetError, match=match):
        resolve_preset(spec)


@pytest.mark.parametrize("change,match", [
    ({"hebb_batch": 0}, r"'hebb_batch' = 0: expected an integer > 0"),
    ({"probe_batch": -5}, r"'probe_batch' = -5: expected an integer > 0"),
    ({"probe_lr": -1e-3}, r"'probe_lr' = -0.001: expected a finite number > 0"),
    ({"probe_lr": float("inf")}, r"'probe_lr' = inf"),
    ({"hebb_epochs": -1}, r"'hebb_epochs' = -1: expected an integer >= 0"),
    ({"seed": -3}, r"'seed' = -3: expected an integer >= 0"),
    ({"train_limit": 0}, r"'train_limit' = 0: expected None or an integer > 0"),
])
def test_absurd_run_settings_are_refused(change, match):
    with pytest.raises(RunError, match=match):
        RunConfig(**{"preset": "SoftHebbCnnMNIST", "dataset": "mnist", **change})


def test_absurd_cli_values_exit_cleanly_without_output(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["train", "--dataset", "mnist", "--hebb-batch", "0", "--out", str(out)]) == 2
    assert "'hebb_batch' = 0" in capsys.readouterr().err
    assert main(["train", "--dataset", "mnist", "--checkpoint-every", "-2", "--out", str(out), "--data-dir", str(tmp_path)]) == 2
    assert "checkpoint_every must be an integer >= 0" in capsys.readouterr().err
    assert not out.exists()


# -- unsafe and foreign files ---------------------------------------------------------------------

class Bomb:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_bombs_are_never_unpickled(fake, tmp_path):
    marker = tmp_path / "exploded"
    out = tmp_path / "r"
    run(cfg(), out, progress=False, echo=False)
    config = json.loads((out / "config.json").read_text())
    (out / "result.json").unlink()
    for write in (lambda p: torch.save({"w": Bomb(marker)}, p), lambda p: p.write_bytes(pickle.dumps(Bomb(marker)))):
        write(out / CHECKPOINT)
        with pytest.raises(RunError, match="not a readable softhebb checkpoint: it must be a safetensors file"):
            run(cfg(), out, progress=False, echo=False, resume=True)
        write(out / "model.safetensors")
        with pytest.raises(RunError, match="not a readable safetensors file"):
            load_run(out)
        (tmp_path / "bomb.pt").write_bytes((out / CHECKPOINT).read_bytes())
        with pytest.raises(pickle.UnpicklingError):  # and the loader we would allow for .pt files refuses it too
            torch.load(tmp_path / "bomb.pt", weights_only=True)
    assert not marker.exists()
    # a safetensors file that is not a checkpoint (e.g. a model copied over it) is named as such
    save_file({"x": torch.zeros(2)}, out / CHECKPOINT, metadata={"softhebb_config": json.dumps(config)})
    with pytest.raises(RunError, match="is a safetensors file but not a softhebb checkpoint"):
        load_checkpoint(out / CHECKPOINT)


# -- bad data -------------------------------------------------------------------------------------

def test_mismatched_image_and_label_counts_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"labels must be int64 \(5,\), got torch.int64 \(4,\)"):
        ImageDataset("x", "train", torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ("a",))


def test_labels_out_of_range_are_refused_before_anything_is_written(fake, tmp_path):
    fake["bad_label"] = 10
    with pytest.raises(RunError, match=r"mnist train: label 10 at index \d+ is outside 0..9"):
        run(cfg(), tmp_path / "o", progress=False, echo=False)
    fake["bad_label"] = -1
    with pytest.raises(RunError, match="label -1 at index"):
        run(cfg(), tmp_path / "o", progress=False, echo=False)
    assert not (tmp_path / "o").exists()


# -- output folders -------------------------------------------------------------------------------

def test_output_under_a_file_is_refused_without_creating_anything(fake, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match=r"cannot create the run directory .*file is a file, not a directory"):
        run(cfg(), tmp_path / "file" / "sub" / "run", progress=False, echo=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into read-only folders")
def test_unwritable_output_directory_is_refused(fake, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RunError, match="locked is not writable"):
            run(cfg(), locked / "run", progress=False, echo=False)
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o700)


def test_unwritable_output_directory_message(fake, tmp_path, monkeypatch):
    """The same refusal where the test runs as root, with the permission check answering as for another user."""
    monkeypatch.setattr(run_module.os, "access", lambda path, mode: False)
    with pytest.raises(RunError, match=r"cannot write the run directory .*: .* is not writable"):
        run(cfg(), tmp_path / "run", progress=False, echo=False)
    assert not (tmp_path / "run").exists()


def test_a_nan_pixel_is_refused_before_the_weights_change():
    """One NaN pixel in a batch: the layer's step raises, names itself, and leaves every weight as it was."""
    from softhebb import HebbianConv2d, hebbian_step
    layer = HebbianConv2d(3, 8, 3, padding=1, t_invert=1.0, lr=0.05).train()
    x = torch.rand(4, 3, 8, 8)
    layer(x)
    hebbian_step(layer)
    before = layer.weight.clone()
    x[1, 2, 3, 4] = float("nan")
    with torch.no_grad():
        layer(x)
    with pytest.raises(NonFiniteError, match=r"HebbianConv2d \(rule=softhebb.*\): update 2 is not finite"):
        hebbian_step(layer)
    assert torch.equal(layer.weight, before) and int(layer.first_nonfinite_update) == 2
    layer(torch.rand(4, 3, 8, 8))
    with pytest.raises(NonFiniteError):  # frozen after a bad update: a later finite batch does not hide it
        layer.step()
    assert torch.equal(layer.weight, before)
