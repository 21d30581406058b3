"""The ORIGINAL SoftHebb code's way of computing, kept ONLY as a speed and equivalence baseline.

Do not train with this module: it exists so that ``benchmarks/bench.py`` can time softhebb
against the authors' computation and ``tests/test_baseline_equivalence.py`` can check that
both give the same updates. It re-expresses, for Hebbian conv layers with groups = 1 and
the "softkrotov" mode 0 rule (= softhebb) or the hard-WTA rule (``HebbHardConv2d``: ỹ = one-hot of
the argmax channel), what the original ``hebbconv.py`` / ``model.py`` do (reference §1.4, §1.8, §8.2, §9), including their slow parts:

* explicit reflect padding, u = conv2d, softmax over channels with t_invert, winner sign flip;
* Σỹx with the "conv trick": x as (C_in, B, H, W) images, ỹ as (K, B, Ho, Wo) filters,
  conv stride = layer dilation, conv dilation = layer stride, crop to k × k;
* Δw = Σỹx − (Σỹu)·w, stored as a full copy, divided by the layer-wide max-abs;
* a learning rate materialised as a full weight-sized tensor (einops.repeat in the original),
  recomputed after every update;
* per-batch monitoring that moves winner statistics to the CPU (``.cpu()``) on every batch;
* every Hebbian batch forwards the WHOLE network, classifier included, then updates the
  blocks being trained (``OriginalNet.hebbian_step``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_trick_yx(x: torch.Tensor, y: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int]) -> torch.Tensor:
    """Σ_{n,h,w} ỹ·x̃ as one conv2d over the padded input ``x`` (reference §1.8), shape (K, C_in, kh, kw)."""
    yx = F.conv2d(x.transpose(0, 1), y.transpose(0, 1), padding=0, stride=dilation, dilation=stride).transpose(0, 1)
    return yx[:, :, :kernel_size[0], :kernel_size[1]]  # k' can exceed k when (H_p − k) is not divisible by the stride


class OriginalHebbConv2d(nn.Module):
    """A softkrotov (mode 0) or hard-WTA (HebbHardConv2d) Hebbian conv with the original's data flow; starts from
    ``weight``."""

    def __init__(self, weight: torch.Tensor, stride, padding, dilation, padding_mode: str, t_invert: float,
                 lr: float, power_lr: float, pre_triangle: bool = False, rule: str = "softhebb") -> None:
        super().__init__()
        self.rule = rule
        self.stride, self.dilation, self.kernel_size = tuple(stride), tuple(dilation), tuple(weight.shape[2:])
        self.pad = (padding[1], padding[1], padding[0], padding[0])
        self.padding_mode = "constant" if padding_mode == "zeros" else padding_mode
        self.t_invert, self.lr0, self.power_lr, self.pre_triangle = float(t_invert), float(lr), float(power_lr), pre_triangle
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("delta_w", torch.zeros_like(self.weight))  # the stored full-size Δw
        self.register_buffer("lr", torch.ones_like(self.weight))  # the full-size per-weight rate
        self.stat = torch.zeros(3, weight.shape[0])  # CPU: [lr, radius, Σ softmax] per neuron, as the original
        self.m_winner: list[torch.Tensor] = []  # mean winner softmax per batch (grows without bound, as the original)
        self.update_lr()

    def update_lr(self) -> None:
        norm = torch.linalg.norm(self.weight.view(self.weight.shape[0], -1), dim=1, ord=2)
        lr = self.lr0 * ((norm - 1).abs() + 1e-10) ** self.power_lr
        self.stat[0] = lr.cpu()
        c, kh, kw = self.weight.shape[1:]
        self.lr = lr.view(-1, 1, 1, 1).repeat(1, c, kh, kw)  # einops.repeat(lr, 'o -> o i k k2')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, self.padding_mode)
        u = F.conv2d(x, self.weight, None, self.stride, 0, self.dilation)
        if self.pre_triangle:
            u = F.relu(u - u.mean(dim=1, keepdim=True))
        if self.training:
            self.plasticity(x, u)
        return u

    def post_synaptic(self, u: torch.Tensor) -> torch.Tensor:
        b, k, h, w = u.shape
        flat = u.transpose(0, 1).reshape(k, -1)
        if self.rule == "hard":  # one-hot of the argmax channel at every position
            y = torch.zeros_like(flat)
            y[torch.argmax(flat, dim=0), torch.arange(flat.shape[1], device=u.device)] = 1.0
            return y.view(k, b, h, w).transpose(0, 1)
        y = torch.softmax(self.t_invert * flat, dim=0)
        self.stat[2] += y.sum(1).cpu()
        y = -y
        cols = torch.arange(flat.shape[1], device=u.device)
        win = torch.argmax(flat, dim=0)
        y[win, cols] = -y[win, cols]
        self.m_winner.append(y[win, cols].mean().cpu())
        return y.view(k, b, h, w).transpose(0, 1)

    def plasticity(self, x: torch.Tensor, u: torch.Tensor) -> None:
        y = self.post_synaptic(u)
        yx = conv_trick_yx(x, y, self.kernel_size, self.stride, self.dilation)
        yu = torch.sum(torch.mul(y, u), dim=(0, 2, 3))
        dw = yx - yu.view(-1, 1, 1, 1) * self.weight
        self.delta_w = dw.div_(dw.abs().amax() + 1e-30)

    def update(self) -> None:
        self.weight.add_(self.lr * self.delta_w)
        self.update_lr()


class Triangle(nn.Module):
    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x - x.data.mean(dim=1, keepdim=True)) ** self.power


def _pool(spec: str | None) -> nn.Module:
    if not spec:
        return nn.Identity()
    kind, k, s, p = spec.split("_")
    return (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(int(k), int(s), int(p))


class OriginalBlock(nn.Module):
    """BatchNorm(affine=False) → Hebbian conv → Triangle → pool."""

    def __init__(self, block) -> None:
        super().__init__()
        cfg, layer = block.cfg, block.layer
        if cfg["type"] != "conv" or cfg["rule"] not in ("softhebb", "hard") or cfg["groups"] != 1:
            raise ValueError("the baseline only covers softhebb and hard conv blocks with groups = 1")
        self.bn = nn.BatchNorm2d(layer.in_channels, affine=False) if cfg["bn"] else nn.Identity()
        if cfg["bn"]:
            self.bn.load_state_dict(block.pre[0].state_dict())
        self.layer = OriginalHebbConv2d(layer.weight, layer.stride, layer.padding, layer.dilation, layer.padding_mode,
                                        layer.t_invert, layer.lr, layer.power_lr, layer.pre_triangle, cfg["rule"])
        act = cfg["activation"] or "triangle_1"
        if not act.startswith("triangle"):
            raise ValueError("the baseline only covers triangle activations")
        self.act = Triangle(float(act.partition("_")[2] or 1))
        self.pool = _pool(cfg["pool"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.layer(self.bn(x))))


class OriginalNet(nn.Module):
    """The original MultiLayer for a conv SoftHebb preset, with the weights of a softhebb model."""

    def __init__(self, model) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(OriginalBlock(b) for b in model.blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(model.dropout.p), nn.Linear(model.num_features, model.num_classes))
        self.classifier[2].load_state_dict(model.classifier.state_dict())
        self.to(model.classifier.weight.dtype)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.classifier(x)

    def set_training(self, blocks: list[int]) -> None:
        """Listed blocks learn (their BN uses batch statistics); every other module is in eval mode."""
        self.eval()
        for i in blocks:
            self.blocks[i].train()

    @torch.no_grad()
    def hebbian_step(self, x: torch.Tensor, blocks: list[int]) -> None:
        self(x)  # the WHOLE network, classifier included, every batch
        for i in blocks:
            self.blocks[i].layer.update()


def hebbian_epoch(net: OriginalNet, data: torch.Tensor, blocks: list[int], batch_size: int = 10,
                  order: torch.Tensor | None = None) -> None:
    """One epoch over preloaded float images ``data`` training ``blocks`` (one block = successive, all = simultaneous)."""
    order = torch.arange(data.shape[0]) if order is None else order
    net.set_training(blocks)
    for idx in order.split(batch_size):
        net.hebbian_step(data[idx], blocks)
    net.eval()


def probe_epoch(features: torch.Tensor, labels: torch.Tensor, head: nn.Module, opt: torch.optim.Optimizer,
                batch_size: int = 64) -> float:
    """One epoch of the straightforward probe (Dropout + Linear + Adam) on cached features; returns the mean loss."""
    head.train()
    running = 0.0
    for idx in torch.randperm(features.shape[0]).split(batch_size):
        loss = F.cross_entropy(head(features[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
    return running / max(1, -(-features.shape[0] // batch_size))
