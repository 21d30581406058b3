"""Figures. matplotlib is imported lazily (optional extra ``analysis``) and only through its
object-oriented API, so no global backend is switched: figures render with Agg into PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .dynamics import QUANTILES, Dynamics


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'softhebb[analysis]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def _image(ax, img: torch.Tensor, title: str | None = None) -> None:
    img = img.detach().float().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _positive(a: np.ndarray) -> np.ndarray:
    """NaN where ≤ 0 so log axes skip the end of a linear decay instead of failing."""
    return np.where(a > 0, a, np.nan)


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_mosaics(panels: list[tuple[str, torch.Tensor]], path: Path, title: str | None = None) -> Path:
    """One image panel per (title, (C, H, W) mosaic), side by side."""
    fig = _figure(4.0 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, img) in zip(axes, panels):
        _image(ax, img, name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_dynamics(dyn: Dynamics, path: Path, title: str = "") -> Path:
    """Per training block: radius distribution, convergence and R1, per-neuron rates, winner vs
    anti-Hebbian share — all against examples seen."""
    blocks = sorted(dyn.radius)
    fig = _figure(16, 3.2 * len(blocks))
    axes = fig.subplots(len(blocks), 4, squeeze=False)
    for row, b in zip(axes, blocks):
        rs = dyn.block_rows(b)
        x = [r["examples"] for r in rs]
        ax = row[0]
        q = {p: [r[f"radius_q{int(p * 100):02d}"] for r in rs] for p in QUANTILES}
        ax.fill_between(x, q[0.05], q[0.95], alpha=0.2, label="5–95 %")
        ax.fill_between(x, q[0.25], q[0.75], alpha=0.4, label="25–75 %")
        ax.plot(x, q[0.5], label="median")
        ax.axhline(1, color="k", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_ylabel(f"block {b}\nradius ‖w_k‖")
        ax.legend(fontsize=7)
        ax = row[1]
        ax.plot(x, [r["convergence"] for r in rs], color="C0")
        ax.set_ylabel("convergence mean|‖w‖−1|", color="C0")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        ax2.plot(x, [r["r1"] / r["neurons"] for r in rs], color="C3", ls="--")
        ax2.set_ylabel("R1 fraction", color="C3")
        ax2.set_ylim(-0.02, 1.02)
        ax = row[2]
        lr = _positive(dyn.lr[b].numpy())
        ax.fill_between(x, lr.min(1), lr.max(1), alpha=0.2, label="min–max")
        ax.plot(x, lr.mean(1), label="mean")
        ax.set_yscale("log")
        ax.set_ylabel("learning rate η_k")
        ax.legend(fontsize=7)
        ax = row[3]
        ax.plot(x, [r["winner_share"] for r in rs], label="winner share (mean ỹ of the winner)")
        ax.plot(x, [r["anti_hebbian_share"] for r in rs], label="anti-Hebbian share")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("examples seen")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_schedules(dyns: dict[str, Dynamics], path: Path, title: str = "") -> Path:
    """Fig. B.3.B: R1 fraction, convergence and mean rate vs examples for each lr schedule."""
    blocks = sorted(next(iter(dyns.values())).radius)
    fig = _figure(13, 3.2 * len(blocks))
    axes = fig.subplots(len(blocks), 3, squeeze=False)
    for row, b in zip(axes, blocks):
        for name, dyn in dyns.items():
            rs = dyn.block_rows(b)
            x = [r["examples"] for r in rs]
            row[0].plot(x, [r["r1"] / r["neurons"] for r in rs], label=name)
            row[1].plot(x, [r["convergence"] for r in rs], label=name)
            row[2].plot(x, _positive(np.array([r["lr_mean"] for r in rs])), label=name)
        row[0].set_ylabel(f"block {b}\nR1 fraction")
        row[0].set_ylim(-0.02, 1.02)
        row[1].set_ylabel("convergence")
        row[1].set_yscale("log")
        row[2].set_ylabel("mean η_k")
        row[2].set_yscale("log")
        row[0].legend(title="lr schedule", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("examples seen")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_embeddings(embs: dict[tuple[int, str], torch.Tensor], labels: torch.Tensor, classes: tuple[str, ...],
                    path: Path, title: str = "", scores: dict[int, float] | None = None) -> Path:
    """Rows: blocks (``"input"`` = -1), columns: methods; points coloured by class."""
    depths = sorted({d for d, _ in embs})
    methods = [m for m in ("pca", "tsne") if any(k[1] == m for k in embs)]
    fig = _figure(4.2 * len(methods) + 1.6, 4.0 * len(depths))
    axes = fig.subplots(len(depths), len(methods), squeeze=False)
    colors = _colors(len(classes))
    y = labels.numpy()
    for row, d in zip(axes, depths):
        for ax, m in zip(row, methods):
            ax.set_xticks([])
            ax.set_yticks([])
            if (d, m) not in embs:
                ax.set_axis_off()
                continue
            e = embs[d, m].numpy()
            for c, name in enumerate(classes):
                sel = y == c
                ax.scatter(e[sel, 0], e[sel, 1], s=3, color=colors[c], label=name, rasterized=True)
            name = "input" if d < 0 else f"block {d}"
            score = f" (5-NN {scores[d]:.1f} %)" if scores and d in scores else ""
            ax.set_title(f"{name} — {'PCA' if m == 'pca' else 't-SNE'}{score}", fontsize=9)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, markerscale=3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_top_patches(patches: torch.Tensor, neurons: list[int], path: Path, title: str = "") -> Path:
    """Rows: neurons, columns: their top-k input patches (rank 1 left)."""
    n, k = patches.shape[:2]
    fig = _figure(1.1 * k + 0.8, 1.15 * n + 0.5)
    axes = fig.subplots(n, k, squeeze=False)
    for r in range(n):
        for c in range(k):
            _image(axes[r][c], patches[r, c])
        axes[r][0].set_ylabel(f"#{neurons[r]}", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_bars(rows: list[dict], keys: list[str], group: str, path: Path, title: str = "", ylabel: str = "") -> Path:
    """Grouped bars: one group per distinct ``rows[group]``, one bar per key."""
    fig = _figure(1.8 + 1.2 * len(rows), 3.6)
    ax = fig.subplots()
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        ax.bar([i + j * width for i in range(len(rows))], [r[key] for r in rows], width, label=key)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [str(r[group]) for r in rows])
    ax.set_xlabel(group)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_robustness(rows: list[dict], path: Path, title: str = "") -> Path:
    """Panels: Gaussian noise, L∞ attacks, L2 attacks; one colour per run, FGSM dashed, PGD solid."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    panels = [("gaussian", "Gaussian noise σ", ("gaussian",)), ("linf", "L∞ ε", ("fgsm", "pgd")), ("l2", "L2 ε", ("fgm", "pgd"))]
    panels = [p for p in panels if any(r["attack"] in p[2] and (p[0] == "gaussian" or r["norm"] == p[0]) for r in rows)]
    fig = _figure(4.4 * max(1, len(panels)), 3.6)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    colors = _colors(len(runs))
    styles = {"gaussian": "-", "fgsm": "--", "fgm": "--", "pgd": "-"}
    for ax, (key, xlabel, attacks) in zip(axes, panels):
        for run, color in zip(runs, colors):
            for a in attacks:
                pts = [r for r in rows if r["run"] == run and r["attack"] == a and (a == "gaussian" or r["norm"] == key)]
                if pts:
                    ax.plot([p["eps"] for p in pts], [p["acc"] for p in pts], styles[a], marker="o", ms=3, color=color,
                            label=f"{run} {a.upper() if a != 'gaussian' else ''}".strip())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy %")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
