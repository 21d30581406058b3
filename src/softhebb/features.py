"""Features of the frozen network: what the linear probe (or any downstream model) trains on."""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

import torch

from . import _cpu
from .batching import Augment, Images, as_input, autocast, batch_seed, inputs_in_order, iterate_batches, progress_bar
from .network import SoftHebbNet, feature_shapes


class PrefixCache:
    """The output of the frozen blocks [0, depth) for every image of an in-memory set, in one buffer that is
    advanced in place a block at a time (eval mode, ``batch_size`` rows at a time, by default ``forward_chunk``).

    A successive Hebbian stage gathers its input rows from it instead of recomputing its frozen prefix for every
    batch, and once the last stage is trained one more advance turns the buffer into the training features
    (``extract_features(..., cache=)``). Rows go through the same kernels in the same memory layout as a batch
    through ``_prefix`` (reloaded rows get back the layout the chain gave them), so training from the cache and
    features from it are bit-identical to computing them batch by batch. The buffer is as wide as the widest
    block output: for the CIFAR network as large as the training features, which it becomes.
    """

    def __init__(self, model: SoftHebbNet, images: torch.Tensor, batch_size: int | None = None) -> None:
        self.model, self.images = model, images
        self.batch_size = batch_size or forward_chunk(model, images.device)
        self.depth, self.shape, self.dtype, self.channels_last = 0, tuple(images.shape[1:]), torch.float32, False
        self.buffer: torch.Tensor | None = None

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The cached outputs of rows ``idx``, as block ``depth`` would get them from the blocks before it."""
        x = self.buffer[:, :math.prod(self.shape)].index_select(0, idx).view(-1, *self.shape).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def advance(self, depth: int, precision: str = "fp32") -> torch.Tensor:
        """Pass every row through blocks [self.depth, depth) in place; returns the (rows, width) view of the result."""
        blocks = self.model.blocks[self.depth:depth]
        if self.buffer is None:
            widths = [math.prod(s) for s in feature_shapes(self.model.preset, self.model.in_shape)]
            self.buffer = torch.empty(len(self.images), max(widths), device=self.images.device)
        for block in blocks:
            block.eval()
        n = len(self.images)
        with autocast(self.images.device, precision):
            for s in range(0, n, self.batch_size):
                if self.depth == 0:
                    x = frozen_forward(blocks, as_input(self.images[s:s + self.batch_size]))
                else:
                    x = frozen_forward(blocks, self.rows(torch.arange(s, min(s + self.batch_size, n), device=self.buffer.device)))
                self.buffer[s:s + x.shape[0], :x[0].numel()] = x.flatten(1)
        self.depth, self.shape, self.dtype = depth, tuple(x.shape[1:]), x.dtype
        self.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return self.buffer[:, :math.prod(self.shape)]


def frozen_forward(blocks: Iterable[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Frozen blocks applied to a batch, each conv in the memory layout of ``conv_layout``: every eval-mode path
    goes through here, so they all compute the same values bit for bit."""
    for block in blocks:
        layout = conv_layout(block, x)
        x = block(x if layout is None else x.contiguous(memory_format=layout))
    return x


NCHW_WEIGHT_BYTES = 16 * 2**20  # frozen CPU convs with larger weights run NCHW (conv_layout)


def conv_layout(block: torch.nn.Module, x: torch.Tensor) -> torch.memory_format | None:
    """Channels-last, except on CPU for conv weights over 16 MiB, where oneDNN's NCHW kernels are faster.

    Measured with 2 threads on an Intel Xeon (fp32 / bf16 GFLOP/s, NCHW vs channels-last): 96→384 3×3
    177 vs 269 / 613 vs 979, 384→1536 (21 MiB in fp32) 241 vs 223, 768→3072 246 vs 127 / 339 vs 303;
    the whole CIFAR network's features ran 16 % faster channels-last than NCHW on an AMD EPYC.
    """
    w = getattr(getattr(block, "layer", None), "weight", None)
    if w is None or w.dim() != 4 or x.dim() != 4:
        return None  # not a conv: its input stays as it is
    big = x.device.type == "cpu" and w.numel() * x.element_size() > NCHW_WEIGHT_BYTES
    return torch.contiguous_format if big else torch.channels_last


def forward_chunk(model: SoftHebbNet, device: torch.device) -> int:
    """Rows per forward of the frozen network when the caller gives no batch size: 250 on GPUs; on CPU
    ``_cpu.forward_rows`` of the widest block output."""
    if device.type != "cpu":
        return 250
    shape, widest = tuple(model.in_shape), 1
    for block, out in zip(model.blocks, feature_shapes(model.preset, model.in_shape)):
        spatial = math.prod(shape[1:]) if len(shape) == 3 and block.cfg["type"] == "conv" else 1
        widest = max(widest, block.cfg["out"] * spatial)  # an upper bound for strided convs
        shape = out
    return _cpu.forward_rows(4 * widest)


@torch.no_grad()
def extract_features(model: SoftHebbNet, images: Images, batch_size: int | None = None, progress: bool = False,
                     dtype: torch.dtype = torch.float32, precision: str = "fp32", workers: int = 0,
                     cache: PrefixCache | None = None) -> torch.Tensor:
    """Flattened outputs of all hidden blocks (eval mode), computed once for the whole probe, ``batch_size`` rows
    at a time (default: ``forward_chunk``).

    ``precision="bf16"`` computes them under bf16 autocast; they are stored as ``dtype``. ``cache``: the
    ``PrefixCache`` of ``images`` that ``hebbian_phase`` returned; only the blocks after it run, in its buffer
    (which then holds the features: a view of it is returned). A model whose classifier also reads hidden blocks
    (``probe_grid``) or mirrored images (``mirror``) computes them from the images: the cache keeps only the last
    prefix of the images as they are.
    """
    model.eval()
    if cache is not None and model.reads_last_block_only:
        if cache.images is not images:
            raise ValueError("the prefix cache holds other images than those whose features are asked for")
        with progress_bar(len(images), "features", progress) as bar:  # one advance: the bar just marks the step
            features = cache.advance(len(model.blocks), precision)
            bar.update(len(images))
        return features if features.dtype == dtype else features.to(dtype)
    device = model.device
    n = len(images)
    out = torch.empty(n, model.num_features, dtype=dtype, device=device)
    batch_size = batch_size or forward_chunk(model, device)
    starts = range(0, n, batch_size)
    with progress_bar(n, "features", progress) as bar, autocast(device, precision):
        for start, x in zip(starts, inputs_in_order(images, starts, batch_size, device, workers)):
            out[start:start + x.shape[0]] = features_of(model, x)
            bar.update(x.shape[0])
    return out


def features_of(model: SoftHebbNet, x: torch.Tensor) -> torch.Tensor:
    """What the classifier reads (``SoftHebbNet.readout``), through ``frozen_forward``'s layouts."""
    if model.reads_last_block_only:
        return frozen_forward(model.blocks, x).flatten(1)
    return model.readout(x, lambda block, h: frozen_forward([block], h))


class StreamedFeatures:
    """Features of ``images`` computed batch by batch when the probe asks for them: recomputed every epoch
    from freshly augmented images (the paper's STL-10 / ImageNette / ImageNet probes), or streamed because
    there are too many rows to keep. ``train_probe`` and ``evaluate`` take it in place of a cached feature tensor."""

    def __init__(self, model: SoftHebbNet, images: Images, augment: Augment = False, seed: int = 0,
                 precision: str = "fp32", workers: int = 0, batch_size: int = 250) -> None:
        self.model, self.images, self.augment, self.seed = model, images, augment, seed
        self.precision, self.workers, self.batch_size = precision, workers, batch_size
        self.shape = (len(images), model.num_features)
        self.device = model.device

    @torch.no_grad()
    def iterate(self, batches: Sequence[torch.Tensor], epoch: int = 0) -> Iterator[torch.Tensor]:
        """Features of each index batch in order. Consecutive batches are computed together, about
        ``batch_size`` rows at a time (a probe batch of 64 is too small a forward); augmentation is
        seeded by (seed, epoch, group), so it depends on ``batch_size`` too."""
        for block in self.model.blocks:  # frozen: running BN statistics (the head may be in train mode)
            block.eval()
        groups: list[list[torch.Tensor]] = []
        rows = 0
        for idx in batches:
            if not groups or rows + idx.numel() > self.batch_size:
                groups.append([])
                rows = 0
            groups[-1].append(idx)
            rows += idx.numel()
        seeds = [batch_seed(self.seed, epoch, g) for g in range(len(groups))]
        for group, x in zip(groups, iterate_batches(self.images, [torch.cat(g) for g in groups], self.device,
                                                    self.augment, seeds, self.workers)):
            with autocast(self.device, self.precision):
                f = features_of(self.model, x)
            yield from f.split([b.numel() for b in group])  # outside autocast: the head must not run under it


@torch.no_grad()
def feature_views(streamed: StreamedFeatures, views: int, dtype: torch.dtype = torch.float32,
                  progress: bool = False) -> torch.Tensor:
    """``views`` augmented copies of every row's features, computed once: a (views, n, features) tensor.

    A probe on augmented images then gathers rows like a cached probe, drawing one view per row each epoch
    (``train_probe``), instead of running the network every epoch: ``views`` forward passes instead of one
    per epoch, for ``views`` times the memory. View v is augmented as ``streamed.iterate`` does for
    "epoch" -1 - v, so no view repeats the crops of a streamed epoch.
    """
    n, width = streamed.shape
    out = torch.empty(views, n, width, dtype=dtype, device=streamed.device)
    size = streamed.batch_size
    batches = [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]
    with progress_bar(views * n, "feature views", progress) as bar:
        for v in range(views):
            for idx, f in zip(batches, streamed.iterate(batches, epoch=-1 - v)):
                out[v, int(idx[0]):int(idx[0]) + idx.numel()] = f
                bar.update(idx.numel())
    return out

