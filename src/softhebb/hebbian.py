"""The label-free Hebbian phase: every Hebbian block learns from unlabeled images, block after block."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from .batching import Checkpoint, Images, Augment, Logger, autocast, batch_seed, index_batches, iterate_batches, progress_bar
from .features import PrefixCache, frozen_forward
from .layers import NonFiniteError
from .network import SoftHebbNet

if TYPE_CHECKING:
    from .distributed import Parallel

MODES = ("successive", "simultaneous")  # of hebbian_phase; runs also have "hybrid" (softhebb.hybrid)


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
    gen = torch.Generator().manual_seed(seed)
    where = images.device if isinstance(images, torch.Tensor) else "cpu"
    orders = [torch.randperm(n, generator=gen).to(where) for _ in range(epochs)]
    first = (start["stage"], start["epoch"], start["batch"]) if start else (0, 0, 0)
    if parallel is not None:
        parallel.check_batches(n, batch_size)
        parallel.sync_batchnorm(model)  # the trained block's BN must see the global batch's statistics
    run = _Stage(model, images, mode, batch_size, seed, parallel, precision, augment, workers, cache)
    for s, stage in enumerate(stages):
        if s < first[0]:
            continue
        run.begin(s, stage, epochs, first)
        start_time = time.perf_counter()
        for epoch in range(epochs):
            if (s, epoch) < first[:2]:
                continue
            skip = first[2] if (s, epoch) == first[:2] else 0
            desc = f"hebbian block {'+'.join(str(i) for i in stage)} epoch {epoch + 1}/{epochs}"
            with progress_bar(n, desc, progress) as bar, torch.no_grad():
                bar.update(min(skip * batch_size, n))
                for b, idx in run.epoch(epoch, orders[epoch], skip):
                    bar.update(idx.numel())
                    if on_batch is not None:
                        on_batch({"stage": s, "epoch": epoch, "batch": b + 1})
                    if checkpoint_every and (b + 1) % checkpoint_every == 0 and b + 1 < run.n_batches:
                        run.save(checkpoint, epoch, b + 1)
            run.save(checkpoint if checkpoint_every else None, epoch, run.n_batches)
            if log:
                with _summed_counters(parallel, run.layers):
                    for i in stage:
                        log({"phase": "hebbian", "block": i, "epoch": epoch + 1,
                             "seconds": round(time.perf_counter() - start_time, 3), **model.blocks[i].layer.stats()})
    model.eval()
    return cache


class _Stage:
    """The blocks trained together in one stage of ``hebbian_phase``, and how their batches reach them."""

    def __init__(self, model: SoftHebbNet, images: Images, mode: str, batch_size: int, seed: int,
                 parallel: Parallel | None, precision: str, augment: Augment, workers: int,
                 cache: PrefixCache | None) -> None:
        self.model, self.images, self.mode, self.batch_size, self.seed = model, images, mode, batch_size, seed
        self.parallel, self.precision, self.augment, self.workers, self.cache = parallel, precision, augment, workers, cache
        self.n_batches = math.ceil(len(images) / batch_size)

    def begin(self, s: int, stage: list[int], epochs: int, first: tuple[int, int, int]) -> None:
        """Put stage ``s`` in training mode; ``first`` is where a resumed phase continues."""
        self.s, self.stage, self.depth = s, stage, max(stage) + 1
        self.layers = [self.model.blocks[i].layer for i in stage]
        self.model.eval()
        for i in stage:
            self.model.blocks[i].train()
        for layer in self.layers:
            layer.schedule(epochs * len(self.images) / self.batch_size)
            layer.zero_pending()  # a stray forward before training must not leak into the first step
            if (s, 0, 0) >= first:  # a resumed stage keeps its restored counters
                layer.reset_stats()
        done_before = (first[1] * self.n_batches + first[2]) if s == first[0] else 0
        self.update0 = [int(layer.num_updates) - done_before for layer in self.layers]  # to name the batch of a NaN

    def epoch(self, epoch: int, order: torch.Tensor, skip: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Train on the batches of ``order`` from batch ``skip`` on; yields (batch number, its indices) after each update."""
        batches = list(index_batches(order, self.batch_size))[skip:]
        device = self.model.device
        if self.cache is not None and self.depth > 1:
            if self.cache.depth != self.depth - 1:
                self.cache.advance(self.depth - 1, self.precision)
            inputs, before = (self.cache.rows(idx) for idx in batches), []
        else:
            local = [self.parallel.shard(idx) for idx in batches] if self.parallel is not None else batches
            seeds = [batch_seed(self.seed, self.s, epoch, b) for b in range(skip, self.n_batches)]
            inputs = iterate_batches(self.images, local, device, self.augment, seeds, self.workers)
            before = self.model.blocks[:self.depth - 1]
        for b, idx, x in zip(range(skip, self.n_batches), batches, inputs):
            with autocast(device, self.precision):
                if self.mode == "successive":  # frozen blocks in eval mode: computed as every eval-mode path does
                    h = frozen_forward(before, x) if len(before) else x
                else:  # blocks learning from this same batch: NCHW, as the Hebbian layers take it
                    h = x
                    for block in before:
                        h = block(h)
                last = self.model.blocks[self.depth - 1]
                last.layer(last.pre(h.contiguous()))  # NCHW into the trained layer; its activation and pool are not needed
            if self.parallel is not None:
                self.parallel.reduce_pending(self.layers)
            try:
                for layer in self.layers:
                    layer.step()
            except NonFiniteError:
                self.save(None, epoch, b + 1)  # raises the error with the block and batch named
                raise
            yield b, idx

    def save(self, checkpoint: Checkpoint | None, epoch: int, batch: int) -> None:
        """Check the weights for NaN/Inf (one host sync), then checkpoint the position of the next batch."""
        check_finite(self.model, self.stage, self.update0, self.n_batches)
        if checkpoint:
            with _summed_counters(self.parallel, self.layers):
                checkpoint({"stage": self.s, "epoch": epoch, "batch": batch})


def _summed_counters(parallel: Parallel | None, layers: list) -> contextlib.AbstractContextManager:
    return parallel.summed_counters(layers) if parallel is not None else contextlib.nullcontext()


def check_finite(model: SoftHebbNet, stage: list[int], update0: list[int], n_batches: int) -> None:
    """Raise NonFiniteError naming the block and batch of the first update that produced NaN/Inf weights."""
    firsts = torch.stack([model.blocks[i].layer.first_nonfinite_update for i in stage]).tolist()  # one host sync
    bad = [(u - u0, i) for u, u0, i in zip(firsts, update0, stage) if u >= 0]
    if bad:
        k, i = min(bad)
        epoch, batch = divmod(k - 1, n_batches)
        layer = model.blocks[i].layer
        raise NonFiniteError(
            f"block {i} ({type(layer).__name__}, {layer.rule_repr()}): the Hebbian update of batch {batch + 1}/{n_batches} "
            f"in epoch {epoch + 1} was NaN or Inf, so it was refused and the weights are those before it. Lower its lr, "
            f"t_invert or power_lr, or check the input images; training stopped before saving anything after that batch")

