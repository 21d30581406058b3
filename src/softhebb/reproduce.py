"""Named experiments that regenerate the paper's figures and tables (reference §6–§7).

Each experiment is a grid of runs (dataset × method × x-value × seed). Every run is an ordinary
run directory under ``<out>/<experiment>/``; finished runs are skipped and unfinished ones continue
from their last checkpoint, so an interrupted reproduction resumes where it stopped. After the
grid, ``runs.csv`` lists every run and ``<experiment>.md`` / ``<experiment>.png`` show mean ±
population std over seeds next to the paper's number and the difference.

    softhebb reproduce --list
    softhebb reproduce fig3 --dataset mnist --seeds 2
    softhebb reproduce fig3 --dataset mnist --seeds 2 --jobs 4 --option device=cuda   # 4 runs at once

With ``jobs`` > 1 the runs go to that many spawned processes, spread over the visible GPUs: one
run at batch 10 leaves a GPU mostly idle (kernel-launch bound), so several share it well.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig
from .run import run, run_name
from .reproduce_tables import write_outputs
from .rundir import CHECKPOINT, RunError


@dataclass(frozen=True)
class Cell:
    """One (method, x) point of an experiment; ``config`` are RunConfig fields besides seed/dataset."""
    method: str
    x: Any
    config: dict
    paper: float | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    x_label: str
    datasets: tuple[str, ...]
    cells: Callable[[str], list[Cell]]  # dataset → its cells
    default_seeds: int = 4
    extra: tuple[str, ...] = field(default=())  # additional result fields to tabulate (e.g. "r1")
    log_x: bool = False
    curve: str | None = None  # a per-batch metrics column to plot against examples seen, one line per run


# -- paper numbers (reference §7.2) -------------------------------------------------------------
FIG3 = {  # dataset → method → accuracies at depth 1..n
    "cifar10": {"softhebb": [71.10, 77.70, 80.31], "hard": [62.69, 60.08, 60.29], "random": [63.99, 68.64, 64.62],
                "bp": [72.42, 82.49, 83.97]},
    "cifar100": {"softhebb": [43.00, 52.31, 56.0], "hard": [34.34, 33.49, 21.6], "random": [34.59, 38.76, 38.25],
                 "bp": [44.76, 52.11, 57.19]},
    "stl10": {"softhebb": [65.4, 70.11, 73.1, 76.23], "hard": [57.92, 58.4, 54.31, 54.84],
              "random": [62.55, 65.69, 68.12, 68.19], "bp": [67.5, 69.64, 72.93, 74.51]},
    "imagenette": {"softhebb": [61.03, 71.29, 75.69, 78.76, 80.98], "hard": [56.77, 60.79, 60.66, 59.60, 61.2],
                   "random": [61, 67.31, 68.12, 74.2, 74.1], "bp": [61.91, 72.32, 76.48, 81.5, 85.3]},
}
# dataset → method → preset per depth (reference §3.1); MNIST/Fashion-MNIST use the CIFAR networks.
_CIFAR = {"softhebb": ["2SoftHebbCnnCIFAR", "3SoftHebbCnnCIFAR", "4SoftHebbCnnCIFAR"],
          "hard": ["2HardCnnCIFAR", "3HardCnnCIFAR", "4HardCnnCIFAR"],
          "random": ["2SoftHebbCnnCIFAR", "3SoftHebbCnnCIFAR", "4SoftHebbCnnCIFAR"],
          "bp": ["2CnnCIFAR", "3CnnCIFAR", "4CnnCIFAR"]}
DEPTH_PRESETS = {
    "cifar10": _CIFAR, "cifar100": _CIFAR, "mnist": _CIFAR, "fashion-mnist": _CIFAR,
    # 5HardCnnSTL does not exist in the original presets (bug); the 4th STL Hard-WTA point is left out.
    "stl10": {"softhebb": _CIFAR["softhebb"][:2] + ["4SoftHebbCnnSTL", "5SoftHebbCnnSTL"],
              "hard": _CIFAR["hard"], "random": _CIFAR["softhebb"][:2] + ["4SoftHebbCnnSTL", "5SoftHebbCnnSTL"],
              "bp": _CIFAR["bp"][:2] + ["4CnnSTL", "5CnnSTL"]},
    "imagenette": {"softhebb": _CIFAR["softhebb"] + ["5SoftHebbCnnSTL", "6SoftHebbCnnImNet"],
                   "hard": [f"{d}HardCnnImNet" for d in range(2, 7)],
                   "random": [f"{d}SoftHebbCnnImNet" for d in range(2, 7)],
                   "bp": [f"{d}CnnImNet" for d in range(2, 7)]},
}
METHOD_CONFIG = {"softhebb": {}, "hard": {}, "random": {"hebb_epochs": 0}, "bp": {}}


def _depth_cells(dataset: str) -> list[Cell]:
    cells = []
    for method, presets in DEPTH_PRESETS[dataset].items():
        paper = FIG3.get(dataset, {}).get(method, [])
        for depth, preset in enumerate(presets, start=1):
            cells.append(Cell(method, depth, {"preset": preset, **METHOD_CONFIG[method]},
                              paper[depth - 1] if depth <= len(paper) else None))
    return cells


def _fig1(dataset: str) -> list[Cell]:
    paper = [71.11, 77.70, 80.31]  # Fig. 1's own values (Fig. 3 rounds the first to 71.10)
    return [Cell(c.method, c.x, c.config, paper[c.x - 1]) for c in _depth_cells(dataset) if c.method == "softhebb"]


def _fig4(dataset: str) -> list[Cell]:
    paper = {1: [71.09, 71.69, 66.44], 2: [71.09, 74.85, 73.87], 4: [71.09, 77.69, 80.31]}
    names = {1: "_wf1", 2: "_wf2", 4: ""}
    cells = []
    for wf, suffix in names.items():
        for depth, base in enumerate(["2SoftHebbCnnCIFAR", "3SoftHebbCnnCIFAR", "4SoftHebbCnnCIFAR"], start=1):
            preset = base if depth == 1 else base + suffix  # one hidden layer has no width ratio
            cells.append(Cell(f"width x{wf}", depth, {"preset": preset}, paper[wf][depth - 1]))
    return cells


# Temperatures 1/t_invert of Fig. B.1/B.2: the paper's grid is t_invert = 1.25^(x−50), x = 0..99 (600 runs);
# every 6th point keeps the shape of the curve at a sixth of the cost.
T_INVERTS = [1.25 ** (x - 50) for x in range(0, 100, 6)]


def _regimes(preset: str) -> Callable[[str], list[Cell]]:
    def cells(dataset: str) -> list[Cell]:
        return [Cell({"softhebb": "with anti-Hebbian", "soft": "without anti-Hebbian"}[rule], 1 / t,
                     {"preset": preset, "block_overrides": {"rule": rule, "t_invert": t}})
                for rule in ("softhebb", "soft") for t in T_INVERTS]
    return cells


def _radius(dataset: str) -> list[Cell]:
    radii = [1.25 ** (x - 10) for x in range(0, 27, 2)]
    return [Cell(label, r, {"preset": preset, "block_overrides": {"radius": r}, "hebb_batch": 32, "probe_epochs": 10,
                            "probe_batch": 32})
            for label, preset in (("norm-dependent", "2SoftMlpMNIST"), ("linear decay", "2SoftMlpMNIST_linearDecay"))
            for r in radii]


def _neurons(dataset: str) -> list[Cell]:
    return [Cell("softhebb", n, {"preset": p}, 80.31 if n == 96 else None)
            for n, p in ((48, "4SoftHebbCnnCIFAR_halfNeurons"), (96, "4SoftHebbCnnCIFAR"), (192, "4SoftHebbCnnCIFAR_doubleNeurons"))]


def _table1(dataset: str) -> list[Cell]:
    return [Cell("softhebb", "3 hidden", {"preset": "4SoftHebbCnnCIFAR"}, 80.31),
            Cell("bp", "3 hidden", {"preset": "4CnnCIFAR"}, 83.97)]


def _table2(dataset: str) -> list[Cell]:
    if dataset == "stl10":
        return [Cell("softhebb", "4 hidden", {"preset": "5SoftHebbCnnSTL"}, 76.23),
                Cell("hard", "3 hidden (5HardCnnSTL is missing)", {"preset": "4HardCnnCIFAR"}, 54.31),
                Cell("random", "4 hidden", {"preset": "5SoftHebbCnnSTL", "hebb_epochs": 0}, 68.19)]
    return [Cell("softhebb", "5 hidden", {"preset": "6SoftHebbCnnImNet"}, 27.3),
            Cell("hard", "5 hidden", {"preset": "6HardCnnImNet"}), Cell("bp", "5 hidden", {"preset": "6CnnImNet"}),
            Cell("random", "5 hidden", {"preset": "6SoftHebbCnnImNet", "hebb_epochs": 0})]


def _convergence(dataset: str) -> list[Cell]:
    hybrid = {"mode": "hybrid", "probe_epochs": 1, "probe_batch": 50}  # the original's CIFAR10_1-50
    return [Cell("norm-dependent", "radius-dependent rate", {"preset": "2HardCnnCIFAR_speed", **hybrid}),
            Cell("linear decay", "linear-decay rate", {"preset": "2HardCnnCIFA_speed_linearDecay", **hybrid})]


def _core(dataset: str) -> list[Cell]:
    """The headline numbers: the CIFAR-10 depth series and our MNIST CNN presets (the paper ships none)."""
    presets = {"cifar10": [("2SoftHebbCnnCIFAR", 71.11), ("3SoftHebbCnnCIFAR", 77.70), ("4SoftHebbCnnCIFAR", 80.31)],
               "mnist": [("SoftHebbCnnMNIST", 99.4), ("SoftHebbCnnMNIST_2layer", 99.4)],
               "fashion-mnist": [("SoftHebbCnnMNIST", None)]}[dataset]
    return [Cell("softhebb", p, {"preset": p}, paper) for p, paper in presets]


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("core", "Headline accuracies: CIFAR-10 1/2/3 hidden layers, MNIST, Fashion-MNIST", "preset",
               ("cifar10", "mnist", "fashion-mnist"), _core, default_seeds=2),
    Experiment("fig1", "Fig. 1: CIFAR-10 accuracy vs number of hidden layers", "hidden layers", ("cifar10",), _fig1),
    Experiment("fig3", "Fig. 3: depth × method (SoftHebb, Hard-WTA, Random, BP)", "hidden layers",
               ("cifar10", "cifar100", "stl10", "imagenette", "mnist", "fashion-mnist"), _depth_cells),
    Experiment("fig4", "Fig. 4: width growth factor", "hidden layers", ("cifar10",), _fig4),
    Experiment("figB1", "Fig. B.1: SoftHebb regimes, 1 hidden layer (accuracy and R1 vs temperature)", "temperature 1/t_invert",
               ("cifar10",), _regimes("2SoftHebbCnnCIFAR"), default_seeds=3, extra=("r1",), log_x=True),
    Experiment("figB2", "Fig. B.2: SoftHebb regimes, 3 hidden layers", "temperature 1/t_invert", ("cifar10",),
               _regimes("4SoftHebbCnnCIFAR"), default_seeds=3, extra=("r1",), log_x=True),
    Experiment("figB3a", "Fig. B.3.A: initial radius, MNIST 2000-neuron MLP", "initial radius", ("mnist",), _radius,
               default_seeds=3, log_x=True),
    Experiment("figB3b", "Fig. B.3.B: convergence speed, Hard-WTA 1 hidden layer trained in hybrid mode "
               "(R1 features vs examples seen)", "rate schedule", ("cifar10",), _convergence, default_seeds=1,
               extra=("r1",), curve="r1_0"),
    Experiment("figB4", "Fig. B.4: first-layer neuron count, 3 hidden layers", "first-layer neurons", ("cifar10",), _neurons),
    Experiment("table1", "Table 1: SoftHebb vs backprop, CIFAR-10, 3 hidden layers", "network", ("cifar10",), _table1),
    Experiment("table2", "Table 2: STL-10 and ImageNet", "network", ("stl10", "imagenet"), _table2, default_seeds=1),
]}


def list_experiments() -> str:
    lines = []
    for e in EXPERIMENTS.values():
        n = sum(len(e.cells(d)) for d in e.datasets)
        names = ", ".join(e.datasets)
        lines.append(f"{e.name:8s} {e.title}\n         datasets: {names}; {n} cells × {e.default_seeds} seeds by default")
    return "\n".join(lines)


def reproduce(name: str, out: str | Path, datasets: list[str] | None = None, seeds: int | None = None,
              data_dir: str | None = None, overrides: dict | None = None, progress: bool = True,
              echo: Callable[[str], None] = print, summary_only: bool = False,
              methods: list[str] | None = None, jobs: int = 1) -> list[dict]:
    """Run (or resume) an experiment; write runs.csv, <name>.md and <name>.png; return the per-run rows.

    ``summary_only``: run nothing, tabulate the runs that have finished. ``methods``: only these cells'
    methods (e.g. leave out the costly "bp"). ``jobs``: runs at once, each in its own process.
    """
    if name not in EXPERIMENTS:
        raise RunError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} (softhebb reproduce --list)")
    if not isinstance(jobs, int) or jobs < 1:
        raise RunError(f"jobs must be an integer >= 1, got {jobs!r}")
    exp = EXPERIMENTS[name]
    datasets = datasets or [exp.datasets[0]]
    bad = [d for d in datasets if d not in exp.datasets]
    if bad:
        raise RunError(f"experiment {name} has no dataset {bad[0]!r}; it covers {', '.join(exp.datasets)}")
    if methods is not None:
        known = {c.method for d in datasets for c in exp.cells(d)}
        if not set(methods) <= known:
            raise RunError(f"experiment {name} has no method {sorted(set(methods) - known)[0]!r}; "
                           f"its methods are {', '.join(sorted(known))}")
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise RunError(f"seeds must be an integer >= 1, got {seeds!r}")
    cells = [c for d in datasets for c in exp.cells(d)]
    axes = {"seed", "dataset"} | {k for c in cells for k in c.config
                                  if len({repr(c2.config.get(k)) for c2 in cells}) > 1}
    clash = sorted(axes & set(overrides or {}))
    if clash:
        raise RunError(f"--option {clash[0]} would replace what experiment {name} itself varies "
                       f"({', '.join(sorted(axes))}); use --dataset, --seeds or --methods for those")
    root = Path(out) / name
    grid, pending = [], {}  # pending: run_dir -> (config, label); cells sharing a run run it once
    for dataset in datasets:
        for cell in exp.cells(dataset):
            if methods is not None and cell.method not in methods:
                continue
            for seed in range(seeds if seeds is not None else exp.default_seeds):
                try:
                    cfg = RunConfig(**{"dataset": dataset, "seed": seed, **cell.config, **(overrides or {})})
                except TypeError as e:  # an --option that is not a RunConfig field
                    raise RunError(f"{e}; run options are {', '.join(RunConfig.__dataclass_fields__)}") from None
                run_dir = root / run_name(cfg)
                grid.append((dataset, cell, seed, run_dir))
                if not summary_only and not (run_dir / "result.json").exists():
                    pending.setdefault(run_dir, (cfg, f"{name}: {dataset} {cell.method} x={cell.x} seed {seed}"))
    _run_all([(cfg, run_dir, label) for run_dir, (cfg, label) in pending.items()], data_dir, progress, echo, jobs)
    rows = []
    for dataset, cell, seed, run_dir in grid:
        if not (run_dir / "result.json").exists():
            continue  # summary_only: not run yet
        result = json.loads((run_dir / "result.json").read_text())
        rows.append({"experiment": name, "dataset": dataset, "method": cell.method, "x": cell.x, "seed": seed,
                     "preset": result["preset"], "test_acc": result["test_acc"], "paper": cell.paper,
                     "seconds": result["seconds"]["total"], "run_dir": str(run_dir),
                     **{k: result.get(k) for k in exp.extra}})
    if not rows:
        raise RunError(f"no finished runs of {name} under {root}")
    write_outputs(exp, root, rows)
    echo((root / f"{name}.md").read_text())
    return rows


def _run_all(pending: list[tuple[RunConfig, Path, str]], data_dir: str | None, progress: bool,
             echo: Callable[[str], None], jobs: int) -> None:
    if jobs == 1 or len(pending) <= 1:
        for cfg, run_dir, label in pending:
            echo(f"== {label} -> {run_dir}")
            _run_cell(cfg, run_dir, data_dir, progress=progress, echo=True)
        return
    if any(cfg.device.startswith("cuda:") for cfg, _, _ in pending):
        raise RunError("with --jobs, use device=cuda (or auto): the runs are spread over the visible GPUs, "
                       "which CUDA_VISIBLE_DEVICES chooses")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    procs = min(jobs, len(pending))
    threads, workers = max(1, torch.get_num_threads() // procs), max(0, (os.cpu_count() or 1) // procs - 1)
    echo(f"== {len(pending)} runs, {procs} at a time; each run's progress is in its metrics.jsonl")
    with ProcessPoolExecutor(procs, mp_context=ctx, initializer=_start_job, initargs=(ctx.Value("i", 0), gpus, threads)) \
            as pool:
        # image-folder decoders: each run gets its share of the cores (workers never changes results)
        futures = {pool.submit(_job, cfg if cfg.workers is not None else dataclasses.replace(cfg, workers=workers),
                               run_dir, data_dir): f"{label} -> {run_dir}" for cfg, run_dir, label in pending}
        for f in as_completed(futures):
            if f.exception() is not None:
                echo(f"== {futures[f]} failed: {f.exception()}; waiting for the runs already going, starting no more")
                pool.shutdown(cancel_futures=True)
                raise f.exception()
            echo(f"== {futures[f]}: {f.result():.2f} %")


def _start_job(slot: Any, gpus: list[str], threads: int) -> None:
    """Process initializer: one GPU per process, round robin, before CUDA starts; its share of the CPU threads."""
    with slot.get_lock():
        i, slot.value = slot.value, slot.value + 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    torch.set_num_threads(threads)


def _job(cfg: RunConfig, run_dir: Path, data_dir: str | None) -> float:
    return _run_cell(cfg, run_dir, data_dir, progress=False, echo=False)["test_acc"]


CHECKPOINT_EVERY = 1000  # Hebbian batches (about 2 minutes of the costliest CIFAR-10 layer on 2 cores); and every epoch


def _run_cell(cfg: RunConfig, run_dir: Path, data_dir: str | None, progress: bool, echo: bool) -> dict:
    """One run of the grid, continued from its checkpoint when an earlier reproduction was interrupted."""
    resume = (run_dir / CHECKPOINT).is_file()
    return run(cfg, run_dir, data_dir, overwrite=not resume, resume=resume, progress=progress, echo=echo,
               checkpoint_every=CHECKPOINT_EVERY)
