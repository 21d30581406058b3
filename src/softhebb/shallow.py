"""The 2022 SoftHebb paper's shallow experiments on a one-Hebbian-layer MLP (e.g. ``2SoftMlpMNIST``).

* **Label-assignment accuracy** (reference §5.6): an unsupervised readout. Each neuron is labelled
  with the class it wins most often on the training set (a neuron that never wins gets the class
  with the largest summed ỹ); an image is classified by the label of its winning neuron.
* **Post-hoc loss** (the NCE-2022 experiment; the original ``post_hoc_loss.py`` crashes): train the
  Hebbian layer, fit the linear head on its output, then restart the Hebbian layer from its initial
  weights and train it again *without labels* while measuring the cross-entropy of that fixed head.
  The loss falls: SoftHebb minimises a supervised loss it never sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import plasticity as P
from .layers import HebbianLinear
from .network import SoftHebbNet
from .batching import as_input
from .features import extract_features
from .hebbian import hebbian_phase
from .probe import train_probe


def _first_layer(model: SoftHebbNet) -> HebbianLinear:
    layer = model.blocks[0].layer if len(model.blocks) else None
    if not isinstance(layer, HebbianLinear):
        raise ValueError("label assignment needs a network whose first block is a Hebbian linear layer (e.g. 2SoftMlpMNIST)")
    return layer


@torch.no_grad()
def _winners_and_y(model: SoftHebbNet, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    layer, block, device = _first_layer(model), model.blocks[0], model.device
    model.eval()
    winners, ys = [], []
    for start in range(0, images.shape[0], batch_size):
        u = layer(block.pre(as_input(images[start:start + batch_size].to(device))))
        y, w = P.post_synaptic(u, layer.rule, layer.t_invert)
        winners.append(w.view(-1))
        ys.append(y)
    return torch.cat(winners), torch.cat(ys)


@torch.no_grad()
def neuron_labels(model: SoftHebbNet, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The class each neuron of the first (linear Hebbian) layer stands for."""
    winners, y = _winners_and_y(model, images)
    labels = labels.to(winners.device)
    k = y.shape[1]
    wins = torch.zeros(k, num_classes, device=winners.device).index_put_((winners, labels), torch.ones_like(winners, dtype=torch.float),
                                                                       accumulate=True)
    y_sum = torch.zeros(k, num_classes, device=winners.device).index_add_(1, labels, y.t().float())
    return torch.where(wins.sum(1) > 0, wins.argmax(1), y_sum.argmax(1))


@torch.no_grad()
def label_assignment_accuracy(model: SoftHebbNet, train_images: torch.Tensor, train_labels: torch.Tensor,
                              test_images: torch.Tensor, test_labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy (%) of classifying by the winning neuron's assigned label, on train and test."""
    label_of = neuron_labels(model, train_images, train_labels, num_classes)
    out = {}
    for split, (x, y) in {"train": (train_images, train_labels), "test": (test_images, test_labels)}.items():
        winners, _ = _winners_and_y(model, x)
        out[split] = 100.0 * float((label_of[winners] == y.to(winners.device)).float().mean())
    return out


def post_hoc_loss(model: SoftHebbNet, images: torch.Tensor, labels: torch.Tensor, epochs: int = 1, batch_size: int = 32,
                  probe_epochs: int = 10, probe_batch: int = 32, every: int = 50, eval_size: int = 5000,
                  seed: int = 0) -> list[dict[str, float]]:
    """Cross-entropy of a fixed post-hoc head during a second, label-free Hebbian training from the same start.

    Returns one row per ``every`` Hebbian batches: examples seen, the head's mean cross-entropy and
    accuracy on ``eval_size`` training images.
    """
    layer = _first_layer(model)
    start_weight = layer.weight.clone()
    hebbian_phase(model, images, epochs=epochs, batch_size=batch_size, seed=seed, progress=False)
    feats = extract_features(model, images)
    labels = labels.to(feats.device)
    train_probe(model, feats, labels, feats[:1000], labels[:1000], probe_epochs, probe_batch, seed=seed, progress=False)
    eval_x, eval_y = images[:eval_size], labels[:eval_size]
    rows: list[dict[str, float]] = []

    def record(position: dict | None = None) -> None:
        last = position is not None and position["batch"] * batch_size >= images.shape[0]
        if position is not None and position["batch"] % every and not last:
            return
        f = extract_features(model, eval_x)
        with torch.no_grad():
            logits = model.head(f)
        seen = 0 if position is None else (position["epoch"] * images.shape[0] + min(position["batch"] * batch_size, images.shape[0]))
        rows.append({"examples": seen, "cross_entropy": float(F.cross_entropy(logits, eval_y)),
                     "accuracy": 100.0 * float((logits.argmax(1) == eval_y).float().mean())})
        model.blocks[0].train()  # extract_features put the block in eval mode; the Hebbian phase continues

    layer.weight.copy_(start_weight)
    layer.num_updates.zero_()
    record()
    hebbian_phase(model, images, epochs=epochs, batch_size=batch_size, seed=seed, progress=False, on_batch=record)
    model.eval()
    return rows
