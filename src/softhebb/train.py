"""The two training phases: the label-free Hebbian phase, then the linear probe on frozen features.

Images stay uint8 until a batch is taken; ``as_input`` turns a batch into [0, 1] floats, the
only preprocessing the paper uses for array datasets (the first block's BatchNorm standardises).
``Images`` are either a uint8 tensor (in memory, possibly on the GPU) or a dataset from
``softhebb.data`` (STL-10's memory-mapped unlabeled split, image folders decoded per batch, in
worker processes if asked); ``load_batch`` / ``iterate_batches`` hide the difference.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections import Counter
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .augment import augment_batch, crop_flip, normalize
from .data import DatasetLike
from .layers import Dropout
from .network import SoftHebbNet, feature_shapes

if TYPE_CHECKING:
    from .distributed import Parallel

MODES = ("successive", "simultaneous")  # of hebbian_phase; runs also have "hybrid" (train_hybrid)
Logger = Callable[[dict], None]
Checkpoint = Callable[[dict], None]


Images = Union[torch.Tensor, DatasetLike]
# False: none; True: the dataset's own training augmentation (reference §4.3: crop + flip for arrays,
# RandomResizedCrop + flip for image folders); a name of augment.BATCH_AUGMENTATIONS ("shift", "affine", "noise").
Augment = Union[bool, str]


class NonFiniteError(RuntimeError):
    """A Hebbian update made weights NaN or Inf; training stops before anything bad is checkpointed."""


def as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 in [0, 1]."""
    return images.float().div_(255.0)


def _device(model: SoftHebbNet) -> torch.device:
    """Where the model lives; images may stay (uint8) elsewhere and move one batch at a time."""
    return model.classifier.weight.device


def batch_seed(seed: int, *keys: int) -> int:
    """A seed for one batch's augmentation, from the run seed and the batch's place (stage, epoch, batch):
    the same images get the same crops whatever the number of workers, and a resumed run repeats them."""
    h = seed
    for k in keys:
        h = (h * 1_000_003 + k) % (2 ** 62)
    return h


def load_batch(images: Images, idx: torch.Tensor, device: torch.device, augment: Augment = False,
               seed: int | None = None) -> torch.Tensor:
    """Model input for rows ``idx``: float32 on ``device``, in [0, 1] (ImageNet-normalised for image folders),
    augmented as ``augment`` says (see ``Augment``)."""
    if augment and seed is None:
        raise ValueError("augmented batches need a seed (batch_seed): the global RNG would shift the dropout masks")
    gen = torch.Generator().manual_seed(seed) if augment else None
    if isinstance(images, torch.Tensor):
        x = images.index_select(0, idx.to(images.device))
        return _to_input(crop_flip(x, 4, gen) if augment is True else x, device, augment, gen)
    return _to_input(images.get_images(idx.cpu(), augment is True, gen), device, augment, gen, images.mean_std)


def _to_input(x: torch.Tensor, device: torch.device, augment: Augment, gen: torch.Generator | None,
              mean_std: tuple | None = None) -> torch.Tensor:
    """A decoded uint8 batch -> [0, 1] floats on ``device``, then the named augmentation (on [0, 1] pixels,
    whatever the dataset's normalisation), then the dataset's mean/std."""
    x = as_input(x.to(device, non_blocking=True))
    if isinstance(augment, str):
        x = augment_batch(x, augment, gen)
    return normalize(x, mean_std) if mean_std is not None else x


class _DecodedBatches(torch.utils.data.Dataset):
    """Batch b of a list of index batches, decoded (and augmented) in a DataLoader worker."""

    def __init__(self, images: DatasetLike, batches: Sequence[torch.Tensor], augment: Augment, seeds: Sequence[int]) -> None:
        # CPU indices: a worker process must not touch CUDA
        self.images, self.batches, self.augment, self.seeds = images, [b.cpu() for b in batches], augment, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor:
        own = self.augment is True  # a named augmentation is applied after decoding, in the main process
        gen = torch.Generator().manual_seed(self.seeds[b]) if own else None
        return self.images.get_images(self.batches[b], own, gen)


def iterate_batches(images: Images, batches: Sequence[torch.Tensor], device: torch.device, augment: Augment = False,
                    seeds: Sequence[int] | None = None, workers: int = 0) -> Iterator[torch.Tensor]:
    """Model inputs for each index batch in order (``seeds[b]``: batch b's augmentation seed).

    Datasets (not in-memory tensors) with ``workers`` > 0 decode in that many processes, a few batches ahead.
    """
    if augment and seeds is None:
        raise ValueError("augmented batches need per-batch seeds (batch_seed)")
    seeds = seeds if seeds is not None else [None] * len(batches)
    if isinstance(images, torch.Tensor) or workers == 0:
        for idx, seed in zip(batches, seeds):
            yield load_batch(images, idx, device, augment, seed)
        return
    # A private generator: the loader's base seed would otherwise be drawn from the global RNG, shifting
    # the probe's dropout masks with the number of workers.
    loader = torch.utils.data.DataLoader(_DecodedBatches(images, batches, augment, seeds), batch_size=None,
                                         num_workers=workers, prefetch_factor=4, pin_memory=device.type == "cuda",
                                         generator=torch.Generator())
    for x, seed in zip(loader, seeds):
        gen = torch.Generator().manual_seed(seed) if isinstance(augment, str) else None
        yield _to_input(x, device, augment, gen, images.mean_std)


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
        with _autocast(self.images.device, precision):
            for s in range(0, n, self.batch_size):
                if self.depth == 0:
                    x = _prefix(blocks, as_input(self.images[s:s + self.batch_size]))
                else:
                    x = _prefix(blocks, self.rows(torch.arange(s, min(s + self.batch_size, n), device=self.buffer.device)))
                self.buffer[s:s + x.shape[0], :x[0].numel()] = x.flatten(1)
        self.depth, self.shape, self.dtype = depth, tuple(x.shape[1:]), x.dtype
        self.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return self.buffer[:, :math.prod(self.shape)]


def _prefix(blocks: Iterable[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
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
    """Rows per forward of the frozen network when the caller gives no batch size: 250 on GPUs; on CPU as many
    as keep each block's conv output under 16 MiB (about 40 CIFAR images). glibc hands freed blocks over
    32 MiB back to the system, so every larger tensor is page-faulted in again on the next batch: 900,000
    faults per 1,000 CIFAR images at 250 rows, and 20-30 % slower features on an Intel Xeon."""
    if device.type != "cpu":
        return 250
    shape, widest = tuple(model.in_shape), 1
    for block, out in zip(model.blocks, feature_shapes(model.preset, model.in_shape)):
        spatial = math.prod(shape[1:]) if len(shape) == 3 and block.cfg["type"] == "conv" else 1
        widest = max(widest, block.cfg["out"] * spatial)  # an upper bound for strided convs
        shape = out
    return max(1, (16 * 2**20) // (4 * widest))


# glibc mallopt parameters and the values that its dynamic threshold settles on for large blocks (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_SETTLED = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20}


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside this context freed CPU memory stays in the process heap, for the next batch to reuse (glibc only;
    elsewhere a no-op). glibc hands every freed block over 32 MiB back to the system, so a training step whose
    tensors are larger page-faults them all in again: at Hebbian batch 128 on CIFAR (50 MB per activation)
    about 1,600 faults per image, and 10-20 % slower on an Intel Xeon (docs/RESULTS.md). On exit, glibc's
    settled defaults come back (replacing any MALLOC_* environment settings) and the free memory is returned
    to the system. Every CPU epoch of ``hebbian_phase`` runs inside it."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)  # large blocks come from the heap ...
    libc.mallopt(_M_TRIM_THRESHOLD, 2**30)  # ... and the heap's free top is kept, up to 1 GiB
    try:
        yield
    finally:
        for param, value in _GLIBC_SETTLED.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)


def _batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, order.numel(), batch_size):
        yield order[start:start + batch_size]


def _progress(total: int, desc: str, enabled: bool, unit: str = "img") -> tqdm:
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=0.5 if tty else 30, unit=unit,
                unit_scale=unit == "img", leave=tty, dynamic_ncols=True)


def hebbian_phase(
    model: SoftHebbNet,
    images: Images,
    mode: str = "successive",
    epochs: int = 1,
    batch_size: int = 10,
    seed: int = 0,
    log: Logger | None = None,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
    start: dict | None = None,
    parallel: Parallel | None = None,
    precision: str = "fp32",
    on_batch: Callable[[dict], None] | None = None,
    augment: Augment = False,
    workers: int = 0,
    cache_prefix: bool = True,
) -> PrefixCache | None:
    """Train the Hebbian blocks without labels.

    successive (the paper's greedy schedule): block ℓ trains alone for ``epochs`` while the
    blocks before it are frozen in eval mode (their BatchNorms use running statistics); only
    the prefix up to block ℓ is computed. Block ℓ's own BatchNorm uses batch statistics and
    updates its running statistics during its epoch(s).
    simultaneous: every Hebbian block learns in the same pass; within a batch each layer
    uses its pre-update weights (like the original's "consecutive" mode and demo.py).

    The data order is one seeded permutation per epoch, identical for every block.

    Every ``checkpoint_every`` batches (and at each epoch end) the weights are checked for NaN/Inf
    — one host sync, never per batch — and then ``checkpoint(position)`` is called, with position
    {"stage", "epoch", "batch"} = the next batch to train (the end-of-epoch one comes before that
    epoch's log row). ``start`` is such a position: the caller has restored the model state saved
    with it, and training continues exactly where it was. ``parallel`` splits every global batch
    over ranks (see softhebb.distributed). ``precision="bf16"`` runs the forward and the Σỹx / Σỹu
    products under bf16 autocast; the sums are accumulated and applied in fp32. ``on_batch(position)``
    runs after every update, with the position of the next batch (for monitoring). ``augment``: train on
    augmented images (the paper's ImageNet protocol), seeded per batch; ``workers``: decoding processes for
    datasets read from files.

    ``cache_prefix``: in successive mode on an in-memory tensor without augmentation (one process), each
    stage computes its frozen prefix once per image (``PrefixCache``) instead of once per image and epoch,
    with the same weights bit for bit; the cache is returned for ``extract_features``, else None.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_size < 1 or epochs < 0 or checkpoint_every < 0:
        raise ValueError(f"need batch_size >= 1, epochs >= 0 and checkpoint_every >= 0, "
                         f"got {batch_size}, {epochs}, {checkpoint_every}")
    hebb = model.hebbian_block_indices()
    if not hebb or epochs == 0:
        return None
    stages = [[i] for i in hebb] if mode == "successive" else [hebb]
    cache = PrefixCache(model, images) if (cache_prefix and mode == "successive" and len(stages) > 1 and not augment
                                           and isinstance(images, torch.Tensor) and parallel is None) else None
    n = len(images)
    n_batches = math.ceil(n / batch_size)
    device = _device(model)
    gen = torch.Generator().manual_seed(seed)
    where = images.device if isinstance(images, torch.Tensor) else "cpu"
    orders = [torch.randperm(n, generator=gen).to(where) for _ in range(epochs)]
    first = (start["stage"], start["epoch"], start["batch"]) if start else (0, 0, 0)
    if parallel is not None:
        parallel.check_batches(n, batch_size)
        parallel.sync_batchnorm(model)  # the trained block's BN must see the global batch's statistics
    keep_memory = reuse_freed_memory if device.type == "cpu" else contextlib.nullcontext
    for s, stage in enumerate(stages):
        if s < first[0]:
            continue
        depth = max(stage) + 1
        layers = [model.blocks[i].layer for i in stage]
        model.eval()
        for i in stage:
            model.blocks[i].train()
        for layer in layers:
            layer.total_updates = epochs * n / batch_size
            layer.zero_pending()  # a stray forward before training must not leak into the first step
            if (s, 0, 0) >= first:  # a resumed stage keeps its restored counters
                layer.reset_stats()
        done_before = (first[1] * n_batches + first[2]) if s == first[0] else 0
        update0 = [int(layer.num_updates) - done_before for layer in layers]  # to name the batch of a NaN
        start_time = time.perf_counter()
        name = "+".join(str(i) for i in stage)
        for epoch in range(epochs):
            if (s, epoch) < first[:2]:
                continue
            skip = first[2] if (s, epoch) == first[:2] else 0
            with _progress(n, f"hebbian block {name} epoch {epoch + 1}/{epochs}", progress) as bar, torch.no_grad(), \
                keep_memory():
                bar.update(min(skip * batch_size, n))
                batches = list(_batches(orders[epoch], batch_size))[skip:]
                if cache is not None and depth > 1:
                    if cache.depth != depth - 1:
                        cache.advance(depth - 1, precision)
                    inputs, before = (cache.rows(idx) for idx in batches), []
                else:
                    local = [parallel.shard(idx) for idx in batches] if parallel is not None else batches
                    seeds = [batch_seed(seed, s, epoch, b) for b in range(skip, n_batches)]
                    inputs, before = iterate_batches(images, local, device, augment, seeds, workers), model.blocks[:depth - 1]
                for b, idx, x in zip(range(skip, n_batches), batches, inputs):
                    with _autocast(device, precision):
                        if mode == "successive":  # frozen blocks in eval mode: computed as every eval-mode path does
                            h = _prefix(before, x) if len(before) else x
                        else:  # blocks learning from this same batch: NCHW, as the Hebbian layers take it
                            h = x
                            for block in before:
                                h = block(h)
                        last = model.blocks[depth - 1]
                        # NCHW into the trained layer; its activation and pool are not needed
                        last.layer(last.pre(h.contiguous()))
                    if parallel is not None:
                        parallel.reduce_pending(layers)
                    for layer in layers:
                        layer.step()
                    bar.update(idx.numel())
                    if on_batch is not None:
                        on_batch({"stage": s, "epoch": epoch, "batch": b + 1})
                    if checkpoint_every and (b + 1) % checkpoint_every == 0 and b + 1 < n_batches:
                        _check_finite(model, stage, update0, n_batches)
                        if checkpoint:
                            with _summed_counters(parallel, layers):
                                checkpoint({"stage": s, "epoch": epoch, "batch": b + 1})
            _check_finite(model, stage, update0, n_batches)
            with _summed_counters(parallel, layers):
                if checkpoint and checkpoint_every:
                    checkpoint({"stage": s, "epoch": epoch, "batch": n_batches})
                if log:
                    for i in stage:
                        log({"phase": "hebbian", "block": i, "epoch": epoch + 1,
                             "seconds": round(time.perf_counter() - start_time, 3), **model.blocks[i].layer.stats()})
    model.eval()
    return cache


def _summed_counters(parallel: Parallel | None, layers: list) -> contextlib.AbstractContextManager:
    return parallel.summed_counters(layers) if parallel is not None else contextlib.nullcontext()


def _check_finite(model: SoftHebbNet, stage: list[int], update0: list[int], n_batches: int) -> None:
    """Raise NonFiniteError naming the block and batch of the first update that produced NaN/Inf weights."""
    firsts = torch.stack([model.blocks[i].layer.first_nonfinite_update for i in stage]).tolist()  # one host sync
    bad = [(u - u0, i) for u, u0, i in zip(firsts, update0, stage) if u >= 0]
    if bad:
        k, i = min(bad)
        epoch, batch = divmod(k - 1, n_batches)
        layer = model.blocks[i].layer
        raise NonFiniteError(
            f"block {i} ({type(layer).__name__}, {layer._hebb_repr()}): the Hebbian update of batch {batch + 1}/{n_batches} "
            f"in epoch {epoch + 1} made its weights NaN or Inf. Lower its lr, t_invert or power_lr, or check the input "
            f"images; training stopped before saving anything after that batch")


PRECISIONS = ("fp32", "bf16")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def extract_features(model: SoftHebbNet, images: Images, batch_size: int | None = None, progress: bool = False,
                     dtype: torch.dtype = torch.float32, precision: str = "fp32", workers: int = 0,
                     cache: PrefixCache | None = None) -> torch.Tensor:
    """Flattened outputs of all hidden blocks (eval mode), computed once for the whole probe, ``batch_size`` rows
    at a time (default: ``forward_chunk``).

    ``precision="bf16"`` computes them under bf16 autocast; they are stored as ``dtype``. ``cache``: the
    ``PrefixCache`` of ``images`` that ``hebbian_phase`` returned; only the blocks after it run, in its buffer
    (which then holds the features: a view of it is returned).
    """
    model.eval()
    if cache is not None:
        if cache.images is not images:
            raise ValueError("the prefix cache holds other images than those whose features are asked for")
        with _progress(len(images), "features", progress) as bar:  # one advance: the bar just marks the step
            features = cache.advance(len(model.blocks), precision)
            bar.update(len(images))
        return features if features.dtype == dtype else features.to(dtype)
    device = _device(model)
    n = len(images)
    out = torch.empty(n, model.num_features, dtype=dtype, device=device)
    batch_size = batch_size or forward_chunk(model, device)
    starts = range(0, n, batch_size)
    with _progress(n, "features", progress) as bar, _autocast(device, precision):
        for start, x in zip(starts, _inputs_in_order(images, starts, batch_size, device, workers)):
            out[start:start + x.shape[0]] = _features(model, x)
            bar.update(x.shape[0])
    return out


def _inputs_in_order(images: Images, starts: range, batch_size: int, device: torch.device,
                     workers: int = 0) -> Iterator[torch.Tensor]:
    """Model inputs of consecutive rows: slices of an in-memory tensor (no index copy, no sync), else decoded batches."""
    n = len(images)
    if isinstance(images, torch.Tensor):
        return (as_input(images[s:s + batch_size].to(device, non_blocking=True)) for s in starts)
    return iterate_batches(images, [torch.arange(s, min(s + batch_size, n)) for s in starts], device, workers=workers)


def _features(model: SoftHebbNet, x: torch.Tensor) -> torch.Tensor:
    return _prefix(model.blocks, x).flatten(1)


class StreamedFeatures:
    """Features of ``images`` computed batch by batch when the probe asks for them: recomputed every epoch
    from freshly augmented images (the paper's STL-10 / ImageNette / ImageNet probes), or streamed because
    there are too many rows to keep. ``train_probe`` and ``evaluate`` take it in place of a cached feature tensor."""

    def __init__(self, model: SoftHebbNet, images: Images, augment: Augment = False, seed: int = 0,
                 precision: str = "fp32", workers: int = 0, batch_size: int = 250) -> None:
        self.model, self.images, self.augment, self.seed = model, images, augment, seed
        self.precision, self.workers, self.batch_size = precision, workers, batch_size
        self.shape = (len(images), model.num_features)
        self.device = _device(model)

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
            with _autocast(self.device, self.precision):
                f = _features(self.model, x)
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
    with _progress(views * n, "feature views", progress) as bar:
        for v in range(views):
            for idx, f in zip(batches, streamed.iterate(batches, epoch=-1 - v)):
                out[v, int(idx[0]):int(idx[0]) + idx.numel()] = f
                bar.update(idx.numel())
    return out


def step_lr_milestones(epochs: int) -> list[int]:
    """Epochs after which the probe's learning rate halves (the original CustomStepLR)."""
    if epochs < 20:
        return []
    fractions = (0.5, 0.75) if epochs < 50 else (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9)
    return [int(f * epochs) for f in fractions]


@torch.no_grad()
def evaluate(model: SoftHebbNet, features: torch.Tensor | StreamedFeatures, labels: torch.Tensor, batch_size: int = 1000,
             parallel: Parallel | None = None) -> dict[str, float]:
    """Accuracy (%) and mean cross-entropy of the classifier head on precomputed features
    (with ``parallel``: this rank's share of them, summed over ranks)."""
    model.eval()
    loss = torch.zeros((), device=features.device)
    correct = torch.zeros((), dtype=torch.long, device=features.device)
    n = features.shape[0]
    if isinstance(features, StreamedFeatures):
        batch_size = min(batch_size, features.batch_size)  # a forward through the network, not a gather
        rows = features.iterate([torch.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)])
    else:
        rows = (features[s:s + batch_size] for s in range(0, n, batch_size))
    for start, x in zip(range(0, n, batch_size), rows):
        logits = model.head(x.float())
        y = labels[start:start + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    count = torch.tensor(features.shape[0], device=features.device)
    if parallel is not None:
        parallel.all_reduce_(loss, correct, count)
    n = int(count)
    return {"acc": 100.0 * int(correct) / n, "loss": float(loss) / n}


def train_probe(
    model: SoftHebbNet,
    train_features: torch.Tensor | StreamedFeatures,
    train_labels: torch.Tensor,
    test_features: torch.Tensor | StreamedFeatures,
    test_labels: torch.Tensor,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    eval_every: int = 10,
    log: Logger | None = None,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    start: dict | None = None,
    parallel: Parallel | None = None,
) -> dict[str, float]:
    """Train dropout + linear head with Adam and the step-halving schedule; report the final epoch.

    The reported number is the test accuracy after the last epoch, not the best epoch, as in the paper.
    ``checkpoint(state)`` is called after every epoch with what it takes to continue (epoch, Adam,
    schedule, data-order generator, RNG state, result so far); ``start`` is such a state, for a
    model whose weights the caller restored. With ``parallel``, the features and labels are this
    rank's rows (``Parallel.rows``) and the head's gradients are summed over ranks (see softhebb.distributed).
    ``StreamedFeatures`` are recomputed from (augmented) images every epoch instead of gathered.
    ``train_features`` of shape (views, n, features) (``feature_views``): each epoch trains on one view of
    every row, drawn by a generator of its own, so the data order is that of the same probe without views.
    """
    for f, y, name in ((train_features, train_labels, "train"), (test_features, test_labels, "test")):
        if f.shape[-2] != y.shape[0]:
            raise ValueError(f"{name}: {f.shape[-2]} feature rows but {y.shape[0]} labels")
    views = train_features.shape[0] if isinstance(train_features, torch.Tensor) and train_features.dim() == 3 else 0
    if views and parallel is not None:
        raise ValueError("feature views are not sharded over ranks: train a probe with views in one process")
    head = model.classifier
    torch.manual_seed(seed + (parallel.rank << 20 if parallel is not None else 0))  # dropout masks, different per rank
    device = train_features.device
    n = train_features.shape[-2] if parallel is None else parallel.total(train_features.shape[0], device)
    opt, sched, gen, first, result = adam_epochs(head.parameters(), lr, epochs, seed, device, start)
    with _progress(epochs, "probe", progress, unit="epoch") as bar, _overwriting(model.dropout):
        bar.update(first - 1)
        for epoch in range(first, epochs + 1):
            model.dropout.train()
            head.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            cur_lr = opt.param_groups[0]["lr"]
            order = torch.randperm(n, generator=gen)
            batches = (parallel.probe_batches(order, batch_size, device) if parallel is not None
                       else [(idx, idx.numel()) for idx in _batches(order.to(device), batch_size)])
            if isinstance(train_features, StreamedFeatures):  # decoded from CPU indices, labels gathered on the device
                rows = train_features.iterate(list(_batches(order, batch_size)), epoch)
            elif views:  # row i of view v is row v * n + i of the flattened views
                pick = torch.randint(views, (n,), generator=torch.Generator().manual_seed(batch_seed(seed, epoch)))
                flat, offset = train_features.flatten(0, 1), (pick * n).to(device)
                rows = (flat.index_select(0, idx + offset.index_select(0, idx)) for idx, _ in batches)
            else:
                rows = (train_features.index_select(0, idx) for idx, _ in batches)  # ~7x faster than [idx] on CPU
            for (idx, global_size), x in zip(batches, rows):
                y = train_labels[idx]
                logits = model.head(x.float())
                batch_loss = F.cross_entropy(logits, y, reduction="sum")
                opt.zero_grad(set_to_none=True)
                (batch_loss / global_size).backward()  # summed over ranks: the mean over the global batch
                if parallel is not None:
                    parallel.sum_grads(head)
                opt.step()
                loss_sum += batch_loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
            sched.step()
            if parallel is not None:
                parallel.all_reduce_(loss_sum, correct)
            row = {"phase": "probe", "epoch": epoch, "lr": cur_lr, "train_loss": float(loss_sum) / n,
                   "train_acc": 100.0 * int(correct) / n}
            if epoch == 1 or epoch % eval_every == 0 or epoch == epochs:
                test = evaluate(model, test_features, test_labels, parallel=parallel)
                row |= {"test_loss": test["loss"], "test_acc": test["acc"]}
                result = {"test_acc": test["acc"], "test_loss": test["loss"], "train_acc": row["train_acc"]}
            if log:
                log(row)
            if checkpoint:
                checkpoint(epoch_state(epoch, opt, sched, gen, device, result))
            bar.set_postfix(train_acc=f"{row['train_acc']:.2f}", test_acc=f"{result.get('test_acc', float('nan')):.2f}")
            bar.update(1)
    model.eval()
    return result


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
    device, n = _device(model), labels.numel()
    for x, y, name in ((images, labels, "train"), (test_images, test_labels, "test")):
        if len(x) != y.numel():
            raise ValueError(f"{name}: {len(x)} images but {y.numel()} labels")
    hebb = model.hebbian_block_indices()
    for i in hebb:
        model.blocks[i].layer.total_updates = epochs * n / batch_size  # as in hebbian_phase
        model.blocks[i].layer.zero_pending()
    torch.manual_seed(seed)  # dropout masks
    # gen: the data order of hebbian_phase with this seed
    opt, sched, gen, first, result = adam_epochs(model.classifier.parameters(), lr, epochs, seed, device, start)
    seen, n_batches = (first - 1) * n, math.ceil(n / batch_size)
    update0 = [int(model.blocks[i].layer.num_updates) - (first - 1) * n_batches for i in hebb]  # to name a NaN's batch
    with _progress(epochs * n, "hybrid", progress) as bar:
        bar.update(seen)
        for epoch in range(first, epochs + 1):
            model.train()
            for idx in _batches(torch.randperm(n, generator=gen), batch_size):
                x, y = load_batch(images, idx, device), labels[idx.to(labels.device)]
                with torch.no_grad():
                    features = model.features(x)  # the Hebbian layers accumulate their Σỹx, Σỹu here
                logits = model.head(features)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for i in hebb:
                    model.blocks[i].layer.step()
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
            _check_finite(model, hebb, update0, n_batches)  # before anything is evaluated or saved
            test = evaluate(model, extract_features(model, test_images), test_labels)
            result = {"test_acc": test["acc"], "test_loss": test["loss"]}
            if log:
                log({"phase": "hybrid", "epoch": epoch, "test_loss": test["loss"], "test_acc": test["acc"]})
            if checkpoint:
                checkpoint(epoch_state(epoch, opt, sched, gen, device, result))
            bar.set_postfix(test_acc=f"{test['acc']:.2f}")
    model.eval()
    return result


@contextlib.contextmanager
def _overwriting(dropout: Dropout) -> Iterator[None]:
    """The probe's rows are new tensors (gathered or computed per batch): its dropout may overwrite them."""
    before, dropout.inplace = dropout.inplace, True
    try:
        yield
    finally:
        dropout.inplace = before


def adam_epochs(params: Iterable[torch.nn.Parameter], lr: float, epochs: int, seed: int, device: torch.device,
                start: dict | None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.Generator,
                                             int, dict[str, float]]:
    """What a supervised loop (probe, hybrid, backprop) steps with: Adam (fused: one kernel per step, these loops
    are overhead-bound), the paper's step-halving schedule and a data-order generator seeded with ``seed``;
    continued from ``start`` (an ``epoch_state``) when given. Returns them with the first epoch to run and the
    result so far. Seed the global RNG (dropout masks) before calling: ``start`` restores it."""
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=step_lr_milestones(epochs), gamma=0.5)
    gen = torch.Generator().manual_seed(seed)
    first, result = restore_epoch_state(start, opt, sched, gen, device) if start is not None else (1, {})
    return opt, sched, gen, first, result


def epoch_state(epoch: int, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                gen: torch.Generator, device: torch.device, result: dict[str, float]) -> dict[str, Any]:
    """What a checkpoint after ``epoch`` of a supervised loop (probe, hybrid, backprop) needs to continue it exactly."""
    return {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "rng": _rng_state(device), "result": result}


def restore_epoch_state(start: dict[str, Any], opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                        gen: torch.Generator, device: torch.device) -> tuple[int, dict[str, float]]:
    """Load an ``epoch_state``; returns (the epoch to continue with, the result so far).

    Without "rng" (a probe resumed on another number of ranks) the dropout masks are fresh from here on.
    """
    opt.load_state_dict(start["optimizer"])
    sched.load_state_dict(start["scheduler"])
    sched.milestones = Counter(sched.milestones)  # a plain dict after the JSON round trip
    gen.set_state(start["generator"])
    if "rng" in start:
        _set_rng_state(start["rng"], device)
    return start["epoch"] + 1, dict(start["result"])


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
