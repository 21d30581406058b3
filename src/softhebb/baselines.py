"""The paper's baselines that are not Hebbian training: backprop and random features.

* **Backprop** (`*Cnn*` presets, every block ``rule: bp``): the same blocks and head trained with
  cross-entropy, Adam (lr 1e-3) and the probe's step-halving schedule (reference §5.3).
  ``end-to-end`` (default, "BP e2e" of the paper) trains all layers together. ``layerwise`` is
  what the README's commands actually ran (successive mode): block ℓ alone, through the
  still-random later blocks and a frozen random classifier, then the next block, then the
  classifier — offered because the paper's BP protocol is ambiguous.
* **Random** (a SoftHebb preset, no Hebbian epoch): only the probe is trained. ``identity`` BN
  (the paper's, default) never puts the hidden BatchNorms in train mode, so they keep mean 0 /
  variance 1 and the random network sees raw [0, 1] pixels; ``data`` BN instead sets their
  statistics from one pass over the training images, a fairer random baseline.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .network import SoftHebbNet
from .batching import Augment, Images, Logger, batch_seed, index_batches, inputs_in_order, iterate_batches, progress_bar
from .features import StreamedFeatures, extract_features
from .probe import adam_epochs, epoch_state, evaluate

BP_MODES = ("end-to-end", "layerwise")
RANDOM_BN = ("identity", "data")


def _bp_epochs(model: SoftHebbNet, trained: list[nn.Module], images: Images, labels: torch.Tensor, epochs: int,
               batch_size: int, lr: float, seed: int, augment: Augment, name: str, log: Logger | None,
               progress: bool, test: tuple[Images, torch.Tensor] | None, eval_every: int, workers: int,
               checkpoint: Callable[[dict], None] | None, start: dict | None) -> dict[str, float]:
    """Adam + step-halving epochs of cross-entropy on the parameters of ``trained`` (the rest in eval mode).

    ``checkpoint(state)`` after every epoch; ``start``: such a state to continue from (weights restored by the caller).
    """
    device, n = model.device, len(images)
    opt, sched, gen, first, result = adam_epochs([p for m in trained for p in m.parameters()], lr, epochs, seed, device,
                                                 start)
    with progress_bar(epochs, name, progress, unit="epoch") as bar:
        bar.update(first - 1)
        for epoch in range(first, epochs + 1):
            model.eval()  # blocks not being trained keep their BatchNorm statistics (and the head its dropout off)
            for m in trained:
                m.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            cur_lr = opt.param_groups[0]["lr"]
            batches = list(index_batches(torch.randperm(n, generator=gen), batch_size))
            seeds = [batch_seed(seed, epoch, b) for b in range(len(batches))]
            for idx, x in zip(batches, iterate_batches(images, batches, device, augment, seeds, workers)):
                y = labels[idx].to(device, non_blocking=True)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * y.numel()
                correct += (logits.detach().argmax(1) == y).sum()
            sched.step()
            row = {"phase": name, "epoch": epoch, "lr": cur_lr, "train_loss": float(loss_sum) / n,
                   "train_acc": 100.0 * int(correct) / n}
            if test is not None and (epoch == 1 or epoch % eval_every == 0 or epoch == epochs):
                feats = (extract_features(model, test[0]) if isinstance(test[0], torch.Tensor)
                         else StreamedFeatures(model, test[0], workers=workers))  # file datasets: too big to hold
                t = evaluate(model, feats, test[1].to(device))
                row |= {"test_loss": t["loss"], "test_acc": t["acc"]}
                result = {"test_acc": t["acc"], "test_loss": t["loss"], "train_acc": row["train_acc"]}
            if log:
                log(row)
            if checkpoint:
                checkpoint(epoch_state(epoch, opt, sched, gen, device, result))
            bar.set_postfix(train_acc=f"{row['train_acc']:.2f}")
            bar.update(1)
    model.eval()
    return result


def train_backprop(
    model: SoftHebbNet,
    images: Images,
    labels: torch.Tensor,
    test_images: Images | None = None,
    test_labels: torch.Tensor | None = None,
    mode: str = "end-to-end",
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    augment: Augment = False,
    eval_every: int = 10,
    log: Logger | None = None,
    progress: bool = True,
    workers: int = 0,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    start: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train a backprop preset; returns the final-epoch test accuracy (the last stage's in layerwise mode).

    ``augment``: the training augmentation (see ``softhebb.batching.Augment``), seeded per batch.
    ``checkpoint(state)`` is called after every epoch with what it takes to continue (stage, epoch, Adam,
    schedule, data-order generator, RNG, result so far); ``start`` is such a state, for a model whose
    weights the caller restored. A resumed run ends with the same weights as an uninterrupted one.
    """
    if mode not in BP_MODES:
        raise ValueError(f"mode must be one of {BP_MODES}, got {mode!r}")
    if model.hebbian_block_indices():
        raise ValueError("train_backprop needs a preset whose blocks are all 'rule: bp' (e.g. 4CnnCIFAR); "
                         f"blocks {model.hebbian_block_indices()} are Hebbian")
    torch.manual_seed(seed)  # dropout masks
    test = None if test_images is None else (test_images, test_labels)
    if mode == "end-to-end":
        stages = [("backprop", [model])]
    else:  # the original's successive mode: each stage re-seeds its data order; only the trained block is in train mode
        stages = [(f"backprop block {i}", [b]) for i, b in enumerate(model.blocks)]
        stages.append(("backprop classifier", [model.dropout, model.classifier]))
    first = start["stage"] if start is not None else 0
    result: dict[str, float] = {}
    for stage, (name, trained) in enumerate(stages):
        if stage < first:
            continue
        if mode == "layerwise":
            for p in model.parameters():
                p.requires_grad_(False)
            for m in trained:
                m.requires_grad_(True)
        save = None if checkpoint is None else (lambda state, stage=stage: checkpoint({"stage": stage, **state}))
        result = _bp_epochs(model, trained, images, labels, epochs, batch_size, lr, seed, augment, name, log, progress,
                            test, eval_every, workers, save, start if stage == first else None)
    for p in model.parameters():
        p.requires_grad_(True)
    return result


@torch.no_grad()
def calibrate_batchnorm(model: SoftHebbNet, images: Images, batch_size: int = 250) -> None:
    """Set each hidden BatchNorm's running statistics from one pass over ``images`` (the "data" random baseline).

    Block by block, so that BN ℓ sees the inputs produced with the already-calibrated BNs before it.
    """
    device = model.device
    model.eval()
    for depth, block in enumerate(model.blocks):
        bns = [m for m in block.pre if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            continue
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: independent of the batch order
            m.train()
        for x in inputs_in_order(images, range(0, len(images), batch_size), batch_size, device):
            block.pre(model.features(x, depth))
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            m.eval()
