"""Accuracy under input noise and gradient attacks (FGSM, PGD; L∞ and L2) on [0, 1] pixels.

Hebbian weights are buffers, so autograd reaches the input through the frozen network and the
linear head. Everything runs in eval mode: BatchNorm uses its running statistics, dropout is off
and the Hebbian layers do not accumulate updates.

Attack accuracies are *nested*: an image counts as broken at ε if any attack with budget ε' ≤ ε
broke it (a perturbation of size ε' is also one of size ≤ ε), and only images still standing are
attacked at the next ε. Curves are therefore non-increasing in ε, equal the clean accuracy at
ε = 0, and the sweep costs less.

The attacks ascend the *margin* loss max_{j≠y} z_j − z_y by default, not the cross-entropy:
SoftHebb features are unnormalised, so trained heads produce logit margins in the thousands
(measured: median 1,610 on MNIST), where float32 softmax saturates, the cross-entropy is exactly
0 and so is its gradient — FGSM then leaves the image untouched and reports false robustness
(gradient masking). The margin's gradient never vanishes. ``loss="ce"`` is kept for comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..network import SoftHebbNet
from ..batching import as_input

NORMS = ("linf", "l2")
LOSSES = ("margin", "ce")


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "margin") -> torch.Tensor:
    """Summed loss that the attacker increases: margin max_{j≠y} z_j − z_y, or cross-entropy."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return (other - true).sum()


def _bview(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1)
    return delta * _bview(eps / n.clamp(min=eps), delta)  # shrink only what lies outside the ball


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step for the norm: sign(g) for L∞, g/‖g‖₂ for L2."""
    if norm == "linf":
        return g.sign()
    return g / _bview(g.flatten(1).norm(dim=1).clamp(min=1e-12), g)


def attack(model: SoftHebbNet, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", steps: int = 0,
           step_size: float | None = None, random_start: bool = True, generator: torch.Generator | None = None,
           loss: str = "margin") -> torch.Tensor:
    """Adversarial version of float inputs ``x`` ∈ [0, 1] that increases :func:`attack_loss`.

    ``steps`` = 0: FGSM (L∞) / fast gradient method (L2), one step of size ε.
    ``steps`` > 0: PGD with step 2.5·ε/steps (default), optional random start in the ε-ball,
    projection onto the ball and the [0, 1] box after every step.
    """
    if norm not in NORMS or loss not in LOSSES:
        raise ValueError(f"norm must be one of {NORMS} and loss one of {LOSSES}, got {norm!r} and {loss!r}")
    model.eval()
    if eps == 0:
        return x.clone()
    x = x.detach()

    def grad(xa: torch.Tensor) -> torch.Tensor:
        xa = xa.detach().requires_grad_(True)
        return torch.autograd.grad(attack_loss(model(xa), y, loss), xa)[0]

    if steps == 0:
        return (x + eps * _direction(grad(x), norm)).clamp(0, 1).detach()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        if norm == "l2":  # a random direction at a uniform-in-volume radius inside the ball
            r = torch.rand(x.shape[0], generator=generator).to(x.device) ** (1 / noise[0].numel())
            noise = _direction(noise, "l2") * _bview(r, x)
        delta = (x + eps * noise).clamp(0, 1) - x
    for _ in range(steps):
        delta = _project(delta + alpha * _direction(grad(x + delta), norm), eps, norm)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


@torch.no_grad()
def _correct(model: SoftHebbNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def _batched_correct(model: SoftHebbNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int, make) -> torch.Tensor:
    device = model.classifier.weight.device
    out = []
    for s in range(0, images.shape[0], batch_size):
        x = as_input(images[s:s + batch_size].to(device))
        y = labels[s:s + batch_size].to(device)
        out.append(_correct(model, make(x, y), y).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def clean_accuracy(model: SoftHebbNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    return 100.0 * float(_batched_correct(model, images, labels, batch_size, lambda x, y: x).double().mean())


def noise_accuracy(model: SoftHebbNet, images: torch.Tensor, labels: torch.Tensor, sigmas: list[float],
                   seed: int = 0, batch_size: int = 500) -> list[dict]:
    """Accuracy (%) with i.i.d. Gaussian noise N(0, σ²) added to [0, 1] pixels, then clamped to [0, 1].
    The noise of each σ comes from the same seeded stream, so curves of different models compare
    on identical corrupted inputs."""
    model.eval()
    rows = []
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(seed)
        noisy = lambda x, y: (x + sigma * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)
        correct = _batched_correct(model, images, labels, batch_size, noisy)
        rows.append({"attack": "gaussian", "norm": "", "eps": float(sigma), "acc": 100.0 * float(correct.double().mean())})
    return rows


def attack_accuracy(model: SoftHebbNet, images: torch.Tensor, labels: torch.Tensor, eps_list: list[float],
                    norm: str = "linf", steps: int = 10, seed: int = 0, batch_size: int = 250,
                    loss: str = "margin") -> list[dict]:
    """Nested robust accuracy (%) for each ε in ``eps_list`` (sorted ascending; see the module doc).
    ``steps`` = 0 is FGSM/FGM, otherwise PGD with a seeded random start."""
    model.eval()
    eps_list = sorted(float(e) for e in eps_list)
    name = ("fgsm" if norm == "linf" else "fgm") if steps == 0 else "pgd"
    standing = _batched_correct(model, images, labels, batch_size, lambda x, y: x)
    rows = []
    for eps in eps_list:
        idx = standing.nonzero().flatten()
        if eps > 0 and idx.numel():
            gen = torch.Generator().manual_seed(seed)
            adv = lambda x, y: attack(model, x, y, eps, norm, steps, generator=gen, loss=loss)
            standing[idx] = _batched_correct(model, images[idx], labels[idx], batch_size, adv)
        rows.append({"attack": name, "norm": norm, "eps": eps, "steps": steps, "loss": loss,
                     "acc": 100.0 * float(standing.double().mean())})
    return rows


def robustness(model: SoftHebbNet, images: torch.Tensor, labels: torch.Tensor, sigmas: list[float],
               eps_linf: list[float], eps_l2: list[float], pgd_steps: int = 10, seed: int = 0,
               batch_size: int = 250, loss: str = "margin") -> list[dict]:
    """Clean, Gaussian-noise, FGSM/FGM and PGD accuracies in one table (rows as the functions above)."""
    rows = [{"attack": "clean", "norm": "", "eps": 0.0, "acc": clean_accuracy(model, images, labels, batch_size)}]
    rows += noise_accuracy(model, images, labels, sigmas, seed, batch_size)
    for norm, eps in (("linf", eps_linf), ("l2", eps_l2)):
        if eps:
            rows += attack_accuracy(model, images, labels, eps, norm, 0, seed, batch_size, loss)
            rows += attack_accuracy(model, images, labels, eps, norm, pgd_steps, seed, batch_size, loss)
    return rows
