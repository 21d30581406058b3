"""Learning dynamics of the Hebbian phase, recorded every few batches (reference §1.9, Fig. B.3).

``hebbian_phase`` logs once per epoch; here its ``on_batch`` hook records the monitoring
quantities of each training block every ``every`` batches (the training itself is unchanged).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..network import SoftHebbNet, build_model, resolve_preset
from ..hebbian import MODES, hebbian_phase

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class Dynamics:
    """``rows``: one dict of scalars per record (see :func:`record_dynamics`); ``radius``, ``lr`` and
    ``wins``: per block, a (records, neurons) tensor of ‖w_k‖, η_k and the fraction of competitions
    neuron k won since the previous record."""

    rows: list[dict] = field(default_factory=list)
    radius: dict[int, torch.Tensor] = field(default_factory=dict)
    lr: dict[int, torch.Tensor] = field(default_factory=dict)
    wins: dict[int, torch.Tensor] = field(default_factory=dict)

    def block_rows(self, block: int) -> list[dict]:
        return [r for r in self.rows if r["block"] == block]


def _snapshot(layer, block: int, examples: int, epoch: int) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    r = layer.radius().detach().double().cpu()
    lr = layer.learning_rate().detach().double().cpu()
    wins = layer.win_counts.detach().cpu().clone()  # .cpu() aliases on CPU, and reset_stats() zeroes in place
    n_won = int(wins.sum())
    share = layer.winner_share()
    q = torch.quantile(r, torch.tensor(QUANTILES, dtype=r.dtype))
    row = {"block": block, "examples": examples, "updates": int(layer.num_updates), "epoch": epoch,
           "convergence": float((r - 1).abs().mean()), "r1": int(((r - 1).abs() < layer.r1_tolerance).sum()),
           "neurons": int(r.numel()), "radius_mean": float(r.mean()),
           **{f"radius_q{int(p * 100):02d}": float(v) for p, v in zip(QUANTILES, q)},
           "lr_mean": float(lr.mean()), "lr_min": float(lr.min()), "lr_max": float(lr.max()),
           "winner_share": share, "anti_hebbian_share": 1 - share,
           "winners": int((wins > 0).sum()) if n_won else 0}
    layer.reset_stats()
    frac = wins.double() / n_won if n_won else torch.zeros(wins.shape, dtype=torch.float64)
    return row, r, lr, frac


def record_dynamics(
    model: SoftHebbNet,
    images: torch.Tensor,
    mode: str = "successive",
    epochs: int = 1,
    batch_size: int = 10,
    seed: int = 0,
    every: int = 10,
    progress: bool = False,
) -> Dynamics:
    """Train ``model``'s Hebbian blocks on ``images`` (uint8) exactly as ``hebbian_phase`` does,
    recording each training block at the start, every ``every`` batches and at the end.

    Row fields: ``block``, ``examples`` (images this block has trained on), ``updates``, ``epoch``,
    ``convergence`` = mean_k |‖w_k‖ − 1|, ``r1`` (neurons within the R1 tolerance of the unit
    sphere), radius mean and quantiles, ``lr_*`` (per-neuron η_k), ``winner_share`` (mean ỹ of
    the winner since the previous record) and ``anti_hebbian_share`` = 1 − winner_share,
    ``winners`` (distinct neurons that won at least once since the previous record).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if every <= 0:
        raise ValueError(f"every must be > 0, got {every}")
    hebb = model.hebbian_block_indices()
    stages = [[i] for i in hebb] if mode == "successive" else [hebb]  # as hebbian_phase numbers them
    n = images.shape[0]
    n_batches = -(-n // batch_size)
    rows: list[list[dict]] = [[] for _ in stages]  # per stage, so rows come out stage after stage
    snaps: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {i: [] for i in hebb}

    def record(s: int, seen: int, epoch: int) -> None:
        for i in stages[s]:
            row, r, lr, frac = _snapshot(model.blocks[i].layer, i, seen, epoch)
            rows[s].append(row)
            snaps[i].append((r, lr, frac))

    # A block is untouched before its stage, so its starting state can be read now.
    for s, stage in enumerate(stages):
        for i in stage:
            model.blocks[i].layer.schedule(epochs * n / batch_size)
        record(s, 0, 0)

    def on_batch(pos: dict) -> None:
        if (pos["epoch"] * n_batches + pos["batch"]) % every == 0:
            record(pos["stage"], pos["epoch"] * n + min(pos["batch"] * batch_size, n), pos["epoch"] + 1)

    hebbian_phase(model, images, mode, epochs, batch_size, seed, progress=progress, on_batch=on_batch)
    # Blocks stop changing after their stage, so the final state of each can be read at the end.
    for s in range(len(stages)):
        if epochs and (epochs * n_batches) % every:
            record(s, epochs * n, epochs)
    rec = Dynamics(rows=[row for stage_rows in rows for row in stage_rows])
    for i, s in snaps.items():
        rec.radius[i], rec.lr[i], rec.wins[i] = (torch.stack([t[j] for t in s]) for j in range(3))
    return rec


def with_schedule(preset: dict, schedule: str, blocks: int | None = None) -> dict:
    """A copy of ``preset`` (first ``blocks`` blocks) whose Hebbian blocks all use ``schedule``."""
    p = resolve_preset(copy.deepcopy(preset))
    p["blocks"] = p["blocks"][:blocks]
    for b in p["blocks"]:
        if b["rule"] != "bp":
            b["lr_schedule"] = schedule
    return p


def compare_schedules(
    preset: dict,
    in_shape: tuple[int, int, int],
    num_classes: int,
    images: torch.Tensor,
    blocks: int | None = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **kwargs,
) -> dict[str, Dynamics]:
    """Fig. B.3.B: the same network (first ``blocks`` blocks, same seed and data order) trained with
    the radius-dependent rate η_k = lr₀·|‖w_k‖−1|^power and with lr₀ decaying linearly to 0."""
    out = {}
    for schedule in ("radius", "linear"):
        model = build_model(with_schedule(preset, schedule, blocks), in_shape, num_classes, seed=seed).to(device)
        out[schedule] = record_dynamics(model, images, seed=seed, **kwargs)
    return out
