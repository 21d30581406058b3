"""The modules that SoftHebb blocks use around their Hebbian layer and in the classifier head: the paper's
activations, CPU-fast pools and a fast dropout. None of them learns."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def triangle(x: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """relu(x − mean over channels)^power, with the mean treated as a constant for gradients."""
    out = F.relu_(x - x.mean(dim=1, keepdim=True).detach())  # in place on the fresh centred copy: fewer large allocations
    if power == 1.0:
        return out
    if (torch.is_grad_enabled() and out.requires_grad) or torch.is_autocast_enabled(out.device.type):
        return out.pow(power)  # autograd needs pow's input; CUDA autocast computes pow in fp32, pow_ would not
    return out.pow_(power)


class Triangle(nn.Module):
    """The paper's activation: centre across channels, rectify, raise to ``power``."""

    def __init__(self, power: float = 1.0) -> None:
        super().__init__()
        _check(power > 0, f"triangle power must be > 0, got {power}")
        self.power = float(power)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return triangle(x, self.power)

    def extra_repr(self) -> str:
        return f"power={self.power:g}"


class Power(nn.Module):
    """x^power on non-negative inputs. A block's Triangle(p) → MaxPool becomes Triangle(1) → MaxPool → Power(p):
    t ↦ t^p is increasing on t ≥ 0, so the values are the same (up to pow's last-bit rounding), and the costly pow
    runs on the pooled map (4× fewer elements with the paper's max_4_2_1)."""

    def __init__(self, power: float) -> None:
        super().__init__()
        _check(power > 0, f"power must be > 0, got {power}")
        self.power = float(power)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(self.power)

    def extra_repr(self) -> str:
        return f"power={self.power:g}"


class ChannelSoftmax(nn.Module):
    """softmax(β·x) across channels (the MNIST MLP's ``softmax_5`` output)."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.beta * x, dim=1)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"


class Dropout(nn.Module):
    """nn.Dropout with a much faster mask for p = 0.5, the paper's classifier default.

    torch's CPU Bernoulli sampler costs ~16 ns per element, which dominated the linear probe on
    24,576-dim features. With p = 0.5 every random bit is an exact Bernoulli(0.5) draw, so one
    random byte yields eight mask entries (expanded through a 256-row lookup table). Other p use
    F.dropout. The distribution is the same as nn.Dropout's; the random stream differs.
    ``inplace``: with p = 0.5, overwrite the input, as nn.Dropout(inplace=True) does (never one autograd tracks).
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        _check(0.0 <= p < 1.0, f"dropout p must be in [0, 1), got {p}")
        self.p, self.inplace = float(p), inplace
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        self.register_buffer("_table", bits.float() * 2.0, persistent=False)  # kept entries scaled by 1/(1−p)
        self._bytes: torch.Tensor | None = None  # mask storage reused from call to call: fresh 6 MB tensors
        self._mask: torch.Tensor | None = None  # cost the probe more than the multiply itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p != 0.5:  # out of place: CUDA's in-place dropout_ takes another kernel and draws other masks
            return F.dropout(x, self.p, True)
        tracked = torch.is_grad_enabled() and x.requires_grad  # then autograd keeps the mask: it must be a new one
        n = x.numel()
        k = (n + 7) // 8
        mask = self._mask
        if tracked or mask is None or mask.shape[0] != k or mask.device != x.device or mask.dtype != x.dtype:
            rand = torch.empty(k, dtype=torch.uint8, device=x.device)
            mask = torch.empty(k, 8, dtype=x.dtype, device=x.device)
            if not tracked:
                self._bytes, self._mask = rand, mask
        else:
            rand = self._bytes
        rand.random_()
        torch.index_select(self._table.to(x.dtype), 0, rand.long(), out=mask)  # 4x faster than [...]
        mask = mask.view(-1)[:n].view_as(x)
        return x.mul_(mask) if self.inplace and not tracked else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


def _pool_channels_last(pool: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    if (x.device.type == "cpu" and x.dim() == 4 and not getattr(pool, "return_indices", False)
            and not x.is_contiguous(memory_format=torch.channels_last)):
        return forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
    return forward(x)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that pools CPU tensors in channels-last memory: 3-10x faster than NCHW, the same values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool_channels_last(self, super().forward, x)


class AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d that pools CPU tensors in channels-last memory: with the conversions, 9.5 vs 6.2 ms on
    42 × 1536 × 8 × 8 (avg_2_2_0 after the CIFAR network's NCHW last conv), the same values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool_channels_last(self, super().forward, x)
