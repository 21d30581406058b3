"""The authors' supervised Hebbian classifier (preset ``4SoftHebbCnnCIFAR_HebbClassifier``), in place of the probe.

A linear layer on the frozen features whose neuron k learns only from the images of class k:
Δw_k = Σ_n [y_n = k]·(x_n − u_nk·w_k), the Hebbian rule with the one-hot label as its post-synaptic
factor instead of a competition, normalised by max|Δw| and applied at a rate that decays linearly to
0 over the epochs. It predicts argmax_k u_k; no gradient, no bias. Its weights are written into the
model's ``classifier`` (bias 0), so evaluation, saving and loading are those of the probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import plasticity as P
from .batching import Logger, progress_bar
from .network import SoftHebbNet
from .probe import evaluate


@torch.no_grad()
def train_hebbian_classifier(model: SoftHebbNet, train_features: torch.Tensor, train_labels: torch.Tensor,
                             test_features: torch.Tensor, test_labels: torch.Tensor, epochs: int, batch_size: int,
                             seed: int = 0, eval_every: int = 10, log: Logger | None = None,
                             progress: bool = True) -> dict[str, float]:
    """Train ``model.classifier`` with the supervised Hebbian rule; returns the last test accuracy and loss.

    The preset's ``classifier`` gives ``lr`` (lr₀ of the linear decay) and ``radius`` (uniform initial weights of
    that norm, as the authors' MLP layers). ``seed`` sets the initial weights and the data order.
    """
    head = model.preset["classifier"]
    k, n = model.num_classes, len(train_labels)
    device = train_features.device
    gen = torch.Generator().manual_seed(seed)
    weight = P.init_weight((k, model.num_features), head["radius"], "uniform", gen).to(device)
    total_steps = epochs * n / batch_size  # the authors' δ = lr₀·(B/N)/E per update
    lr0 = torch.full((k,), float(head["lr"]), device=device)
    step, result = 0, {}
    for epoch in range(1, epochs + 1):
        correct = 0
        order = torch.randperm(n, generator=gen).to(device)
        with progress_bar(n, f"hebbian classifier epoch {epoch}/{epochs}", progress) as bar:
            for idx in order.split(batch_size):
                x, labels = train_features[idx].float(), train_labels[idx]
                u = x @ weight.t()
                correct += int((u.argmax(1) == labels).sum())
                yx, yu = P.hebbian_terms_linear(x, F.one_hot(labels, k).to(x.dtype), u)
                rate = P.linear_decay_rate(lr0, step, total_steps)
                P.apply_update_(weight, yx, yu, rate.to(weight.dtype))
                step += 1
                bar.update(len(idx))
        model.classifier.weight.copy_(weight)
        model.classifier.bias.zero_()
        row = {"phase": "hebbian_classifier", "epoch": epoch, "lr": float(rate[0]), "train_acc": 100.0 * correct / n}
        if epoch == 1 or epoch % eval_every == 0 or epoch == epochs:
            test = evaluate(model, test_features, test_labels)
            row |= {"test_loss": test["loss"], "test_acc": test["acc"]}
            result = {"test_acc": test["acc"], "test_loss": test["loss"], "train_acc": row["train_acc"]}
        if log:
            log(row)
    return result
