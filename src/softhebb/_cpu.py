"""CPU-only tuning, in one opt-in place: none of it changes a computed value.

``tuned(device)`` is what ``softhebb.run`` enters around the Hebbian phase on a CPU; your own loop can enter it too.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any, Iterator

import torch

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
    to the system."""
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



@contextlib.contextmanager
def flush_subnormals() -> Iterator[None]:
    """Inside this context the CPU treats subnormal floats as zero (FTZ/DAZ). The losing neurons' soft-WTA shares
    underflow to subnormals (0.6-1.2 % of CIFAR block 1's ỹ), which slowed the Σỹx kernel 20-30x on an Intel Xeon;
    below 1.2e-38 they add nothing a float32 sum can hold, and the trained weights stay bit-identical."""
    before = torch.set_flush_denormal(True)  # False where the CPU cannot; then nothing changes
    try:
        yield
    finally:
        if before:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def tuned(device: torch.device) -> Iterator[None]:
    """Every CPU tuning of this module at once (a no-op off the CPU)."""
    if device.type != "cpu":
        yield
        return
    with reuse_freed_memory(), flush_subnormals():
        yield


def forward_rows(widest_row_bytes: int) -> int:
    """Rows per forward of a frozen network on CPU: as many as keep each block's output under 16 MiB (about 40 CIFAR
    images). glibc hands freed blocks over 32 MiB back to the system, so every larger tensor is page-faulted in
    again on the next batch: 900,000 faults per 1,000 CIFAR images at 250 rows, and 20-30 % slower features on an
    Intel Xeon."""
    return max(1, (16 * 2**20) // widest_row_bytes)
