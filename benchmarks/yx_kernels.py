"""Σỹx for the three CIFAR layers at batch 10: the weight-gradient kernel vs one GEMM over patches.

    python benchmarks/yx_kernels.py

This is the measurement behind `plasticity.hebbian_terms_conv(method="auto")`.
"""

import time

import torch
import torch.nn.functional as F

from softhebb import plasticity as P


def ms(f, n: int = 10) -> float:
    f()
    f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1000


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for c_in, c_out, k, hw in [(3, 96, 5, 32), (96, 384, 3, 16), (384, 1536, 3, 8)]:
        x = torch.randn(10, c_in, hw + k - 1, hw + k - 1)
        w = torch.randn(c_out, c_in, k, k)
        u = F.conv2d(x, w)
        y = torch.randn_like(u)
        kernel = ms(lambda: P.hebbian_terms_conv(x, y, u, w.shape, method="kernel"))
        gemm = ms(lambda: P.hebbian_terms_conv(x, y, u, w.shape, method="gemm"))
        auto = "gemm" if 10 * hw * hw < c_out else "kernel"
        print(f"{c_in:4d}->{c_out:4d} k{k} {hw:2d}px: forward {ms(lambda: F.conv2d(x, w)):6.1f} ms | "
              f"Σỹx kernel {kernel:6.1f} ms, gemm {gemm:6.1f} ms (auto picks {auto})")
