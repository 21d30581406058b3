"""One experiment end to end: data → model → Hebbian phase → features → probe → run directory (``softhebb.rundir``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__, _cpu, distributed
from .baselines import calibrate_batchnorm, train_backprop
from .config import IN_MEMORY, RunConfig, resolve_device
from .data import DATASETS, load_dataset, random_subset, subset_indices
from .hebb_classifier import train_hebbian_classifier
from .features import PrefixCache, StreamedFeatures, extract_features, feature_views
from .hebbian import NonFiniteError, hebbian_phase
from .hybrid import train_hybrid
from .layers import HebbianLayer
from .network import PresetError, SoftHebbNet, build_model, get_preset
from .probe import evaluate, train_probe
from .rundir import (CHECKPOINT, PHASE_STATE, RunError, atomic_write, check_writable, load_checkpoint, load_run,
                     prepare_run_dir, remove_temp_files, save_checkpoint, save_model)

CACHED_TEST_FEATURES_BYTES = 2 << 30


def _default_workers() -> int:
    """Decoding processes for image-folder datasets when --workers is not given."""
    return min(8, os.cpu_count() or 1)


def subset(images: torch.Tensor, labels: torch.Tensor, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded random subset of an in-memory split that ``--train-limit`` / ``--test-limit`` take."""
    if limit is None or limit >= labels.numel():
        return images, labels
    idx = subset_indices(labels.numel(), limit, seed)
    return images[idx], labels[idx]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _counters(model: SoftHebbNet) -> dict[str, dict[str, torch.Tensor]]:
    """The win counters of every Hebbian layer (not in the state dict: they are monitoring, not weights)."""
    return {name: {"win_counts": m.win_counts, "winner_y_sum": m.winner_y_sum}
            for name, m in model.named_modules() if isinstance(m, HebbianLayer)}


def _restore(model: SoftHebbNet, ckpt: dict, par: distributed.Parallel | None) -> None:
    model.load_state_dict(ckpt["model"])
    layers = dict(model.named_modules())
    for name, counters in ckpt["stats"].items():
        layer = layers[name]
        layer.win_counts.copy_(counters["win_counts"])
        layer.winner_y_sum.copy_(counters["winner_y_sum"])
        if par is not None and par.rank != 0:
            layer.reset_stats()  # the saved counts are the sum over ranks: rank 0 carries them, the others add to them


# -- run directory ------------------------------------------------------------------------------

_NOT_COMPARED = ("device", "workers")  # may change between a run and its resumption
# RunConfig fields added after runs were published, at their defaults
ADDED_FIELDS = {"probe_augment": None, "probe_dropout": None, "probe_views": 1}


def run_name(cfg: RunConfig, short_if_default: bool = False) -> str:
    """``<dataset>-<preset>-<digest>-s<seed>``, the digest of the whole configuration: identical runs share a
    name and changed options never reuse one. ``short_if_default`` (the CLI): ``<dataset>-<preset>-s<seed>`` for a
    run with the dataset's protocol and the preset as it is, and the device left out of the digest."""
    preset = get_preset(cfg.preset)["name"]
    if short_if_default:  # the CLI's default: the same run directory whatever the device, so --resume finds it
        cfg = dataclasses.replace(cfg, device="auto", workers=None)
        try:
            if cfg == RunConfig(cfg.preset, cfg.dataset, seed=cfg.seed):
                return f"{cfg.dataset}-{preset}-s{cfg.seed}"
        except (RunError, PresetError):
            pass  # the preset alone does not fit this dataset: this run has overrides, so it is not the default
    # workers never changes results; fields added later are left out at their default, so older runs keep their names
    fields = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k != "workers" and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.dataset}-{preset}-{digest}-s{cfg.seed}"


def _open_run_dir(out: Path, cfg: RunConfig, preset: dict, overwrite: bool, resume: bool) -> dict | None:
    """Check ``out`` for this run; returns the checkpoint to continue from, or None to start from scratch."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: pass one of them")
    if not resume or not (out / "config.json").is_file():
        prepare_run_dir(out, overwrite)  # --resume of an empty or missing directory simply starts the run
        return None
    if (out / "result.json").exists():
        try:
            acc = f" (test accuracy {json.loads((out / 'result.json').read_text())['test_acc']:.2f} %)"
        except (OSError, ValueError, KeyError, TypeError):
            acc = ""
        raise RunError(f"{out} already holds a finished run{acc}; there is nothing to resume. "
                       "Pass --overwrite to train it again, or choose another --out")
    check_writable(out)
    try:
        saved = json.loads((out / "config.json").read_text())
        saved_run, saved_preset = saved["run"], saved["preset"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"cannot resume {out}: its config.json is unreadable ({e}); pass --overwrite to start over") from None
    _same_config(out, saved_run, saved_preset, cfg, preset)
    remove_temp_files(out)
    if not (out / CHECKPOINT).is_file():
        prepare_run_dir(out, overwrite=True)  # killed before its first checkpoint: start over in place
        return None
    ckpt = load_checkpoint(out / CHECKPOINT)
    _same_config(out / CHECKPOINT, ckpt["run"], saved_preset, cfg, preset)
    return ckpt


def _same_config(where: Path, saved_run: dict, saved_preset: dict, cfg: RunConfig, preset: dict) -> None:
    now = dataclasses.asdict(cfg)
    saved_run = {**ADDED_FIELDS, **saved_run}  # runs started before a field existed ran at its default
    diff = [f"{k}: {saved_run.get(k)!r} there, {now[k]!r} now" for k in now
            if k not in _NOT_COMPARED and saved_run.get(k) != now[k]]
    if saved_preset != preset:
        diff.append(f"preset {preset['name']!r} differs from the one saved there")
    if diff:
        raise RunError(f"cannot resume {where}: it was started with other options ({'; '.join(diff)}). "
                       "Resume with the original options, or pass --overwrite to start over")


def _check_labels(labels: torch.Tensor, num_classes: int, what: str) -> None:
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise RunError(f"{what}: label {int(labels[i])} at index {i} is outside 0..{num_classes - 1}")


def _on_rank0(par: distributed.Parallel | None, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 alone; every rank gets its value, or raises its exception (so none waits forever)."""
    if par is None:
        return fn()
    value = error = None
    if par.rank == 0:
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 — passed on to every rank
            error = e
    value, error = par.broadcast((value, error))
    if error is not None:
        raise error
    return value


@dataclasses.dataclass
class _Data:
    """A run's images and labels: uint8 tensors on the device for in-memory datasets, else datasets on disk."""
    x_train: Any
    y_train: torch.Tensor
    x_test: Any
    y_test: torch.Tensor
    x_hebb: Any  # what the Hebbian phase sees
    workers: int  # decoding processes for datasets on disk


def _load_data(cfg: RunConfig, data_dir: str | os.PathLike | None, device: torch.device,
               par: distributed.Parallel | None) -> _Data:
    proto, info = cfg.protocol, DATASETS[cfg.dataset]
    train, test = load_dataset(cfg.dataset, "train", data_dir), load_dataset(cfg.dataset, "test", data_dir)
    if proto.in_memory:
        x_train, y_train = subset(train.images, train.labels, cfg.train_limit, cfg.seed)
        x_test, y_test = subset(test.images, test.labels, cfg.test_limit, cfg.seed)
        workers = 0
    else:  # datasets stay on disk (memory-mapped or image files); batches are read and augmented as needed
        x_train, x_test = random_subset(train, cfg.train_limit, cfg.seed), random_subset(test, cfg.test_limit, cfg.seed)
        y_train, y_test = x_train.labels, x_test.labels
        hebb = train if proto.hebb_split == "train" else load_dataset(cfg.dataset, proto.hebb_split, data_dir)
        x_hebb = random_subset(hebb, min(cfg.train_limit or len(hebb), proto.hebb_images or len(hebb)), cfg.seed)
        workers = cfg.workers if cfg.workers is not None else _default_workers()
    _check_labels(y_train, info.num_classes, f"{cfg.dataset} train")
    _check_labels(y_test, info.num_classes, f"{cfg.dataset} test")
    if par is not None:
        try:
            par.check_batches(int(y_train.numel()), cfg.hebb_batch)
        except ValueError as e:
            raise RunError(str(e)) from None
    if proto.in_memory:
        x_train, x_test = x_train.to(device), x_test.to(device)
        x_hebb = x_train
    return _Data(x_train, y_train.to(device), x_test, y_test.to(device), x_hebb, workers)


class _Recorder:
    """The run's metrics log and checkpoints; only rank 0 writes, every rank takes part in a checkpoint."""

    def __init__(self, out: Path, cfg: RunConfig, model: SoftHebbNet, config: dict, ckpt: dict | None,
                 par: distributed.Parallel | None, echo: bool) -> None:
        self.out, self.cfg, self.model, self.par, self.echo = out, cfg, model, par, echo
        self.metrics = None
        if par is None or par.rank == 0:
            if ckpt is None:
                try:
                    atomic_write(out / "config.json", json.dumps(config, indent=2))
                except OSError as e:
                    raise RunError(f"cannot write the run directory {out} ({e})") from None
            self.metrics = open(out / "metrics.jsonl", "a")
            self.metrics.truncate(ckpt["metrics_bytes"] if ckpt else 0)  # rows logged after the checkpoint come again
            self.metrics.seek(0, os.SEEK_END)

    def log(self, row: dict) -> None:
        if self.metrics is None:
            return
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.echo and (row["phase"] == "hebbian" or "test_acc" in row):
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    def checkpoint(self, phase: str, state: dict) -> None:
        """Called on every rank (the probe's RNG states are gathered); rank 0 writes."""
        par = self.par
        full = {"format": 1, "phase": phase, "run": dataclasses.asdict(self.cfg),
                "world_size": par.world_size if par else 1, "model": self.model.state_dict(), "stats": _counters(self.model)}
        if phase == "probe":
            full["probe"] = {**state, "rng": par.gather(state["rng"]) if par else [state["rng"]]}
        else:
            full[PHASE_STATE[phase]] = state
        if self.metrics is not None:
            self.metrics.flush()
            full["metrics_bytes"] = os.fstat(self.metrics.fileno()).st_size
            save_checkpoint(self.out / CHECKPOINT, full)

    def saver(self, phase: str, every: int) -> Callable[[dict], None] | None:
        return (lambda state: self.checkpoint(phase, state)) if every else None

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def run(cfg: RunConfig, out: str | os.PathLike, data_dir: str | os.PathLike | None = None, overwrite: bool = False,
        progress: bool = True, echo: bool = True, resume: bool = False, checkpoint_every: int = 0) -> dict[str, Any]:
    """Train and evaluate one configuration, writing its run directory. Returns the result dict.

    ``checkpoint_every`` > 0: a checkpoint every that many Hebbian batches and after every probe
    (backprop, hybrid) epoch. ``resume``: continue an unfinished run directory from its checkpoint, to
    the same final weights as an uninterrupted run (the options must be those it was started with;
    a missing or empty directory just starts). Under torchrun (torch.distributed initialised) every rank
    trains its share (softhebb.distributed) and only rank 0 writes.
    """
    out = Path(out)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise RunError(f"checkpoint_every must be an integer >= 0 (0 = no checkpoints), got {checkpoint_every!r}")
    par = distributed.current()
    lead = par is None or par.rank == 0
    preset = cfg.resolved_preset()
    if (cfg.backprop or cfg.mode == "hybrid") and par is not None:
        raise RunError("backprop presets and hybrid runs are trained in one process (not under torchrun)")
    if par is not None and not (cfg.protocol.in_memory and not cfg.probe_augmentation):
        raise RunError("multi-process (torchrun) runs support the in-memory datasets "
                       f"({', '.join(IN_MEMORY)}) without probe augmentation only")
    ckpt = _on_rank0(par, lambda: _open_run_dir(out, cfg, preset, overwrite, resume))
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    data = _load_data(cfg, data_dir, device, par)
    info = DATASETS[cfg.dataset]
    model = build_model(preset, info.shape, info.num_classes, seed=cfg.seed).to(device)
    config = {"softhebb_version": __version__, "run": dataclasses.asdict(cfg), "preset": preset,
              "in_shape": list(info.shape), "num_classes": info.num_classes,
              "train_size": int(data.y_train.numel()), "test_size": int(data.y_test.numel()),
              "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
              "world_size": par.world_size if par else 1,
              "machine": platform.machine(), "python": platform.python_version()}
    if ckpt is not None:
        _restore(model, ckpt, par)
    rec = _Recorder(out, cfg, model, config, ckpt, par, echo)
    try:
        probe, seconds = _train(cfg, model, data, rec, ckpt, checkpoint_every, progress and lead, par)
    except NonFiniteError as e:
        kept = f"its last good checkpoint {out / CHECKPOINT} is kept" if (out / CHECKPOINT).exists() else \
            "it holds no checkpoint (pass --checkpoint-every to keep one)"
        raise RunError(f"{e}. The run directory {out} is unfinished: {kept}") from None
    finally:
        rec.close()
    result = _result(cfg, model, preset, probe, {"data": seconds["start"] - t0, **seconds}, t0, ckpt)
    if lead:
        save_model(model, out / "model.safetensors", config)
        atomic_write(out / "result.json", json.dumps(result, indent=2))
        (out / CHECKPOINT).unlink(missing_ok=True)  # finished: result.json and the model replace it
    return result


def _train(cfg: RunConfig, model: SoftHebbNet, data: _Data, rec: _Recorder, ckpt: dict | None, every: int,
           progress: bool, par: distributed.Parallel | None) -> tuple[dict, dict[str, float]]:
    """The run's training, by method; returns the probe's result and the wall times of its phases."""
    t_start = time.perf_counter()
    hebbian_head = model.preset["classifier"]["rule"] == "hebbian"
    if hebbian_head and par is not None:  # before the Hebbian phase, not after it
        raise RunError("the supervised Hebbian classifier runs in one process; start it without torchrun")
    if cfg.backprop:  # no Hebbian phase and no cached features: every layer learns from the labels
        probe = train_backprop(model, data.x_train, data.y_train, data.x_test, data.y_test, cfg.bp_mode, cfg.probe_epochs,
                               cfg.probe_batch, cfg.probe_lr, cfg.seed, augment=cfg.probe_augmentation,
                               eval_every=cfg.eval_every, log=rec.log, progress=progress, workers=data.workers,
                               checkpoint=rec.saver("backprop", every), start=ckpt["backprop"] if ckpt else None)
        return probe, {"start": t_start, "hebbian": 0.0, "features": 0.0, "probe": time.perf_counter() - t_start}
    if cfg.mode == "hybrid":  # Hebbian updates and classifier steps from the same batches (Fig. B.3.B)
        probe = train_hybrid(model, data.x_train, data.y_train, data.x_test, data.y_test, cfg.probe_epochs,
                             cfg.probe_batch, cfg.probe_lr, cfg.seed, rec.log, progress,
                             checkpoint=rec.saver("hybrid", every), start=ckpt["hybrid"] if ckpt else None)
        return probe, {"start": t_start, "hebbian": 0.0, "features": 0.0, "probe": time.perf_counter() - t_start}
    cache = None  # the frozen prefix's outputs for every training image (features.PrefixCache), if it kept them
    if ckpt is None or ckpt["phase"] == "hebbian":
        with _cpu.tuned(model.device):
            cache = hebbian_phase(model, data.x_hebb, cfg.mode, cfg.hebb_epochs, cfg.hebb_batch, cfg.seed, rec.log,
                                  progress, checkpoint=rec.saver("hebbian", every), checkpoint_every=every,
                                  start=ckpt["position"] if ckpt else None, parallel=par, precision=cfg.precision,
                                  augment=cfg.protocol.hebb_augment, workers=data.workers)
    if cfg.hebb_epochs == 0 and cfg.random_bn == "data":
        calibrate_batchnorm(model, data.x_hebb)
    t_hebb = time.perf_counter()
    if cfg.probe_augmentation or not model.reads_last_block_only:
        cache = None  # augmented, multi-block or mirrored features cannot come from it: free its buffer first
    rows = par.rows if par else (lambda t: t)  # the probe's features are sharded over ranks
    f_train, f_test = probe_features(model, cfg, rows(data.x_train), rows(data.x_test), data.workers, progress, cache)
    del cache  # the training features may be a view of its buffer, which they keep
    t_feat = time.perf_counter()
    if hebbian_head:
        probe = train_hebbian_classifier(model, f_train, data.y_train, f_test, data.y_test, cfg.probe_epochs,
                                         cfg.probe_batch, cfg.seed, cfg.eval_every, rec.log, progress)
    else:
        probe = train_probe(model, f_train, rows(data.y_train), f_test, rows(data.y_test), cfg.probe_epochs,
                            cfg.probe_batch, cfg.probe_lr, cfg.seed, cfg.eval_every, rec.log, progress,
                            checkpoint=rec.saver("probe", every), start=_probe_start(ckpt, par), parallel=par)
    if not probe:  # no probe epochs: report the untrained head so the run still has a result
        test = evaluate(model, f_test, rows(data.y_test), parallel=par)
        probe = {"test_acc": test["acc"], "test_loss": test["loss"]}
    t_probe = time.perf_counter()
    return probe, {"start": t_start, "hebbian": t_hebb - t_start, "features": t_feat - t_hebb, "probe": t_probe - t_feat}


def _probe_start(ckpt: dict | None, par: distributed.Parallel | None) -> dict | None:
    """The probe's checkpoint state for this rank; on another number of ranks, fresh dropout masks from here on."""
    if ckpt is None or ckpt["phase"] != "probe":
        return None
    rngs = ckpt["probe"]["rng"]
    if len(rngs) == (par.world_size if par else 1):
        return {**ckpt["probe"], "rng": rngs[par.rank if par else 0]}
    return {k: v for k, v in ckpt["probe"].items() if k != "rng"}


def _result(cfg: RunConfig, model: SoftHebbNet, preset: dict, probe: dict, seconds: dict[str, float], t0: float,
            ckpt: dict | None) -> dict[str, Any]:
    hebb_stats = {str(i): {k: None if isinstance(v, float) and not math.isfinite(v) else v
                           for k, v in model.blocks[i].layer.stats().items()} for i in model.hebbian_block_indices()}
    result = {**probe, "preset": preset["name"], "dataset": cfg.dataset, "seed": cfg.seed, "mode": cfg.mode,
              "method": "backprop" if cfg.backprop else "random" if cfg.hebb_epochs == 0 else "hebbian",
              "r1": sum(s["r1"] for s in hebb_stats.values()), "hebbian_stats": hebb_stats,
              "seconds": {k: round(seconds[k], 2) for k in ("data", "hebbian", "features", "probe")}
              | {"total": round(time.perf_counter() - t0, 2)},
              "peak_rss_mb": round(peak_rss_mb(), 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if ckpt is not None:
        place = ckpt[PHASE_STATE[ckpt["phase"]]]  # hebbian: stage/epoch/batch; probe: epoch; backprop: stage/epoch
        result["resumed_from"] = {"phase": ckpt["phase"],
                                  **{k: place[k] for k in ("stage", "epoch", "batch") if k in place}}
    return result


def probe_features(model: SoftHebbNet, cfg: RunConfig, x_train: Any, x_test: Any, workers: int = 0,
                   progress: bool = False, cache: PrefixCache | None = None,
                   ) -> tuple[torch.Tensor | StreamedFeatures, torch.Tensor | StreamedFeatures]:
    """The probe's train and test features as ``cfg`` asks: computed once (from ``cache``, the ``PrefixCache`` of
    ``x_train`` that the Hebbian phase returned, if given); with probe augmentation, recomputed every epoch
    (``StreamedFeatures``) or ``cfg.probe_views`` augmented views computed once (``feature_views``)."""
    # bf16 runs also store the features in bf16: half the memory and half the probe's memory traffic
    fdtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    if cfg.probe_augmentation:  # new crops every epoch: features cannot be computed once
        f_train = StreamedFeatures(model, x_train, augment=cfg.probe_augmentation, seed=cfg.seed,
                                   precision=cfg.precision, workers=workers)
        if cfg.probe_views > 1:
            need = cfg.probe_views * len(x_train) * model.num_features * fdtype.itemsize
            try:
                f_train = feature_views(f_train, cfg.probe_views, fdtype, progress)
            except (RuntimeError, MemoryError) as e:  # what the allocator says, and what to change
                raise RunError(f"probe_views={cfg.probe_views}: {cfg.probe_views} views of {len(x_train)} x "
                               f"{model.num_features} features need {need / 2**30:.1f} GiB ({e}); use fewer views "
                               "or --precision bf16 (features stored in bf16)") from None
    else:
        f_train = extract_features(model, x_train, progress=progress, dtype=fdtype, precision=cfg.precision,
                                   workers=workers, cache=cache)
    if cfg.dataset in IN_MEMORY or len(x_test) * model.num_features * fdtype.itemsize <= CACHED_TEST_FEATURES_BYTES:
        f_test = extract_features(model, x_test, progress=progress, dtype=fdtype, precision=cfg.precision,
                                  workers=workers)
    else:  # e.g. ImageNet's 50,000 validation images: recomputed at each evaluation instead of held
        f_test = StreamedFeatures(model, x_test, precision=cfg.precision, workers=workers)
    return f_train, f_test


def evaluate_run(run_dir: str | os.PathLike, dataset: str | None = None, data_dir: str | os.PathLike | None = None,
                 device: str = "auto", limit: int | None = None) -> dict[str, float]:
    """Test accuracy of a saved run on the official test split of ``dataset`` (default: its own)."""
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise RunError(f"limit must be None or an integer >= 1, got {limit!r}")
    model, config = load_run(run_dir, "cpu")
    dev = resolve_device(device)
    model.to(dev)
    name = dataset or config["run"]["dataset"]
    test = load_dataset(name, "test", data_dir)
    if tuple(test.shape) != tuple(config["in_shape"]):
        raise RunError(f"run {run_dir} was trained on inputs of shape {tuple(config['in_shape'])}, "
                       f"but {name} images have shape {tuple(test.shape)}")
    if DATASETS[name].num_classes != config["num_classes"]:
        raise RunError(f"run {run_dir} has a {config['num_classes']}-class classifier, "
                       f"but {name} has {DATASETS[name].num_classes} classes")
    precision = config["run"].get("precision", "fp32")
    if name in IN_MEMORY:
        x, y = subset(test.images, test.labels, limit, config["run"]["seed"])  # the subset `train --test-limit` used
        feats = extract_features(model, x.to(dev), precision=precision)
    else:
        x = random_subset(test, limit, config["run"]["seed"])
        y = x.labels
        feats = StreamedFeatures(model, x, precision=precision, workers=_default_workers())
    res = evaluate(model, feats, y.to(dev))
    return {"dataset": name, "test_acc": res["acc"], "test_loss": res["loss"], "n": int(y.numel())}
