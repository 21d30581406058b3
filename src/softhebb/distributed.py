"""Data-parallel training with torch.distributed: ``torchrun --nproc-per-node=N -m softhebb.cli train ...``.

Every rank holds the whole (uint8) training set and the same model. NCCL runs the collectives on
GPUs, gloo on CPUs. Only rank 0 writes the run directory.

What equals a single process, and what does not:

* **Hebbian phase: equal**, up to float summation order, to one process with the same *global*
  batch ``hebb_batch``. Each rank forwards its contiguous slice of every global batch; the local
  Σỹx and Σỹu are summed over ranks before ``step()``, so the max-abs normalisation and the
  per-neuron rate see exactly the single-process sums, and every rank applies the same update.
  The BatchNorm of a block being trained uses batch statistics: they are summed over ranks
  (Σx, Σx², count in float64) so that normalisation and the running-statistics update are those of
  the global batch (``torch.nn.SyncBatchNorm`` has no CPU path). The win counters are kept per rank
  and summed when read (epoch logs, checkpoints). Every rank must get at least one image of every
  global batch, so ``hebb_batch`` ≥ N and a last partial batch of fewer than N images is refused.
* **Probe: equal up to the dropout masks.** Rank r owns the features of training images r, r+N,
  r+2N, …; every epoch all ranks draw the same permutation as one process would, and each global
  batch of ``probe_batch`` images is split by owner. Each rank's loss is its share of the mean over
  the *global* batch, and the classifier's gradients are summed over ranks after every backward, so
  gradients, Adam and the step schedule match one process. Dropout masks are drawn per rank (rank r
  seeds with seed + r·2²⁰), so they differ from one process's; with dropout 0 the head matches one
  process to float precision. Test accuracy and loss are summed over the ranks' shards of the test
  set.
* **Checkpoints** (rank 0 writes) hold the summed win counters and every rank's RNG state. A
  Hebbian checkpoint resumes on any number of ranks; a probe checkpoint resumed on another number
  continues with fresh dropout masks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from .layers import HebbianLayer


@dataclass(frozen=True)
class Parallel:
    """This process's place in the group, and the few collectives training needs."""

    rank: int
    world_size: int

    # -- Hebbian phase --------------------------------------------------------------------
    def check_batches(self, n: int, batch_size: int) -> None:
        """Every rank must forward at least one image of every global batch (the Hebbian sums of an empty batch fail)."""
        last = n % batch_size
        if batch_size < self.world_size or 0 < last < self.world_size:
            smallest = batch_size if batch_size < self.world_size else last
            raise ValueError(f"a Hebbian batch of {smallest} image(s) cannot be split over {self.world_size} processes "
                             f"({n} images, batch {batch_size}); choose a batch size (and --train-limit) such that every "
                             f"batch, including the last, has at least {self.world_size} images")

    def sync_batchnorm(self, model: nn.Module) -> None:
        sync_batchnorm(model)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch."""
        return idx.tensor_split(self.world_size)[self.rank]

    def reduce_pending(self, layers: Sequence[HebbianLayer]) -> None:
        """Sum every layer's pending Σỹx and Σỹu over ranks, in place."""
        self.all_reduce_(*(t for layer in layers if layer.pending for t in layer.pending))

    @contextmanager
    def summed_counters(self, layers: Sequence[HebbianLayer]) -> Iterator[None]:
        """Inside, the layers' win counters hold their sum over ranks; outside, each rank's own share again."""
        saved = [(layer.win_counts.clone(), layer.winner_y_sum.clone()) for layer in layers]
        self.all_reduce_(*(t for layer in layers for t in (layer.win_counts, layer.winner_y_sum)))
        try:
            yield
        finally:
            for layer, (counts, y_sum) in zip(layers, saved):
                layer.win_counts.copy_(counts)
                layer.winner_y_sum.copy_(y_sum)

    # -- probe ----------------------------------------------------------------------------
    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """The rows this rank owns for the probe: r, r+N, r+2N, …"""
        return t[self.rank::self.world_size]

    def probe_batches(self, order: torch.Tensor, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, int]]:
        """(local row indices, global batch size) for every global batch of the CPU permutation ``order``.

        Computed on the CPU and moved in one copy, so the loop never waits for the device per batch.
        """
        sizes, local = [], []
        for chunk in order.split(batch_size):
            mine = chunk[chunk % self.world_size == self.rank] // self.world_size
            local.append(mine)
            sizes.append((mine.numel(), chunk.numel()))
        flat = torch.cat(local).to(device, non_blocking=True)
        return list(zip(flat.split([s for s, _ in sizes]), [g for _, g in sizes]))

    def sum_grads(self, module: nn.Module) -> None:
        """Sum the gradients of ``module``'s parameters over ranks, in place (every rank has them after its
        backward, also for an empty share of a batch: zeros)."""
        self.all_reduce_(*(p.grad for p in module.parameters()))

    # -- plumbing -------------------------------------------------------------------------
    def all_reduce_(self, *tensors: torch.Tensor) -> None:
        """Sum every tensor over ranks, in place: all issued at once, then waited for."""
        for work in [dist.all_reduce(t, async_op=True) for t in tensors]:
            work.wait()

    def total(self, k: int, device: torch.device) -> int:
        t = torch.tensor([k], dtype=torch.long, device=device)
        dist.all_reduce(t)
        return int(t)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled: only ever our own objects)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


# -- BatchNorm over the global batch ------------------------------------------------------------

class _GlobalBatchNorm:
    """Mixin for BatchNorm{1,2}d: in training mode, statistics of the batch summed over all ranks.

    For the Hebbian phase only (no autograd through the all-reduce). Outside training mode, or
    without a process group, it is the plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        if not (bn.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)  # type: ignore[misc]
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        # float64 sums: E[x²] − E[x]² would lose digits in float32
        stats = torch.cat([x.sum(dims, dtype=torch.float64), x.square().sum(dims, dtype=torch.float64),
                           torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device)])
        dist.all_reduce(stats)
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean.square()).clamp_min(0)
        shape = (1, c) + (1,) * (x.dim() - 2)
        out = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + bn.eps).to(x.dtype).view(shape)
        if bn.affine:
            out = out * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.track_running_stats:
            # the same update as F.batch_norm: unbiased variance, cumulative average when momentum is None
            bn.num_batches_tracked.add_(1)
            f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - f).add_((mean * f).to(bn.running_mean.dtype))
            bn.running_var.mul_(1 - f).add_((var * (count / (count - 1).clamp_min(1)) * f).to(bn.running_var.dtype))
        return out


_GLOBAL_BN = {cls: type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {}) for cls in (nn.BatchNorm1d, nn.BatchNorm2d)}


def sync_batchnorm(model: nn.Module) -> None:
    """Make every BatchNorm of ``model`` use global-batch statistics in training mode (in place, idempotent).

    Only the class changes: parameters, buffers and state-dict keys stay the same.
    """
    for m in model.modules():
        if type(m) in _GLOBAL_BN:
            m.__class__ = _GLOBAL_BN[type(m)]


# -- process group ------------------------------------------------------------------------------

def current() -> Parallel | None:
    """The running process group as a ``Parallel``, or None for a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Parallel(dist.get_rank(), dist.get_world_size())


def init(backend: str, **kwargs: Any) -> Parallel | None:
    """``dist.init_process_group(backend, **kwargs)``, made safe to leave with ``shutdown()``; this process's place.

    torch._dynamo is imported first. Imported while a group exists (lazily, by the first optimizer step, in torch
    2.13), it keeps references to that group, so ``destroy_process_group`` no longer joins gloo's worker threads.
    One of them may then still be freeing the last collective's tensors, which takes the GIL, when the interpreter
    exits, and that aborts the process ("terminate called without an active exception"; within 5 to 44 runs of the
    2-rank test worker here).
    """
    import torch._dynamo  # noqa: F401

    dist.init_process_group(backend, **kwargs)
    return current()


def init_from_env(device: str = "auto") -> Parallel | None:
    """Join the group torchrun describes in the environment (WORLD_SIZE > 1); None when run alone.

    GPUs: NCCL, one GPU per process (LOCAL_RANK). CPUs (``device`` cpu, or no CUDA): gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if device.startswith("cuda:"):
        raise ValueError(f"--device {device} would put every process on one GPU; under torchrun use --device cuda "
                         "(or auto): each process takes the GPU of its LOCAL_RANK")
    if not dist.is_initialized():
        gpu = device != "cpu" and torch.cuda.is_available()
        if gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return init("nccl" if gpu else "gloo")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
