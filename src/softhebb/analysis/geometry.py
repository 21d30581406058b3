"""Receptive-field geometry of a preset, computed from its kernels, strides, dilations and pools.

For every block we track three numbers per spatial axis (the standard recurrence):

    size   how many input pixels one output unit sees
    jump   input-pixel distance between two neighbouring output units
    start  input coordinate of the first pixel seen by output unit 0 (negative = padding)

so output unit (i, j) of a block sees the input window rows [start + i·jump, start + i·jump + size),
and the same for columns. A layer with kernel k, stride s, padding p and dilation d maps
(size, jump, start) to (size + (d(k−1))·jump, jump·s, start − p·jump). Presets have square
kernels and pools, so one number per axis suffices. A linear block sees the whole image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..network import SoftHebbNet, pool_params, feature_shapes, get_preset, resolve_preset


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of one block: ``conv_*`` at the layer output u, the rest at the block output."""

    block: int
    type: str
    conv_size: int
    conv_jump: int
    conv_start: int
    size: int
    jump: int
    start: int
    out_shape: tuple[int, ...]
    whole_image: bool = False  # a linear block (or anything after one) sees every pixel

    def window(self, i: int = 0, j: int = 0, after_pool: bool = True) -> tuple[int, int, int]:
        """(top, left, size) of the input window seen by output unit (i, j)."""
        if self.whole_image:
            return 0, 0, self.size
        size, jump, start = (self.size, self.jump, self.start) if after_pool else (self.conv_size, self.conv_jump, self.conv_start)
        return start + i * jump, start + j * jump, size

    def as_dict(self) -> dict:
        return {**asdict(self), "out_shape": list(self.out_shape)}


def _step(size: int, jump: int, start: int, k: int, s: int, p: int, d: int = 1) -> tuple[int, int, int]:
    return size + d * (k - 1) * jump, jump * s, start - p * jump


def receptive_fields(model_or_preset: SoftHebbNet | str | dict, in_shape: tuple[int, ...] | None = None) -> list[ReceptiveField]:
    """Theoretical receptive field of every block's layer output and block output."""
    if isinstance(model_or_preset, SoftHebbNet):
        preset, in_shape = model_or_preset.preset, in_shape or model_or_preset.in_shape
    else:
        preset = get_preset(model_or_preset) if isinstance(model_or_preset, str) else resolve_preset(model_or_preset)
    if in_shape is None:
        raise ValueError("in_shape is needed when a preset (not a model) is given")
    shapes = feature_shapes(preset, in_shape)
    full = max(in_shape[1:]) if len(in_shape) == 3 else 1
    size, jump, start, whole = 1, 1, 0, False
    out = []
    for i, (b, shape) in enumerate(zip(preset["blocks"], shapes)):
        if b["type"] == "linear" or whole:
            whole = True
            out.append(ReceptiveField(i, b["type"], full, 0, 0, full, 0, 0, tuple(shape), True))
            continue
        size, jump, start = _step(size, jump, start, b["kernel"], b["stride"], b["padding"], b["dilation"])
        conv = (size, jump, start)
        if b["pool"]:
            _, k, s, p = pool_params(b["pool"])
            size, jump, start = _step(size, jump, start, k, s, p)
        out.append(ReceptiveField(i, b["type"], *conv, size, jump, start, tuple(shape)))
    return out


def crop(images: torch.Tensor, top: int, left: int, size: int, fill: float = 0.0) -> torch.Tensor:
    """images[..., top:top+size, left:left+size], filling what falls outside the image with ``fill``."""
    h, w = images.shape[-2:]
    pad = (max(0, -left), max(0, left + size - w), max(0, -top), max(0, top + size - h))
    if any(pad):
        images = F.pad(images, pad, value=fill)
        top, left = top + pad[2], left + pad[0]
    return images[..., top:top + size, left:left + size]
