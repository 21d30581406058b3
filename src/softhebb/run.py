"""One experiment end to end: data → model → Hebbian phase → features → probe → run directory.

A run directory holds:
    config.json      the resolved configuration (preset with every default filled in)
    metrics.jsonl    one JSON object per Hebbian epoch / probe epoch
    model.safetensors the trained weights (Hebbian weights, BatchNorm statistics, classifier)
    result.json      final test accuracy and wall times; its presence marks the run finished
config.json, model.safetensors and result.json are written atomically (temp file + rename), and
result.json comes last, so an interrupted run never looks complete; metrics.jsonl is an
append-only log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .data import DATASETS, load_dataset
from .network import SoftHebbNet, build_model, get_preset, resolve_preset
from .train import MODES, evaluate, extract_features, hebbian_phase, train_probe


class RunError(RuntimeError):
    """A run directory or configuration that cannot be used as asked."""


@dataclass
class RunConfig:
    """Everything that determines a run. Defaults are the paper's CIFAR-10 protocol."""

    preset: str = "4SoftHebbCnnCIFAR"
    dataset: str = "cifar10"
    mode: str = "successive"
    seed: int = 0
    hebb_epochs: int = 1
    hebb_batch: int = 10
    probe_epochs: int = 50
    probe_batch: int = 64
    probe_lr: float = 1e-3
    eval_every: int = 10
    train_limit: int | None = None  # use a seeded random subset of the training set (quick runs, tests)
    test_limit: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        def need(cond: bool, field: str, expected: str) -> None:
            if not cond:
                raise RunError(f"config field {field!r} = {getattr(self, field)!r}: expected {expected}")

        need(self.dataset in DATASETS, "dataset", f"one of {sorted(DATASETS)}")
        need(self.mode in MODES, "mode", f"one of {MODES}")
        for f in ("hebb_epochs", "probe_epochs"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 0, f, "an integer >= 0")
        for f in ("hebb_batch", "probe_batch", "eval_every"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "an integer > 0")
        need(self.probe_lr > 0, "probe_lr", "a number > 0")
        for f in ("train_limit", "test_limit"):
            need(getattr(self, f) is None or getattr(self, f) > 0, f, "None or an integer > 0")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", "auto, cpu or cuda[:N]")
        preset = get_preset(self.preset)  # unknown preset → PresetError with suggestions
        if any(b["rule"] == "bp" for b in preset["blocks"]):
            raise RunError(f"preset {preset['name']!r} has backprop blocks; training backprop baselines end to end is not "
                           "implemented yet (only Hebbian presets can be trained)")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _subset(images: torch.Tensor, labels: torch.Tensor, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None or limit >= labels.numel():
        return images, labels
    idx = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return images[idx], labels[idx]


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse to silently overwrite: a used directory is kept unless ``overwrite`` is given.

    Nothing is created here; the directory appears with the first file, after the data loaded.
    """
    if out.exists() and not out.is_dir():
        raise RunError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        state = "a finished run" if (out / "result.json").exists() else "files from an unfinished run"
        raise RunError(f"output directory {out} already holds {state}; choose another --out or pass --overwrite")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise RunError(f"cannot write the run directory {out}: {existing} is not writable")
    if out.exists():
        for name in ("result.json", "metrics.jsonl", "model.safetensors", "config.json"):
            (out / name).unlink(missing_ok=True)


def save_model(model: SoftHebbNet, path: Path, config: dict) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"softhebb_config": json.dumps(config)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[SoftHebbNet, dict]:
    """Rebuild a trained network from a run directory (safetensors only; nothing is unpickled)."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise RunError(f"{p} not found: {run_dir} is not a finished softhebb run directory")
    try:
        config = json.loads(cfg_path.read_text())
        model = SoftHebbNet(resolve_preset(config["preset"]), tuple(config["in_shape"]), config["num_classes"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RunError(f"{cfg_path} is not a valid run config ({type(e).__name__}: {e})") from None
    try:
        state = load_file(weights, device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise RunError(f"{weights} is not a readable safetensors file ({e})") from None
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise RunError(f"{weights} does not match {cfg_path}: mismatched tensors {sorted(missing)[:5]}")
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval(), config


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cfg: RunConfig, out: str | os.PathLike, data_dir: str | os.PathLike | None = None, overwrite: bool = False,
        progress: bool = True, echo: bool = True) -> dict[str, Any]:
    """Train and evaluate one configuration, writing its run directory. Returns the result dict."""
    out = Path(out)
    prepare_run_dir(out, overwrite)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    train = load_dataset(cfg.dataset, "train", data_dir)
    test = load_dataset(cfg.dataset, "test", data_dir)
    x_train, y_train = _subset(train.images, train.labels, cfg.train_limit, cfg.seed)
    x_test, y_test = _subset(test.images, test.labels, cfg.test_limit, cfg.seed)
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    info = DATASETS[cfg.dataset]

    preset = get_preset(cfg.preset)
    model = build_model(preset, info.shape, info.num_classes, seed=cfg.seed).to(device)
    config = {"softhebb_version": __version__, "run": dataclasses.asdict(cfg), "preset": preset,
              "in_shape": list(info.shape), "num_classes": info.num_classes,
              "train_size": int(y_train.numel()), "test_size": int(y_test.numel()),
              "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
              "machine": platform.machine(), "python": platform.python_version()}
    atomic_write(out / "config.json", json.dumps(config, indent=2))
    metrics = open(out / "metrics.jsonl", "w")

    def log(row: dict) -> None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        if echo and (row["phase"] == "hebbian" or "test_acc" in row):
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    try:
        t_data = time.perf_counter()
        hebbian_phase(model, x_train, cfg.mode, cfg.hebb_epochs, cfg.hebb_batch, cfg.seed, log, progress)
        t_hebb = time.perf_counter()
        f_train = extract_features(model, x_train, progress=progress)
        f_test = extract_features(model, x_test, progress=progress)
        t_feat = time.perf_counter()
        probe = train_probe(model, f_train, y_train, f_test, y_test, cfg.probe_epochs, cfg.probe_batch, cfg.probe_lr,
                            cfg.seed, cfg.eval_every, log, progress)
        if not probe:  # no probe epochs: report the untrained head so the run still has a result
            test = evaluate(model, f_test, y_test)
            probe = {"test_acc": test["acc"], "test_loss": test["loss"]}
        t_probe = time.perf_counter()
    finally:
        metrics.close()
    save_model(model, out / "model.safetensors", config)
    result = {**probe, "preset": preset["name"], "dataset": cfg.dataset, "seed": cfg.seed, "mode": cfg.mode,
              "seconds": {"data": round(t_data - t0, 2), "hebbian": round(t_hebb - t_data, 2),
                          "features": round(t_feat - t_hebb, 2), "probe": round(t_probe - t_feat, 2),
                          "total": round(time.perf_counter() - t0, 2)},
              "peak_rss_mb": round(peak_rss_mb(), 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(out / "result.json", json.dumps(result, indent=2))
    return result


def evaluate_run(run_dir: str | os.PathLike, dataset: str | None = None, data_dir: str | os.PathLike | None = None,
                 device: str = "auto", limit: int | None = None) -> dict[str, float]:
    """Test accuracy of a saved run on the official test split of ``dataset`` (default: its own)."""
    model, config = load_run(run_dir, "cpu")
    dev = resolve_device(device)
    model.to(dev)
    name = dataset or config["run"]["dataset"]
    test = load_dataset(name, "test", data_dir)
    if tuple(test.images.shape[1:]) != tuple(config["in_shape"]):
        raise RunError(f"run {run_dir} was trained on inputs of shape {tuple(config['in_shape'])}, "
                       f"but {name} images have shape {tuple(test.images.shape[1:])}")
    x, y = _subset(test.images, test.labels, limit, config["run"]["seed"])  # the subset `train --test-limit` used
    feats = extract_features(model, x.to(dev))
    res = evaluate(model, feats, y.to(dev))
    return {"dataset": name, "test_acc": res["acc"], "test_loss": res["loss"], "n": int(y.numel())}
