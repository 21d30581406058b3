"""Hyper-parameter search with Optuna: ``softhebb search`` (``pip install "softhebb[search]"``).

Protocol (reference §4.4): the training set is split once by a seeded permutation into 20 %
validation — the front of the permutation, as in the original — and 80 % training. The test set
is never loaded. Every trial builds the preset with its sampled values, trains the Hebbian layers
on the 80 %, trains the probe on their features and reports the validation accuracy after every
probe epoch, so that the pruner can stop poor trials early; the trial's value is the validation
accuracy after the last epoch (the paper reports the last epoch, not the best). The model seed
and data order are the same in every trial: trials differ only in their hyper-parameters.

The original searched fixed grids with Ray Tune (reference §5.4: seeds; t_invert × softness;
radius). Here TPE samples, for each Hebbian block b: ``b.t_invert`` and ``b.lr`` on a log scale
from 1/10 to 10× the preset's value, ``b.power_lr`` in [0.1, 1.5] (radius schedule only) and
``b.triangle``, the triangle activation's power, in [0.3, 2]. The preset's own values are the
first trial, as a baseline.

A study lives in a database: an SQLite file in the output folder by default, or any SQLAlchemy
URL (postgresql://…, mysql://…) that several machines can share — run the same command on each.
Re-running the command continues the study until ``--trials`` trials have completed or been
pruned; a trial that a crash left running is marked failed by the heartbeat after two minutes
and retried once. After every trial, ``trials.csv``, ``trials.md`` and ``best_preset.json`` are
rewritten in the output folder.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import IN_MEMORY, resolve_device
from .data import DATASETS, load_dataset, subset_indices
from .network import build_model, get_preset
from .rundir import RunError, atomic_write
from .features import extract_features
from .hebbian import MODES, NonFiniteError, hebbian_phase
from .probe import train_probe

if TYPE_CHECKING:
    import optuna

PARAMS = ("t_invert", "lr", "power_lr", "triangle")
PRUNERS = ("median", "none")


@dataclass
class SearchConfig:
    """One study. Everything except ``trials``, ``storage``, ``timeout`` and ``device`` must stay the same when it resumes."""

    dataset: str = "mnist"
    preset: str = "SoftHebbCnnMNIST_2layer"
    params: tuple[str, ...] = PARAMS
    val_fraction: float = 0.2
    train_limit: int | None = None
    seed: int = 0
    mode: str = "successive"
    hebb_epochs: int = 1
    hebb_batch: int = 10
    probe_epochs: int = 10
    probe_batch: int = 64
    probe_lr: float = 1e-3
    pruner: str = "median"
    trials: int = 20
    timeout: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        def need(cond: bool, field: str, expected: str) -> None:
            if not cond:
                raise RunError(f"search option {field!r} = {getattr(self, field)!r}: expected {expected}")

        need(self.dataset in IN_MEMORY, "dataset", f"one of the in-memory datasets {sorted(IN_MEMORY)}")
        need(bool(self.params) and set(self.params) <= set(PARAMS), "params", f"a non-empty subset of {PARAMS}")
        need(0 < self.val_fraction < 1, "val_fraction", "a fraction strictly between 0 and 1 (the paper: 0.2)")
        need(self.train_limit is None or self.train_limit >= 10, "train_limit", "None or an integer >= 10")
        need(self.mode in MODES, "mode", f"one of {MODES}")
        for f in ("hebb_batch", "probe_epochs", "probe_batch", "trials"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "an integer > 0")
        need(isinstance(self.hebb_epochs, int) and self.hebb_epochs >= 0, "hebb_epochs", "an integer >= 0")
        need(math.isfinite(self.probe_lr) and self.probe_lr > 0, "probe_lr", "a finite number > 0")
        need(self.pruner in PRUNERS, "pruner", f"one of {PRUNERS}")
        need(self.timeout is None or self.timeout > 0, "timeout", "None or seconds > 0")
        self.params = tuple(self.params)
        get_preset(self.preset)  # unknown preset → PresetError with suggestions

    def protocol(self) -> dict[str, Any]:
        """What makes trials comparable; stored with the study and checked when it resumes."""
        d = asdict(self)
        for k in ("trials", "timeout", "device"):
            d.pop(k)
        d["params"] = list(self.params)
        return d


# -- the search space ---------------------------------------------------------------------------

def _ranges(preset: dict, params: tuple[str, ...]) -> dict[str, tuple[float, float, bool, float]]:
    """name → (low, high, log scale, the preset's value) for every searched value of every Hebbian block."""
    space = {}
    for i, b in enumerate(preset["blocks"]):
        if b["rule"] == "bp":
            continue
        if "t_invert" in params:
            space[f"b{i}.t_invert"] = (b["t_invert"] / 10, b["t_invert"] * 10, True, b["t_invert"])
        if "lr" in params and b["lr"] > 0:
            space[f"b{i}.lr"] = (b["lr"] / 10, b["lr"] * 10, True, b["lr"])
        if "power_lr" in params and b["lr_schedule"] == "radius":
            space[f"b{i}.power_lr"] = (min(0.1, b["power_lr"]), max(1.5, b["power_lr"]), False, b["power_lr"])
        act = b["activation"] or ""
        if "triangle" in params and act.startswith("triangle"):
            p = float(act.partition("_")[2] or 1.0)
            space[f"b{i}.triangle"] = (min(0.3, p), max(2.0, p), False, p)
    return space


def apply_params(preset: dict, values: dict[str, float], name: str | None = None) -> dict:
    """A copy of ``preset`` with sampled values (``{"b0.t_invert": 0.8, "b1.triangle": 1.2, …}``) written in."""
    spec = copy.deepcopy(preset)
    for key, v in values.items():
        block, field = key.split(".")
        b = spec["blocks"][int(block[1:])]
        if field == "triangle":
            b["activation"] = f"triangle_{v!r}"
        else:
            b[field] = v
    spec["name"] = name or preset["name"]
    return spec


def validation_split(n: int, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices: the first ⌊fraction·n⌋ of a seeded permutation validate (as the original)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(fraction * n)
    if k == 0 or k == n:
        raise RunError(f"a validation fraction of {fraction} of {n} images leaves an empty split; use more images")
    return perm[k:].sort().values, perm[:k].sort().values


# -- the study ----------------------------------------------------------------------------------

def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise RunError('`softhebb search` needs Optuna: pip install "softhebb[search]" (or pip install "optuna>=3")') from None
    return optuna


def open_study(cfg: SearchConfig, study_name: str, storage: str) -> "optuna.Study":
    """Create the study, or load it to continue; refuses a study that was started with another protocol."""
    optuna = _optuna()
    # Optuna 4.9 renamed the retry callback; the heartbeat is "experimental" in every version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=120, **retry)
    try:
        previous = len(optuna.study.load_study(study_name=study_name, storage=rdb).trials)
    except KeyError:
        previous = 0
    # TPE's random start-up draws would repeat on a resumed study with a fixed seed
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + previous, n_startup_trials=min(10, max(2, cfg.trials // 3)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1) if cfg.pruner == "median"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=rdb, study_name=study_name, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    protocol = study.user_attrs.get("protocol")
    if protocol is None:
        study.set_user_attr("protocol", cfg.protocol())
        preset = get_preset(cfg.preset)
        study.enqueue_trial({k: v for k, (_, _, _, v) in _ranges(preset, cfg.params).items()},
                            user_attrs={"note": "the preset's own values"})
    elif protocol != cfg.protocol():
        diff = [f"{k}: {protocol.get(k)!r} there, {v!r} now" for k, v in cfg.protocol().items() if protocol.get(k) != v]
        raise RunError(f"study {study_name!r} in {storage} was started with other options ({'; '.join(diff)}); "
                       "its trials would not be comparable. Use the original options or another --study-name")
    return study


def search(cfg: SearchConfig, out: str | os.PathLike, study_name: str | None = None, storage: str | None = None,
           data_dir: str | os.PathLike | None = None, echo: bool = True) -> "optuna.Study":
    """Run (or continue) a study until ``cfg.trials`` trials have completed or been pruned; writes the tables in ``out``."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed below instead
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the search folder {out} ({e})") from None
    study_name = study_name or f"{cfg.dataset}-{get_preset(cfg.preset)['name']}"
    storage = storage or f"sqlite:///{(out / 'study.db').absolute()}"
    study = open_study(cfg, study_name, storage)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = cfg.trials - len(study.get_trials(deepcopy=False, states=finished))
    if remaining <= 0:
        if echo:
            print(f"study {study_name!r} already has {cfg.trials} finished trials; raise --trials to run more")
        write_tables(study, out, cfg)
        return study

    device = resolve_device(cfg.device)
    train = load_dataset(cfg.dataset, "train", data_dir)  # the test split is never loaded
    images, labels = train.images, train.labels
    if cfg.train_limit is not None and cfg.train_limit < len(labels):  # the rows `train --train-limit` would take
        rows = subset_indices(len(labels), cfg.train_limit, cfg.seed)
        images, labels = images[rows], labels[rows]
    tr, va = validation_split(labels.numel(), cfg.val_fraction, cfg.seed)
    x_tr, y_tr, x_va, y_va = (t.to(device) for t in (images[tr], labels[tr], images[va], labels[va]))
    info = DATASETS[cfg.dataset]
    preset = get_preset(cfg.preset)
    space = _ranges(preset, cfg.params)

    def objective(trial: "optuna.Trial") -> float:
        values = {k: trial.suggest_float(k, lo, hi, log=log) for k, (lo, hi, log, _) in space.items()}
        model = build_model(apply_params(preset, values, f"{preset['name']}+trial{trial.number}"), info.shape,
                            info.num_classes, seed=cfg.seed).to(device)
        t0 = time.perf_counter()
        try:
            # checkpoint_every without a checkpoint: check for NaN every 100 batches, not only at the epoch end
            cache = hebbian_phase(model, x_tr, cfg.mode, cfg.hebb_epochs, cfg.hebb_batch, cfg.seed, progress=False,
                                  checkpoint_every=100)
        except NonFiniteError as e:  # a value, not a failure: TPE should learn to avoid this region
            trial.set_user_attr("note", f"diverged: {e}"[:300])
            return 0.0
        f_tr, f_va = extract_features(model, x_tr, cache=cache), extract_features(model, x_va)
        del cache

        def report(row: dict) -> None:
            if "test_acc" in row:  # the probe's "test" set is the validation split here
                trial.report(row["test_acc"], row["epoch"])
                trial.set_user_attr("epochs", row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation accuracy {row['test_acc']:.2f} % at probe epoch {row['epoch']}")

        try:
            res = train_probe(model, f_tr, y_tr, f_va, y_va, cfg.probe_epochs, cfg.probe_batch, cfg.probe_lr, cfg.seed,
                              eval_every=1, log=report, progress=False)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        trial.set_user_attr("val_loss", res["test_loss"])
        trial.set_user_attr("train_acc", res["train_acc"])
        return res["test_acc"]

    def after_trial(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
        write_tables(study, out, cfg)
        if echo:
            value = "—" if trial.value is None else f"{trial.value:.2f} %"
            try:
                best = f"best {study.best_value:.2f} % (trial {study.best_trial.number})"
            except ValueError:
                best = "no completed trial yet"
            print(f"trial {trial.number} {trial.state.name.lower()}: validation accuracy {value}, "
                  f"{trial.user_attrs.get('seconds', 0):.0f} s; {best}", flush=True)

    study.optimize(objective, n_trials=remaining, timeout=cfg.timeout, gc_after_trial=True,
                   callbacks=[optuna.study.MaxTrialsCallback(cfg.trials, states=finished), after_trial])
    write_tables(study, out, cfg)
    return study


# -- results tables -----------------------------------------------------------------------------

def trial_rows(study: "optuna.Study") -> list[dict[str, Any]]:
    """One dict per trial, best first (completed, then pruned by their last reported value, then the rest)."""
    names = sorted({k for t in study.trials for k in t.params})
    rows = []
    for t in study.trials:
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "val_acc": t.value if t.value is not None else last,
                     **{k: t.params.get(k) for k in names},
                     "val_loss": t.user_attrs.get("val_loss"), "train_acc": t.user_attrs.get("train_acc"),
                     "probe_epochs": t.user_attrs.get("epochs"), "seconds": t.user_attrs.get("seconds"),
                     "note": t.user_attrs.get("note", "")})
    order = {"complete": 0, "pruned": 1}
    rows.sort(key=lambda r: (order.get(r["state"], 2), -(r["val_acc"] if r["val_acc"] is not None else -1), r["trial"]))
    return rows


def write_tables(study: "optuna.Study", out: Path, cfg: SearchConfig) -> None:
    """trials.csv, trials.md and (once a trial completed) best_preset.json, each written atomically."""
    rows = trial_rows(study)
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "trials.csv", buf.getvalue())

    def cell(v: Any) -> str:
        if v is None:
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/")

    cols = list(rows[0])
    lines = [f"# Study `{study.study_name}`", "",
             f"{cfg.dataset}, preset `{cfg.preset}`, {len(study.trials)} trials; value: validation accuracy (%) after the "
             f"last of {cfg.probe_epochs} probe epochs on a seeded {cfg.val_fraction:.0%} split of the training set "
             "(the test set is never used).", ""]
    complete = [r for r in rows if r["state"] == "complete"]
    if complete:
        best = complete[0]
        lines += [f"**Best: trial {best['trial']}, {best['val_acc']:.2f} %** — "
                  + ", ".join(f"{k} = {best[k]:.4g}" for k in cols if "." in k and best[k] is not None), ""]
        spec = apply_params(get_preset(cfg.preset), {k: best[k] for k in cols if "." in k and best[k] is not None},
                            f"{cfg.preset}+search")
        atomic_write(out / "best_preset.json", json.dumps(spec, indent=2))
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    atomic_write(out / "trials.md", "\n".join(lines) + "\n")
