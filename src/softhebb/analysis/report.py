"""Run-directory level analyses: load runs and data, compute, write PNG figures plus the numbers
behind them (CSV/JSON/NPZ). These back the ``softhebb analyze`` command."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import IN_MEMORY
from ..data import load_dataset, subset_indices
from ..network import build_model
from ..rundir import RunError, load_run
from . import plots
from .dynamics import compare_schedules, record_dynamics
from .geometry import receptive_fields
from .representations import alive_neurons, block_outputs, embed_2d, knn_accuracy, sparsity, top_patches
from .robustness import robustness
from .visualize import filter_std, first_layer_filters, maximize_activation, pick_neurons, tile

WHAT = ("filters", "receptive-fields", "dynamics", "representations", "robustness")
Data = tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]  # uint8 images, labels, class names

# Sweeps on [0, 1] pixels: MNIST-like digits survive far larger perturbations than CIFAR images.
SIGMAS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]
EPS = {"small": {"linf": [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "l2": [0.0, 0.1, 0.25, 0.5, 1.0]},
       "large": {"linf": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3], "l2": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]}}


def default_eps(dataset: str) -> dict[str, list[float]]:
    return EPS["large" if dataset in ("mnist", "fashion-mnist") else "small"]


# -- files ------------------------------------------------------------------------------------
def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(obj), indent=2) + "\n")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    return path


def run_label(run_dir: str | os.PathLike) -> str:
    return Path(run_dir).resolve().name


def load_data(config: dict, split: str, data_dir: str | os.PathLike | None, dataset: str | None,
              limit: int | None, seed: int = 0) -> Data:
    """A seeded subset (same for every run given the same seed) of a split, checked against the run's input shape."""
    name = dataset or config["run"]["dataset"]
    if name not in IN_MEMORY:
        raise RunError(f"analyses read in-memory datasets ({', '.join(IN_MEMORY)}); {name} is not one yet")
    ds = load_dataset(name, split, data_dir)
    if tuple(ds.images.shape[1:]) != tuple(config["in_shape"]):
        raise RunError(f"the run was trained on inputs of shape {tuple(config['in_shape'])}, "
                       f"but {name} images have shape {tuple(ds.images.shape[1:])}")
    x, y = ds.images, ds.labels
    if limit is not None and limit < len(y):  # the same seeded rows as a run's --train-limit / --test-limit
        rows = subset_indices(len(y), limit, seed)
        x, y = x[rows], y[rows]
    return x, y, ds.classes


# -- analyses ---------------------------------------------------------------------------------
def analyze_filters(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, labels: Sequence[str] | None = None) -> dict:
    """filters.png: first-layer kernels of each run side by side (min–max per kernel, sorted by
    std); filters.csv: run, rank, kernel index, its std and norm."""
    out, labels = Path(out), list(labels or [run_label(d) for d in run_dirs])
    panels, rows = [], []
    for d, label in zip(run_dirs, labels):
        model, config = load_run(d)
        f, order = first_layer_filters(model)
        w = model.blocks[0].layer.weight.detach().float().cpu()
        std, norm = filter_std(w), w.flatten(1).norm(dim=1)
        panels.append((f"{label}\n{config['preset']['name']}", tile(f, ncols=max(1, int(round((len(f) * 1.5) ** 0.5))))))
        rows += [{"run": label, "rank": r, "kernel": int(k), "std": float(std[k]), "norm": float(norm[k])}
                 for r, k in enumerate(order.tolist())]
    files = [plots.plot_mosaics(panels, out / "filters.png", "first-layer filters (min–max per kernel, sorted by std)"),
             write_csv(out / "filters.csv", rows)]
    return {"files": [str(p) for p in files]}


def analyze_receptive_fields(run_dir: str | os.PathLike, out: str | os.PathLike, neurons: int = 36, steps: int = 200,
                             budget: float = 0.25, seed: int = 0, device: str = "cpu") -> dict:
    """rf_sizes.json/csv: theoretical receptive fields of every block; receptive_fields.png/npz/csv:
    activation maximisation of ``neurons`` random neurons per block (see ``maximize_activation``)."""
    out = Path(out)
    model, config = load_run(run_dir, device)
    rfs = [r.as_dict() for r in receptive_fields(model)]
    files = [write_json(out / "rf_sizes.json", rfs), write_csv(out / "rf_sizes.csv", rfs)]
    panels, rows, arrays = [], [], {}
    for b, rf in enumerate(rfs):
        idx = pick_neurons(model, b, neurons, seed)
        x, resp = maximize_activation(model, b, idx, steps, budget, seed=seed)
        d = x - 0.5  # contrast stretch around the grey start, per image, for display only
        shown = 0.5 + 0.5 * d / d.flatten(1).abs().amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
        panels.append((f"block {b}: RF {rf['conv_size']}px", tile(shown)))
        std = filter_std(model.blocks[b].layer.weight[idx].detach().cpu())
        rows += [{"block": b, "rank": r, "neuron": int(n), "response": float(v), "filter_std": float(s),
                  "rf_size": rf["conv_size"], "pixel_change_rms": float(dd.pow(2).mean().sqrt())}
                 for r, (n, v, s, dd) in enumerate(zip(idx.tolist(), resp, std, d))]
        arrays[f"block{b}_images"], arrays[f"block{b}_neurons"] = x.numpy(), idx.numpy()
    np.savez_compressed(out / "receptive_fields.npz", **arrays)
    files += [plots.plot_mosaics(panels, out / "receptive_fields.png",
                                 f"{config['preset']['name']}: activation maximisation (grey = start; contrast stretched per image)"),
              write_csv(out / "receptive_fields.csv", rows), out / "receptive_fields.npz"]
    return {"rf": rfs, "files": [str(p) for p in files]}


def analyze_dynamics(run_dir: str | os.PathLike, out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                     dataset: str | None = None, limit: int | None = 5000, every: int | None = None,
                     schedules: bool = True, schedule_blocks: int | None = 1, seed: int = 0, device: str = "cpu",
                     data: Data | None = None, progress: bool = False) -> dict:
    """Re-run the run's Hebbian phase (its preset, seed, mode, batch size and epochs; fresh initial
    weights) on ``limit`` training images, recording every ``every`` batches (default: ~200
    records per block). dynamics.csv/npz/png; with ``schedules`` also schedules.csv/png, the
    radius-dependent vs linear-decay rate on the first ``schedule_blocks`` blocks (Fig. B.3.B)."""
    out = Path(out)
    model, config = load_run(run_dir)
    if not model.hebbian_block_indices():
        print(f"dynamics skipped for {run_dir}: {config['preset']['name']} has no Hebbian blocks")
        return {"rows": [], "files": []}
    if config["run"]["mode"] == "hybrid":
        print(f"dynamics skipped for {run_dir}: a hybrid run logs R1, convergence and rates after every batch in its "
              "metrics.jsonl (softhebb reproduce figB3b plots them)")
        return {"rows": [], "files": []}
    images = data[0] if data is not None else load_data(config, "train", data_dir, dataset, limit, seed)[0]
    r = config["run"]
    batch, epochs = r["hebb_batch"], max(1, r["hebb_epochs"])
    every = every or max(1, -(-images.shape[0] * epochs // batch) // 200)
    shape, classes = tuple(config["in_shape"]), config["num_classes"]
    model = build_model(config["preset"], shape, classes, seed=r["seed"]).to(device)
    kw = dict(epochs=epochs, batch_size=batch, every=every, progress=progress)
    dyn = record_dynamics(model, images, mode=r["mode"], seed=r["seed"], **kw)
    name = config["preset"]["name"]
    files = [write_csv(out / "dynamics.csv", dyn.rows),
             plots.plot_dynamics(dyn, out / "dynamics.png", f"{name}: Hebbian phase on {images.shape[0]} images")]
    np.savez_compressed(out / "dynamics.npz", **{f"block{b}_{k}": getattr(dyn, k)[b].numpy()
                                                   for b in dyn.radius for k in ("radius", "lr", "wins")},
                        **{f"block{b}_examples": np.array([x["examples"] for x in dyn.block_rows(b)]) for b in dyn.radius})
    files.append(out / "dynamics.npz")
    if schedules:
        comp = compare_schedules(config["preset"], shape, classes, images, schedule_blocks, seed=r["seed"], device=device, **kw)
        files += [write_csv(out / "schedules.csv", [{"schedule": s, **row} for s, d in comp.items() for row in d.rows]),
                  plots.plot_schedules(comp, out / "schedules.png", f"{name}: radius-dependent vs linear-decay learning rate")]
    return {"rows": dyn.rows, "files": [str(p) for p in files]}


def analyze_representations(run_dir: str | os.PathLike, out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                            dataset: str | None = None, limit: int | None = 2000, depths: list[int] | None = None,
                            neurons: int = 5, top_k: int = 10, tsne: bool = True, seed: int = 0, device: str = "cpu",
                            data: Data | None = None) -> dict:
    """On ``limit`` test images: embeddings.png/csv (PCA, and t-SNE when scikit-learn is installed,
    of the input (block −1) and every block's output, coloured by class, with leave-one-out 5-NN accuracy),
    sparsity.png/csv, top_patches_block<d>.png + top_patches.csv, representations.json."""
    out = Path(out)
    model, config = load_run(run_dir, device)
    images, labels, classes = data if data is not None else load_data(config, "test", data_dir, dataset, limit, seed)
    depths = list(range(len(model.blocks))) if depths is None else depths
    acts = block_outputs(model, images, depths)
    methods = ["pca"]
    note = None
    if tsne:
        try:
            import sklearn  # noqa: F401
            methods.append("tsne")
        except ImportError:
            note = "t-SNE skipped: scikit-learn is not installed (pip install 'softhebb[analysis]')"
            print(note)
    feats = {-1: images.float().div(255), **acts}
    embs, knn, emb_rows, summary = {}, {}, [], []
    for d, f in feats.items():
        knn[d] = knn_accuracy(f, labels)
        for m in methods:
            e = embs[d, m] = embed_2d(f, m, seed)
            emb_rows += [{"block": d, "method": m, "image": i, "label": int(y), "x": float(a), "y": float(b)}
                         for i, (y, (a, b)) in enumerate(zip(labels.tolist(), e.tolist()))]
        if d >= 0:
            summary.append({"block": d, "shape": "x".join(map(str, f.shape[1:])), **sparsity(f), "knn5_acc": knn[d]})
    name = config["preset"]["name"]
    files = [plots.plot_embeddings(embs, labels, classes, out / "embeddings.png", f"{name}: 2-D embeddings of layer outputs", knn),
             write_csv(out / "embeddings.csv", emb_rows), write_csv(out / "sparsity.csv", summary),
             plots.plot_bars(summary, ["zero_fraction", "population", "lifetime", "dead_fraction"], "block",
                             out / "sparsity.png", f"{name}: sparsity of block outputs")]
    patch_rows = []
    for d in depths:
        idx = alive_neurons(acts[d], neurons, seed)
        p, rows = top_patches(model, images, d, idx, top_k, acts[d])
        patch_rows += rows
        files.append(plots.plot_top_patches(p, idx.tolist(), out / f"top_patches_block{d}.png",
                                            f"block {d}: top-{top_k} images per neuron, cropped to the receptive field"))
    files.append(write_csv(out / "top_patches.csv", patch_rows))
    files.append(write_json(out / "representations.json", {"images": int(images.shape[0]), "methods": methods, "note": note,
                                                          "input_knn5_acc": knn[-1], "blocks": summary}))
    return {"sparsity": summary, "knn": knn, "files": [str(p) for p in files]}


def analyze_robustness(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                       dataset: str | None = None, limit: int | None = 1000, sigmas: list[float] | None = None,
                       eps_linf: list[float] | None = None, eps_l2: list[float] | None = None, pgd_steps: int = 10,
                       seed: int = 0, device: str = "cpu", labels: Sequence[str] | None = None, data: Data | None = None,
                       loss: str = "margin") -> dict:
    """robustness.csv/json/png: clean, Gaussian-noise, FGSM/FGM and PGD (L∞, L2) accuracies of every
    run on the same seeded ``limit`` test images (each run's own dataset unless ``dataset``)."""
    out, labels = Path(out), list(labels or [run_label(d) for d in run_dirs])
    rows = []
    for d, label in zip(run_dirs, labels):
        model, config = load_run(d, device)
        x, y, _ = data if data is not None else load_data(config, "test", data_dir, dataset, limit, seed)
        eps = default_eps(dataset or config["run"]["dataset"])
        res = robustness(model, x, y, SIGMAS if sigmas is None else sigmas, eps["linf"] if eps_linf is None else eps_linf,
                         eps["l2"] if eps_l2 is None else eps_l2, pgd_steps, seed, loss=loss)
        rows += [{"run": label, "preset": config["preset"]["name"], "images": int(y.numel()), **r} for r in res]
        print(f"{label}: " + ", ".join(f"{r['attack']}@{r['eps']:.3g}={r['acc']:.1f}" for r in res), flush=True)
    files = [write_csv(out / "robustness.csv", rows), write_json(out / "robustness.json", rows),
             plots.plot_robustness(rows, out / "robustness.png", f"robustness on {rows[0]['images']} test images" if rows else "")]
    return {"rows": rows, "files": [str(p) for p in files]}


# -- every analysis at once ----------------------------------------------------------------------
def analyze(what: str, run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
            labels: Sequence[str] | None = None, data_dir: str | os.PathLike | None = None, dataset: str | None = None,
            limit: int | None = None, seed: int = 0, device: str = "cpu", neurons: int = 36, am_steps: int = 200,
            budget: float = 0.25, every: int | None = None, schedules: bool = True, schedule_blocks: int = 1,
            depths: list[int] | None = None, top_neurons: int = 5, top_k: int = 10, tsne: bool = True,
            sigmas: list[float] | None = None, eps_linf: list[float] | None = None, eps_l2: list[float] | None = None,
            pgd_steps: int = 10, attack_loss: str = "margin") -> list[str]:
    """``what`` (one of ``WHAT``, or "all") for ``run_dirs``; returns the files written (what ``softhebb analyze`` does).

    ``out``: default RUN_DIR/analysis for one run, else ./analysis; with several runs, the per-run analyses
    write one sub-folder per run (named by ``labels``, default the folder names). ``limit`` None: each
    analysis's own default number of images."""
    if what != "all" and what not in WHAT:
        raise RunError(f"unknown analysis {what!r}; choose one of {', '.join(WHAT)} or all")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RunError("softhebb analyze draws figures with matplotlib: pip install 'softhebb[analysis]'") from None
    runs = list(run_dirs)
    labels = list(labels) if labels else [run_label(d) for d in runs]
    if len(labels) != len(runs):
        raise RunError(f"--labels names {len(labels)} runs but {len(runs)} run directories were given")
    out = Path(out or (Path(runs[0]) / "analysis" if len(runs) == 1 else "analysis"))
    per_run = {d: (out / label if len(runs) > 1 else out) for d, label in zip(runs, labels)}
    todo = WHAT if what == "all" else (what,)
    data = dict(data_dir=data_dir, dataset=dataset, seed=seed, device=device,
                **({} if limit is None else {"limit": limit}))  # None: each analysis's own default
    files: list[str] = []
    if "filters" in todo:
        files += analyze_filters(runs, out, labels)["files"]
    for d in runs:
        if "receptive-fields" in todo:
            files += analyze_receptive_fields(d, per_run[d], neurons, am_steps, budget, seed, device)["files"]
        if "dynamics" in todo:
            files += analyze_dynamics(d, per_run[d], every=every, schedules=schedules, schedule_blocks=schedule_blocks,
                                      progress=True, **data)["files"]
        if "representations" in todo:
            files += analyze_representations(d, per_run[d], depths=depths, neurons=top_neurons, top_k=top_k, tsne=tsne,
                                             **data)["files"]
    if "robustness" in todo:
        files += analyze_robustness(runs, out, sigmas=sigmas, eps_linf=eps_linf, eps_l2=eps_l2, pgd_steps=pgd_steps,
                                    labels=labels, loss=attack_loss, **data)["files"]
    return files
