"""The tables and figures of a finished ``softhebb reproduce`` experiment: ``runs.csv``, ``<name>.md``, ``<name>.png``.

Everything here reads finished runs' rows; nothing trains, so ``--summary-only`` regenerates them at no cost.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .rundir import atomic_write

if TYPE_CHECKING:
    from .reproduce import Experiment


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± population std over seeds per (dataset, method, x), with the paper's number and the difference."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["x"]), []).append(r)
    out = []
    for (dataset, method, x), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        mean = statistics.fmean(accs)
        paper = rs[0]["paper"]
        out.append({"dataset": dataset, "method": method, "x": x, "n": len(accs), "mean": mean,
                    "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0, "paper": paper,
                    "diff": None if paper is None else mean - paper,
                    **{k: statistics.fmean(r[k] for r in rs) for k in rs[0] if k in ("r1",) and rs[0][k] is not None}})
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def write_outputs(exp: Experiment, root: Path, rows: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else ["experiment"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write(root / "runs.csv", buf.getvalue())
    summary = summarise(rows)
    extra = [k for k in exp.extra if summary and k in summary[0]]
    lines = [f"## {exp.title}", "", f"| dataset | method | {exp.x_label} | seeds | ours (mean ± std) | paper | ours − paper |"
             + "".join(f" {k} |" for k in extra),
             "|---|---|---|---|---|---|---|" + "---|" * len(extra)]
    for s in summary:
        x = _fmt(s["x"], ".4g") if isinstance(s["x"], float) else s["x"]
        lines.append(f"| {s['dataset']} | {s['method']} | {x} | {s['n']} | {s['mean']:.2f} ± {s['std']:.2f} | "
                     f"{_fmt(s['paper'])} | {_fmt(s['diff'], '+.2f')} |" + "".join(f" {_fmt(s[k], '.1f')} |" for k in extra))
    atomic_write(root / f"{exp.name}.md", "\n".join(lines) + "\n")
    _plot(exp, root, summary)
    if exp.curve:
        plot_curves(exp, root, rows)


def _pyplot(root: Path, name: str) -> Any:
    """matplotlib.pyplot, or None (and a note where the plot would be) when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        (root / f"{name}.png.missing").write_text("pip install matplotlib (or softhebb[analysis]) to get the plot\n")
        return None
    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


def plot_curves(exp: Experiment, root: Path, rows: list[dict]) -> None:
    """Every run's per-batch ``exp.curve`` against examples seen, as a moving average over max(50, batches/30)
    batches (the paper's smoothing for Fig. B.3.B)."""
    plt = _pyplot(root, f"{exp.name}-curves")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}  # one per method
    for r in rows:
        lines = (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        points = [p for p in map(json.loads, lines) if exp.curve in p]
        window = min(len(points), max(50, len(points) // 30))
        if not window:
            continue
        values = torch.tensor([float(p[exp.curve]) for p in points])
        smooth = values.unfold(0, window, 1).mean(1)
        ax.plot([p["seen"] for p in points][window - 1:], smooth.tolist(), color=colors[r["method"]],
                linestyle=("-", "--", ":", "-.")[r["seed"] % 4], label=f"{r['method']} (seed {r['seed']})")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel(f"{exp.curve} (moving average over max(50, batches/30) batches)", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(textwrap.fill(exp.title, 70), fontsize=8)
    fig.tight_layout()
    _save(plt, fig, root / f"{exp.name}-curves.png")


def _plot(exp: Experiment, root: Path, summary: list[dict]) -> None:
    plt = _pyplot(root, exp.name)
    if plt is None:
        return
    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        labels = list(dict.fromkeys(s["x"] for s in summary if s["dataset"] == dataset))  # for x that are names
        for method in dict.fromkeys(s["method"] for s in summary if s["dataset"] == dataset):
            pts = [s for s in summary if s["dataset"] == dataset and s["method"] == method]
            numeric = all(isinstance(p["x"], (int, float)) for p in pts)
            xs = [p["x"] if numeric else labels.index(p["x"]) for p in pts]
            line = ax.errorbar(xs, [p["mean"] for p in pts], yerr=[p["std"] for p in pts], marker="o", capsize=3,
                               label=f"{method} (ours)")
            paper = [(x, p["paper"]) for x, p in zip(xs, pts) if p["paper"] is not None]
            if paper:
                ax.plot(*zip(*paper), linestyle="--", marker="x", color=line[0].get_color(), alpha=0.6,
                        label=f"{method} (paper)")
            if not numeric:
                ax.set_xticks(range(len(labels)), [str(x) for x in labels])
        if exp.log_x:
            ax.set_xscale("log")
        ints = sorted({s["x"] for s in summary if s["dataset"] == dataset})
        if all(isinstance(x, int) for x in ints):  # depths, widths, neuron counts: no 1.25 layers
            ax.set_xticks(ints, [str(x) for x in ints])
        ax.set_title(dataset)
        ax.set_xlabel(exp.x_label)
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
    fig.suptitle(exp.title, fontsize=9)
    fig.tight_layout()
    _save(plt, fig, root / f"{exp.name}.png")
