"""The original's hybrid mode (Fig. B.3.B): Hebbian updates and classifier steps from the same batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .batching import Checkpoint, Logger, index_batches, load_batch, progress_bar
from .features import extract_features
from .hebbian import check_finite
from .layers import NonFiniteError
from .network import SoftHebbNet
from .probe import adam_epochs, epoch_state, evaluate


def train_hybrid(
    model: SoftHebbNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 1,
    batch_size: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    log: Logger | None = None,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    start: dict | None = None,
) -> dict[str, float]:
    """The original's hybrid ("simultaneous") mode of Fig. B.3.B: every batch gives each Hebbian block its update
    and the classifier an Adam step, from the same forward pass.

    All blocks are in training mode (BatchNorms use batch statistics); the Hebbian updates are those of
    ``hebbian_phase(mode="simultaneous")`` on the same batches, whatever the classifier does, because no gradient
    reaches Hebbian weights. One log row per batch (examples seen, batch loss and accuracy, each Hebbian block's R1,
    convergence and mean rate: the figure's data) and one per epoch with the test accuracy. ``checkpoint`` and
    ``start`` work per epoch, as in ``train_probe``.
    """
    device, n = model.device, labels.numel()
    for x, y, name in ((images, labels, "train"), (test_images, test_labels, "test")):
        if len(x) != y.numel():
            raise ValueError(f"{name}: {len(x)} images but {y.numel()} labels")
    hebb = model.hebbian_block_indices()
    for i in hebb:
        model.blocks[i].layer.schedule(epochs * n / batch_size)  # as in hebbian_phase
        model.blocks[i].layer.zero_pending()
    torch.manual_seed(seed)  # dropout masks
    # gen: the data order of hebbian_phase with this seed
    opt, sched, gen, first, result = adam_epochs(model.classifier.parameters(), lr, epochs, seed, device, start)
    seen, n_batches = (first - 1) * n, math.ceil(n / batch_size)
    update0 = [int(model.blocks[i].layer.num_updates) - (first - 1) * n_batches for i in hebb]  # to name a NaN's batch
    with progress_bar(epochs * n, "hybrid", progress) as bar:
        bar.update(seen)
        for epoch in range(first, epochs + 1):
            model.train()
            for idx in index_batches(torch.randperm(n, generator=gen), batch_size):
                x, y = load_batch(images, idx, device), labels[idx.to(labels.device)]
                with torch.no_grad():
                    features = model.readout(x)  # the Hebbian layers accumulate their Σỹx, Σỹu here
                logits = model.head(features)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                try:
                    for i in hebb:
                        model.blocks[i].layer.step()
                except NonFiniteError:
                    check_finite(model, hebb, update0, n_batches)  # raises it with the block and batch named
                    raise
                seen += idx.numel()
                if log:
                    row = {"phase": "hybrid", "epoch": epoch, "seen": seen, "loss": loss.item(),
                           "acc": 100.0 * int((logits.detach().argmax(1) == y).sum()) / y.numel()}
                    for i in hebb:
                        stats = model.blocks[i].layer.stats()
                        row |= {f"{k}_{i}": stats[k] for k in ("r1", "convergence", "lr_mean")}
                    log(row)
                bar.update(idx.numel())
            sched.step()
            check_finite(model, hebb, update0, n_batches)  # before anything is evaluated or saved
            test = evaluate(model, extract_features(model, test_images), test_labels)
            result = {"test_acc": test["acc"], "test_loss": test["loss"]}
            if log:
                log({"phase": "hybrid", "epoch": epoch, "test_loss": test["loss"], "test_acc": test["acc"]})
            if checkpoint:
                checkpoint(epoch_state(epoch, opt, sched, gen, device, result))
            bar.set_postfix(test_acc=f"{test['acc']:.2f}")
    model.eval()
    return result

