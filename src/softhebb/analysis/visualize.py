"""What single neurons respond to: first-layer filters and activation maximisation (reference §6.3)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import HebbianConv2d
from ..modules import triangle
from ..network import SoftHebbNet
from .geometry import receptive_fields


def filter_std(weight: torch.Tensor) -> torch.Tensor:
    """Mean over input channels of each kernel's spatial std: the ordering the paper's figures use."""
    w = weight.detach().float()
    return w.flatten(2).std(dim=2).mean(dim=1) if w.dim() == 4 else w.std(dim=1)


def first_layer_filters(model: SoftHebbNet, sort: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """First-layer kernels as images in [0, 1] (per-kernel min–max) and their order.

    Returns (filters (K, C, kh, kw), order) where ``filters[r]`` is kernel ``order[r]``; with
    ``sort`` the order is by decreasing :func:`filter_std` (Fig. B.5). A linear first layer's
    rows are reshaped to the input image shape.
    """
    w = model.blocks[0].layer.weight.detach().float().cpu()
    if w.dim() == 2:
        w = w.view(w.shape[0], *model.in_shape)
    order = filter_std(w).argsort(descending=True) if sort else torch.arange(w.shape[0])
    w = w[order]
    lo, hi = w.flatten(1).amin(1).view(-1, 1, 1, 1), w.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (w - lo) / (hi - lo).clamp(min=1e-12), order


def tile(images: torch.Tensor, ncols: int | None = None, pad: int = 1, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, h, w) → one (C, H, W) mosaic, row-major, ``ncols`` per row (default ≈ √N)."""
    n, c, h, w = images.shape
    ncols = ncols or max(1, int(round(n ** 0.5)))
    nrows = -(-n // ncols)
    out = torch.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value, dtype=images.dtype)
    for k in range(n):
        r, q = divmod(k, ncols)
        out[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[k]
    return out


def _conv_valid(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer without its padding (an interior unit computes exactly the same value)."""
    if isinstance(layer, HebbianConv2d):
        u = F.conv2d(x, layer.synaptic_weight(x.dtype), None, layer.stride, 0, layer.dilation, layer.groups)
        return triangle(u, 1.0) if layer.pre_triangle else u
    return F.conv2d(x, layer.weight, None, layer.stride, 0, layer.dilation, layer.groups)


def _pool_valid(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.MaxPool2d):
        return F.max_pool2d(x, m.kernel_size, m.stride, 0)
    if isinstance(m, nn.AvgPool2d):
        return F.avg_pool2d(x, m.kernel_size, m.stride, 0)
    return m(x)


def unit_response(model: SoftHebbNet, x: torch.Tensor, block: int) -> torch.Tensor:
    """Layer output u of ``block`` (before its activation and pool), per neuron, for inputs that
    are exactly the block's receptive field: (N, K). Conv prefixes run unpadded so the output is
    1×1 — the unit at an interior position of the real network. A prefix containing a linear
    block is run as is on full-size images."""
    blocks = model.blocks[:block + 1]
    if any(b.cfg["type"] == "linear" for b in blocks):
        h = model.features(x, block)
        return blocks[-1].layer(blocks[-1].pre(h)).flatten(1)
    for i, b in enumerate(blocks):
        x = _conv_valid(b.layer, b.pre(x))
        if i < block:
            for m in b.post:
                x = _pool_valid(m, x)
    return x[:, :, x.shape[2] // 2, x.shape[3] // 2]


def pick_neurons(model: SoftHebbNet, block: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random neurons of ``block`` (seeded), ordered by decreasing :func:`filter_std`."""
    w = model.blocks[block].layer.weight
    idx = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return idx[filter_std(w[idx].cpu()).argsort(descending=True)]


def maximize_activation(
    model: SoftHebbNet,
    block: int,
    neurons: torch.Tensor | list[int],
    steps: int = 200,
    budget: float = 0.25,
    start: float = 0.5,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input (restricted to the unit's receptive field) that maximises each neuron's u.

    Projected gradient ascent on x ∈ [0, 1]ⁿ with ‖x − x₀‖₂ ≤ budget·√n, x₀ = ``start`` (mid-grey)
    plus 1e-3 seeded noise: each step moves by 2.5·(budget·√n)/steps along the L2-normalised
    gradient, then projects onto the ball and clamps to the box (the ball-then-box result lies in
    both sets, since the box contains x₀). For a first layer the optimum is x₀ plus the BN-scaled
    filter, so the picture is the neuron's preferred input, not a rescaled artefact.

    What the original got wrong (§6.3): it stepped by 0.001 × the *raw* gradient and after every
    step replaced x with ε·|x/‖x‖₂| shifted to min 0 and divided by its max. That is not a
    projection: the absolute value folds negative directions onto positive ones, and the per-step
    min–max rescaling moves the iterate off the ascent path, so the budget ε never constrains
    anything and every image comes out at full contrast regardless of how much the neuron
    actually gains. Here the constraint is the true projection and contrast is left as found.

    Returns (images (N, C, rf, rf), final responses (N,)). Model is used in eval mode.
    """
    model.eval()
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    rf = receptive_fields(model)[block]
    c = model.in_shape[0]
    shape = (len(neurons), c, rf.conv_size, rf.conv_size) if not rf.whole_image else (len(neurons), *model.in_shape)
    device = model.classifier.weight.device
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.full(shape, float(start))
    x = (x0 + 1e-3 * torch.randn(shape, generator=gen)).clamp(0, 1).to(device)
    x0 = x0.to(device)
    radius = budget * (x[0].numel() ** 0.5)
    step = 2.5 * radius / max(steps, 1)
    sel = neurons.to(device)
    for _ in range(steps):
        x.requires_grad_(True)
        u = unit_response(model, x, block).gather(1, sel.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(u, x)
        with torch.no_grad():
            g = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
            d = x + step * g - x0
            d = d * (radius / d.flatten(1).norm(dim=1).clamp(min=radius)).view(-1, 1, 1, 1)
            x = (x0 + d).clamp(0, 1)
    with torch.no_grad():
        response = unit_response(model, x, block).gather(1, sel.view(-1, 1)).squeeze(1)
    return x.detach().cpu(), response.cpu()
