"""The SoftHebb plasticity rule as pure functions (reference §1.3–1.5).

Every function here works on plain tensors so that the rule can be tested against
per-patch loops and reused outside the layers in `softhebb.layers`.

Shapes: ``u`` and ``y`` are (N, K) for a linear layer or (N, K, H, W) for a conv layer;
competition always runs over dim 1 (the K output neurons), within each of ``groups``
equal-sized groups of neurons.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

RULES = ("softhebb", "soft", "hard", "hardkrotov")
"""Competition variants: ``softhebb`` = soft WTA with anti-Hebbian non-winners (the paper's
"softkrotov" mode 0), ``soft`` = soft WTA without anti-Hebbian, ``hard`` = hard WTA,
``hardkrotov`` = hard WTA plus an anti-Hebbian push −Δ on the ``rank``-th strongest neuron
(Krotov & Hopfield 2019; in the authors' code, used by no paper preset)."""

RATE_EPS = 1e-10  # keeps the radius-dependent rate non-zero at norm exactly 1 (as the original)
NORM_EPS = 1e-30  # guards the max-abs normalisation of an all-zero update


def _grouped(u: torch.Tensor, groups: int) -> torch.Tensor:
    """View (N, K, ...) as (N, G, K/G, ...) so competition runs within groups."""
    n, k = u.shape[:2]
    return u.reshape(n, groups, k // groups, *u.shape[2:])


def post_synaptic(u: torch.Tensor, rule: str, t_invert: float, groups: int = 1, delta: float | None = None,
                  rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ỹ, the signed post-synaptic factor that enters the update, and the winning neurons.

    softhebb:   y = softmax(t_invert·u); ỹ = +y at the argmax neuron, −y everywhere else.
    soft:       ỹ = softmax(t_invert·u).
    hard:       ỹ = one-hot(argmax u).
    hardkrotov: ỹ = one-hot(argmax u) − delta·one-hot(the rank-th largest u), rank >= 2.

    Returns (ỹ shaped like u, winner index within its group shaped (N, G, 1, ...)).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    ug = _grouped(u, groups)
    # max's indices are argmax's (the first maximum), but on CPU, over this strided dim, max runs 1.2-3x faster
    winner = ug.max(dim=2, keepdim=True).indices
    if rule in ("hard", "hardkrotov"):
        y = torch.zeros_like(ug).scatter_(2, winner, 1.0)
        if rule == "hardkrotov":
            if delta is None or rank is None or not 2 <= rank <= ug.shape[2]:
                raise ValueError(f"hardkrotov needs delta and a rank between 2 and the {ug.shape[2]} neurons that "
                                 f"compete, got delta={delta!r}, rank={rank!r}")
            ranked = ug.topk(rank, dim=2).indices[:, :, rank - 1:rank]
            y.scatter_(2, ranked, -float(delta))
    else:
        scaled = ug if t_invert == 1.0 else ug * t_invert  # ×1 is exact: skip a pass over u (CIFAR block 0)
        y = torch.softmax(scaled, dim=2, dtype=torch.promote_types(ug.dtype, torch.float32))
        if rule == "softhebb":
            top = y.gather(2, winner)
            y = y.neg_().scatter_(2, winner, top)
    return y.reshape(u.shape), winner


def hebbian_terms_conv(
    x: torch.Tensor,
    y: torch.Tensor,
    u: torch.Tensor,
    weight_shape: Sequence[int],
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ ỹ·x, Σ ỹ·u) for a conv layer, summed over batch and output positions.

    ``x`` is the already padded input. Σ ỹ·x is the convolution weight-gradient of
    Σ ỹ·conv(x, W), not the original's transposed-convolution trick (reference §1.8).
    ``method`` "kernel" uses the library's weight-gradient kernel; "gemm" multiplies ỹ with the
    unfolded input patches. "auto" takes "gemm" when there are fewer patch positions (N·L)
    than neurons — deep layers with small maps, where the kernel ran at about half the speed
    (384→1536 3×3 on 8×8 at batch 10 on CPU: 70 ms vs 41 ms) — and "kernel" otherwise.
    """
    k_out, c_in_g, kh, kw = weight_shape
    n = x.shape[0]
    yu = _sum_yu(y, u, dims=(0, 2, 3))
    x, y = x.to(u.dtype), y.to(u.dtype)  # the conv's dtype (bf16 under autocast)
    length = u.shape[2] * u.shape[3]
    if method == "auto":
        method = "gemm" if n * length < k_out else "kernel"
    if method == "kernel":
        yx = torch.nn.grad.conv2d_weight(x, weight_shape, y, stride=stride, padding=0, dilation=dilation, groups=groups)
    elif method == "gemm":
        patches = F.unfold(x, (kh, kw), dilation=dilation, stride=stride)  # (N, C·kh·kw, L), C-major like W
        patches = patches.view(n, groups, c_in_g * kh * kw, length).permute(1, 0, 3, 2).reshape(groups, n * length, -1)
        yg = y.reshape(n, groups, k_out // groups, length).permute(1, 2, 0, 3).reshape(groups, k_out // groups, n * length)
        yx = torch.bmm(yg, patches).view(weight_shape)
    else:
        raise ValueError(f"method must be 'auto', 'kernel' or 'gemm', got {method!r}")
    return yx, yu


def _sum_yu(y: torch.Tensor, u: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Σ ỹ·u in at least fp32: it cancels against Σ ỹ·x as weights converge, so bf16 rounding would show."""
    acc = torch.promote_types(torch.promote_types(y.dtype, u.dtype), torch.float32)
    return (y.to(acc) * u.to(acc)).sum(dim=dims)


def hebbian_terms_linear(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ ỹ·x, Σ ỹ·u) for a linear layer, summed over the batch."""
    return y.to(u.dtype).t() @ x.to(u.dtype), _sum_yu(y, u, dims=(0,))


def update_direction(weight: torch.Tensor, yx: torch.Tensor, yu: torch.Tensor, groups: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δw, max|Δw|) with Δw = Σỹx − (Σỹu)·w and the max-abs over the whole layer (per group for conv).

    max|Δw| is non-finite exactly when Δw is.
    """
    shape = (-1,) + (1,) * (weight.dim() - 1)
    dw = torch.addcmul(yx, yu.view(shape), weight, value=-1)
    per_neuron = dw.view(groups, weight.shape[0] // groups, -1)  # max |Δw| in two reductions: an inf-norm over
    dmax = torch.maximum(per_neuron.amax(2), -per_neuron.amin(2)).amax(1)  # one long row runs ~15x slower on CPU
    return dw, dmax


def apply_direction_(weight: torch.Tensor, dw: torch.Tensor, dmax: torch.Tensor, rate: torch.Tensor,
                     groups: int = 1) -> None:
    """In place: w_k += rate_k · Δw_k / max|Δw| (``update_direction``'s Δw and max|Δw|)."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    weight.addcmul_(dw, (rate / (dmax.repeat_interleave(weight.shape[0] // groups) + NORM_EPS)).view(shape))


def apply_update_(weight: torch.Tensor, yx: torch.Tensor, yu: torch.Tensor, rate: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """In place: w_k += rate_k · Δw_k / max|Δw|, in three passes over the weights; returns the per-group max |Δw|."""
    dw, dmax = update_direction(weight, yx, yu, groups)
    apply_direction_(weight, dw, dmax, rate, groups)
    return dmax


def synaptic_weight(weight: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """φ(w) = sign(w)·|w|^(p−1), the weights the forward pass uses for Lebesgue exponent p (φ(w) = w for p = 2).

    With it the Hebbian update drives ‖w_k‖_p, not ‖w_k‖₂, to 1 (Krotov & Hopfield's p-norm rule).
    """
    if p == 2.0:
        return weight
    return weight.sign() * weight.abs().pow(p - 1)


def bias_direction(bias: torch.Tensor, y_sum: torch.Tensor, count: torch.Tensor | float, t_invert: float) -> torch.Tensor:
    """Δb / max|Δb| with Δb_k = (Σ y_k − M·e^{t·b_k}) / e^{t·b_k} (reference §1.6).

    y is the softmax (the unsigned competition output) and M the number of competitions summed over
    (batch × positions); b_k moves toward log(mean y_k)/t, the log-prior of neuron k winning, and the
    uniform prior log(1/K)/t is its fixed point when every neuron wins equally often.
    """
    prior = torch.exp(t_invert * bias)
    db = (y_sum - count * prior) / prior
    return db / (db.abs().max() + NORM_EPS)


def neuron_norms(weight: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """‖w_k‖_p of each neuron's flattened weight vector (the paper's "radius")."""
    return torch.linalg.vector_norm(weight.flatten(1), ord=p, dim=1)


def radius_rate(weight: torch.Tensor, lr: float, power: float, p: float = 2.0) -> torch.Tensor:
    """Per-neuron rate η_k = lr₀·(|‖w_k‖−1| + 1e−10)^power: it anneals as a neuron reaches the unit sphere."""
    return lr * ((neuron_norms(weight, p) - 1).abs() + RATE_EPS) ** power


def linear_decay_rate(lr: torch.Tensor | float, step: torch.Tensor | int, total_steps: float) -> torch.Tensor:
    """Global rate lr₀·max(0, 1 − t/T): reaches 0 at the end of the Hebbian phase (T updates)."""
    return lr * (1.0 - torch.as_tensor(step, dtype=torch.float64) / total_steps).clamp(min=0.0)


def init_weight(shape: Sequence[int], radius: float, distribution: str, generator: torch.Generator | None = None,
                p: float = 2.0) -> torch.Tensor:
    """Initial weights whose per-neuron p-norm is about ``radius`` (E‖w_k‖_p^p = r^p; reference §1.7).

    normal:  N(0, σ²), σ = (r^p / (n·E|z|^p))^(1/p) = r/√n for p = 2 — used when the block has a BatchNorm.
    uniform: U[0, a), a = ((p+1)·r^p / n)^(1/p) = r·√(3/n) for p = 2 — used otherwise (e.g. the MNIST MLP).
    """
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    if distribution == "normal":
        if p == 2.0:
            return torch.randn(*shape, generator=generator) * (radius / fan_in**0.5)
        abs_moment = 2 ** (p / 2) * math.gamma((p + 1) / 2) / math.sqrt(math.pi)  # E|z|^p, z ~ N(0, 1)
        return torch.randn(*shape, generator=generator) * (radius**p / (fan_in * abs_moment)) ** (1 / p)
    if distribution == "uniform":
        if p == 2.0:
            return torch.rand(*shape, generator=generator) * (radius * (3.0 / fan_in) ** 0.5)
        return torch.rand(*shape, generator=generator) * ((p + 1) * radius**p / fan_in) ** (1 / p)
    raise ValueError(f"unknown init distribution {distribution!r}; expected 'normal' or 'uniform'")


def pad_input(x: torch.Tensor, padding: tuple[int, int], mode: str) -> torch.Tensor:
    """Explicit padding, so that the plasticity sees exactly the input the conv saw."""
    if padding == (0, 0):
        return x
    ph, pw = padding
    mode = "constant" if mode == "zeros" else mode
    return F.pad(x, (pw, pw, ph, ph), mode=mode)
