"""What refusing a non-finite Hebbian update costs: ``layer.step()`` against the unchecked update.

    python benchmarks/nonfinite_check.py [--repeats 300] [--device cpu|cuda]

For each layer of 4SoftHebbCnnCIFAR, times a forward on one patch followed by the update, once by
``HebbianConv2d.step()`` — which checks max|Δw| and the rate for NaN/Inf before the weights change —
and once by ``plasticity.apply_update_`` with the same rate, which checks nothing. Prints ms per update and
the difference; one Hebbian batch of these layers costs 10–70 ms on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from softhebb import HebbianConv2d
from softhebb import plasticity as P

LAYERS = [(3, 96, 5), (96, 384, 3), (384, 1536, 3)]  # 4SoftHebbCnnCIFAR's three Hebbian layers


def _time(fn, device: torch.device, repeats: int) -> float:
    for _ in range(10):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    rows = []
    for c_in, c_out, k in LAYERS:
        layer = HebbianConv2d(c_in, c_out, k, lr=1e-9).to(device)  # a tiny rate: the weights barely move
        x = torch.rand(1, c_in, k, k, device=device)  # one position: the forward and sums cost next to nothing

        def checked() -> None:
            layer(x)
            layer.step()

        def unchecked() -> None:
            layer(x)
            yx, yu = layer.pending
            layer.zero_pending()
            P.apply_update_(layer.weight, yx, yu, layer.learning_rate())

        times = [(_time(checked, device, a.repeats), _time(unchecked, device, a.repeats)) for _ in range(3)]
        with_check, without = min(t[0] for t in times), min(t[1] for t in times)
        rows.append({"layer": f"{c_in}->{c_out} {k}x{k}", "step_ms": round(with_check, 4),
                     "unchecked_ms": round(without, 4), "difference_ms": round(with_check - without, 4)})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
