"""The linear probe: dropout + linear classifier trained with Adam on frozen features, and its evaluation.

Works on any model with ``head(features)``, ``classifier`` and ``dropout`` (``SoftHebbNet``), on cached feature
tensors or on ``StreamedFeatures``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import torch.nn.functional as F

from .batching import Checkpoint, Logger, batch_seed, index_batches, progress_bar
from .features import StreamedFeatures
from .modules import Dropout
from .network import SoftHebbNet

if TYPE_CHECKING:
    from .distributed import Parallel


def step_lr_milestones(epochs: int) -> list[int]:
    """Epochs after which the probe's learning rate halves (the original CustomStepLR)."""
    if epochs < 20:
        return []
    fractions = (0.5, 0.75) if epochs < 50 else (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9)
    return [int(f * epochs) for f in fractions]


@torch.no_grad()
def evaluate(model: SoftHebbNet, features: torch.Tensor | StreamedFeatures, labels: torch.Tensor, batch_size: int = 1000,
             parallel: Parallel | None = None) -> dict[str, float]:
    """Accuracy (%) and mean cross-entropy of the classifier head on precomputed features
    (with ``parallel``: this rank's share of them, summed over ranks)."""
    model.eval()
    loss = torch.zeros((), device=features.device)
    correct = torch.zeros((), dtype=torch.long, device=features.device)
    n = features.shape[0]
    if isinstance(features, StreamedFeatures):
        batch_size = min(batch_size, features.batch_size)  # a forward through the network, not a gather
        rows = features.iterate([torch.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)])
    else:
        rows = (features[s:s + batch_size] for s in range(0, n, batch_size))
    for start, x in zip(range(0, n, batch_size), rows):
        logits = model.head(x.float())
        y = labels[start:start + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    count = torch.tensor(features.shape[0], device=features.device)
    if parallel is not None:
        parallel.all_reduce_(loss, correct, count)
    n = int(count)
    return {"acc": 100.0 * int(correct) / n, "loss": float(loss) / n}


def train_probe(
    model: SoftHebbNet,
    train_features: torch.Tensor | StreamedFeatures,
    train_labels: torch.Tensor,
    test_features: torch.Tensor | StreamedFeatures,
    test_labels: torch.Tensor,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    eval_every: int = 10,
    log: Logger | None = None,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    start: dict | None = None,
    parallel: Parallel | None = None,
) -> dict[str, float]:
    """Train dropout + linear head with Adam and the step-halving schedule; report the final epoch.

    The reported number is the test accuracy after the last epoch, not the best epoch, as in the paper.
    ``checkpoint(state)`` is called after every epoch with what it takes to continue (epoch, Adam,
    schedule, data-order generator, RNG state, result so far); ``start`` is such a state, for a
    model whose weights the caller restored. With ``parallel``, the features and labels are this
    rank's rows (``Parallel.rows``) and the head's gradients are summed over ranks (see softhebb.distributed).
    ``StreamedFeatures`` are recomputed from (augmented) images every epoch instead of gathered.
    ``train_features`` of shape (views, n, features) (``feature_views``): each epoch trains on one view of
    every row, drawn by a generator of its own, so the data order is that of the same probe without views.
    """
    for f, y, name in ((train_features, train_labels, "train"), (test_features, test_labels, "test")):
        if f.shape[-2] != y.shape[0]:
            raise ValueError(f"{name}: {f.shape[-2]} feature rows but {y.shape[0]} labels")
    views = train_features.shape[0] if isinstance(train_features, torch.Tensor) and train_features.dim() == 3 else 0
    if views and parallel is not None:
        raise ValueError("feature views are not sharded over ranks: train a probe with views in one process")
    head = model.classifier
    torch.manual_seed(seed + (parallel.rank << 20 if parallel is not None else 0))  # dropout masks, different per rank
    device = train_features.device
    n = train_features.shape[-2] if parallel is None else parallel.total(train_features.shape[0], device)
    opt, sched, gen, first, result = adam_epochs(head.parameters(), lr, epochs, seed, device, start)
    with progress_bar(epochs, "probe", progress, unit="epoch") as bar, _overwriting(model.dropout):
        bar.update(first - 1)
        for epoch in range(first, epochs + 1):
            model.dropout.train()
            head.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            cur_lr = opt.param_groups[0]["lr"]
            order = torch.randperm(n, generator=gen)
            batches = (parallel.probe_batches(order, batch_size, device) if parallel is not None
                       else [(idx, idx.numel()) for idx in index_batches(order.to(device), batch_size)])
            rows = _epoch_rows(train_features, order, batches, batch_size, seed, epoch)
            for (idx, global_size), x in zip(batches, rows):
                y = train_labels[idx]
                logits = model.head(x.float())
                batch_loss = F.cross_entropy(logits, y, reduction="sum")
                opt.zero_grad(set_to_none=True)
                (batch_loss / global_size).backward()  # summed over ranks: the mean over the global batch
                if parallel is not None:
                    parallel.sum_grads(head)
                opt.step()
                loss_sum += batch_loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
            sched.step()
            if parallel is not None:
                parallel.all_reduce_(loss_sum, correct)
            row = {"phase": "probe", "epoch": epoch, "lr": cur_lr, "train_loss": float(loss_sum) / n,
                   "train_acc": 100.0 * int(correct) / n}
            if epoch == 1 or epoch % eval_every == 0 or epoch == epochs:
                test = evaluate(model, test_features, test_labels, parallel=parallel)
                row |= {"test_loss": test["loss"], "test_acc": test["acc"]}
                result = {"test_acc": test["acc"], "test_loss": test["loss"], "train_acc": row["train_acc"]}
            if log:
                log(row)
            if checkpoint:
                checkpoint(epoch_state(epoch, opt, sched, gen, device, result))
            bar.set_postfix(train_acc=f"{row['train_acc']:.2f}", test_acc=f"{result.get('test_acc', float('nan')):.2f}")
            bar.update(1)
    model.eval()
    return result


def _epoch_rows(features: torch.Tensor | StreamedFeatures, order: torch.Tensor, batches: list[tuple[torch.Tensor, int]],
                batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """The feature rows of one probe epoch's batches: gathered, drawn from one of the views, or computed."""
    if isinstance(features, StreamedFeatures):  # decoded from CPU indices, labels gathered on the device
        return features.iterate(list(index_batches(order, batch_size)), epoch)
    if features.dim() == 3:  # views: row i of view v is row v * n + i of the flattened views
        views, n = features.shape[:2]
        pick = torch.randint(views, (n,), generator=torch.Generator().manual_seed(batch_seed(seed, epoch)))
        flat, offset = features.flatten(0, 1), (pick * n).to(features.device)
        return (flat.index_select(0, idx + offset.index_select(0, idx)) for idx, _ in batches)
    return (features.index_select(0, idx) for idx, _ in batches)  # ~7x faster than [idx] on CPU


@contextlib.contextmanager
def _overwriting(dropout: Dropout) -> Iterator[None]:
    """The probe's rows are new tensors (gathered or computed per batch): its dropout may overwrite them."""
    before, dropout.inplace = dropout.inplace, True
    try:
        yield
    finally:
        dropout.inplace = before


def adam_epochs(params: Iterable[torch.nn.Parameter], lr: float, epochs: int, seed: int, device: torch.device,
                start: dict | None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.Generator,
                                             int, dict[str, float]]:
    """What a supervised loop (probe, hybrid, backprop) steps with: Adam (fused: one kernel per step, these loops
    are overhead-bound), the paper's step-halving schedule and a data-order generator seeded with ``seed``;
    continued from ``start`` (an ``epoch_state``) when given. Returns them with the first epoch to run and the
    result so far. Seed the global RNG (dropout masks) before calling: ``start`` restores it."""
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=step_lr_milestones(epochs), gamma=0.5)
    gen = torch.Generator().manual_seed(seed)
    first, result = restore_epoch_state(start, opt, sched, gen, device) if start is not None else (1, {})
    return opt, sched, gen, first, result


def epoch_state(epoch: int, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                gen: torch.Generator, device: torch.device, result: dict[str, float]) -> dict[str, Any]:
    """What a checkpoint after ``epoch`` of a supervised loop (probe, hybrid, backprop) needs to continue it exactly."""
    return {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "rng": _rng_state(device), "result": result}


def restore_epoch_state(start: dict[str, Any], opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                        gen: torch.Generator, device: torch.device) -> tuple[int, dict[str, float]]:
    """Load an ``epoch_state``; returns (the epoch to continue with, the result so far).

    Without "rng" (a probe resumed on another number of ranks) the dropout masks are fresh from here on.
    """
    opt.load_state_dict(start["optimizer"])
    sched.load_state_dict(start["scheduler"])
    sched.milestones = Counter(sched.milestones)  # a plain dict after the JSON round trip
    gen.set_state(start["generator"])
    if "rng" in start:
        _set_rng_state(start["rng"], device)
    return start["epoch"] + 1, dict(start["result"])


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)

