"""The two training phases: the label-free Hebbian phase, then the linear probe on frozen features.

Images stay uint8 until a batch is taken; ``as_input`` turns a batch into [0, 1] floats, the
only preprocessing the paper uses (the first block's BatchNorm standardises).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .network import SoftHebbNet

MODES = ("successive", "simultaneous")
Logger = Callable[[dict], None]


def as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 in [0, 1]."""
    return images.float().div_(255.0)


def _device(model: SoftHebbNet) -> torch.device:
    """Where the model lives; images may stay (uint8) elsewhere and move one batch at a time."""
    return model.classifier.weight.device


def _batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, order.numel(), batch_size):
        yield order[start:start + batch_size]


def _progress(total: int, desc: str, enabled: bool, unit: str = "img") -> tqdm:
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=0.5 if tty else 30, unit=unit,
                unit_scale=unit == "img", leave=tty, dynamic_ncols=True)


def hebbian_phase(
    model: SoftHebbNet,
    images: torch.Tensor,
    mode: str = "successive",
    epochs: int = 1,
    batch_size: int = 10,
    seed: int = 0,
    log: Logger | None = None,
    progress: bool = True,
) -> None:
    """Train the Hebbian blocks without labels.

    successive (the paper's greedy schedule): block ℓ trains alone for ``epochs`` while the
    blocks before it are frozen in eval mode (their BatchNorms use running statistics); only
    the prefix up to block ℓ is computed. Block ℓ's own BatchNorm uses batch statistics and
    updates its running statistics during its epoch(s).
    simultaneous: every Hebbian block learns in the same pass; within a batch each layer
    uses its pre-update weights (like the original's "consecutive" mode and demo.py).

    The data order is one seeded permutation per epoch, identical for every block.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    hebb = model.hebbian_block_indices()
    if not hebb or epochs == 0:
        return
    stages = [[i] for i in hebb] if mode == "successive" else [hebb]
    n = images.shape[0]
    device = _device(model)
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(n, generator=gen).to(images.device) for _ in range(epochs)]
    for stage in stages:
        depth = max(stage) + 1
        model.eval()
        for i in stage:
            model.blocks[i].train()
            model.blocks[i].layer.total_updates = epochs * n / batch_size
            model.blocks[i].layer.reset_stats()
            model.blocks[i].layer.zero_pending()  # a stray forward before training must not leak into the first step
        start = time.perf_counter()
        name = "+".join(str(i) for i in stage)
        for epoch in range(epochs):
            with _progress(n, f"hebbian block {name} epoch {epoch + 1}/{epochs}", progress) as bar, torch.no_grad():
                for idx in _batches(orders[epoch], batch_size):
                    h = as_input(images[idx].to(device, non_blocking=True))
                    for i in range(depth - 1):
                        h = model.blocks[i](h)
                    last = model.blocks[depth - 1]
                    last.layer(last.pre(h))  # the deepest trained block's activation and pool are not needed
                    for i in stage:
                        model.blocks[i].layer.step()
                    bar.update(idx.numel())
            if log:
                for i in stage:
                    log({"phase": "hebbian", "block": i, "epoch": epoch + 1, "seconds": round(time.perf_counter() - start, 3),
                         **model.blocks[i].layer.stats()})
        model.eval()


@torch.no_grad()
def extract_features(model: SoftHebbNet, images: torch.Tensor, batch_size: int = 250, progress: bool = False,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Flattened outputs of all hidden blocks (eval mode), computed once for the whole probe."""
    model.eval()
    device = _device(model)
    out = torch.empty(images.shape[0], model.num_features, dtype=dtype, device=device)
    with _progress(images.shape[0], "features", progress) as bar:
        for start in range(0, images.shape[0], batch_size):
            x = as_input(images[start:start + batch_size].to(device, non_blocking=True))
            out[start:start + x.shape[0]] = model.features(x).flatten(1)
            bar.update(x.shape[0])
    return out


def step_lr_milestones(epochs: int) -> list[int]:
    """Epochs after which the probe's learning rate halves (the original CustomStepLR)."""
    if epochs < 20:
        return []
    fractions = (0.5, 0.75) if epochs < 50 else (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9)
    return [int(f * epochs) for f in fractions]


@torch.no_grad()
def evaluate(model: SoftHebbNet, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy (%) and mean cross-entropy of the classifier head on precomputed features."""
    model.eval()
    loss = torch.zeros((), device=features.device)
    correct = torch.zeros((), dtype=torch.long, device=features.device)
    for start in range(0, features.shape[0], batch_size):
        logits = model.head(features[start:start + batch_size].float())
        y = labels[start:start + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = features.shape[0]
    return {"acc": 100.0 * int(correct) / n, "loss": float(loss) / n}


def train_probe(
    model: SoftHebbNet,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    eval_every: int = 10,
    log: Logger | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train dropout + linear head with Adam and the step-halving schedule; report the final epoch.

    The reported number is the test accuracy after the last epoch, not the best epoch, as in the paper.
    """
    head = model.classifier
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=step_lr_milestones(epochs), gamma=0.5)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    n = train_features.shape[0]
    result: dict[str, float] = {}
    with _progress(epochs, "probe", progress, unit="epoch") as bar:
        for epoch in range(1, epochs + 1):
            model.dropout.train()
            head.train()
            loss_sum = torch.zeros((), device=train_features.device)
            correct = torch.zeros((), dtype=torch.long, device=train_features.device)
            cur_lr = opt.param_groups[0]["lr"]
            for idx in _batches(torch.randperm(n, generator=gen).to(train_features.device), batch_size):
                y = train_labels[idx]
                logits = model.head(train_features[idx].float())
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * y.numel()
                correct += (logits.detach().argmax(1) == y).sum()
            sched.step()
            row = {"phase": "probe", "epoch": epoch, "lr": cur_lr, "train_loss": float(loss_sum) / n,
                   "train_acc": 100.0 * int(correct) / n}
            if epoch == 1 or epoch % eval_every == 0 or epoch == epochs:
                test = evaluate(model, test_features, test_labels)
                row |= {"test_loss": test["loss"], "test_acc": test["acc"]}
                result = {"test_acc": test["acc"], "test_loss": test["loss"], "train_acc": row["train_acc"]}
            if log:
                log(row)
            bar.set_postfix(train_acc=f"{row['train_acc']:.2f}", test_acc=f"{result.get('test_acc', float('nan')):.2f}")
            bar.update(1)
    model.eval()
    return result
