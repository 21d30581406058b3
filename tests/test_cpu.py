"""softhebb._cpu: the CPU tunings change no computed value, and each does what it is there for."""

import math
import subprocess
import sys

import pytest
import torch

from softhebb import _cpu
from softhebb import plasticity as P
from softhebb.hebbian import hebbian_phase
from softhebb.network import build_model


def test_flush_subnormals_keeps_hebbian_weights_bit_identical_and_restores_the_setting():
    """A sharp competition (t_invert 40) leaves many losing shares subnormal; flushing them must not change a weight."""
    preset = {"name": "sharp", "blocks": [
        {"type": "conv", "out": 32, "kernel": 3, "padding": 1, "t_invert": 40, "lr": 0.05, "power_lr": 0.5, "radius": 5,
         "activation": "triangle_1", "pool": "max_2_2_0"},
        {"type": "conv", "out": 48, "kernel": 3, "padding": 1, "t_invert": 40, "lr": 0.05, "power_lr": 0.5, "radius": 5}]}
    x = torch.randint(0, 256, (60, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain, flushed = (build_model(preset, (3, 12, 12), 10, seed=0) for _ in range(2))
    hebbian_phase(plain, x, batch_size=10, seed=0, progress=False)
    u = plain.blocks[0].layer(plain.blocks[0].pre(torch.rand(4, 3, 12, 12)))
    y = torch.softmax(40 * u, dim=1)
    assert ((y > 0) & (y < torch.finfo(y.dtype).tiny)).any()  # the case this tuning is for does occur
    with _cpu.tuned(torch.device("cpu")):
        hebbian_phase(flushed, x, batch_size=10, seed=0, progress=False)
        if torch.set_flush_denormal(True):  # the CPU supports it (x86 with SSE3): subnormal results are zero here
            assert (torch.tensor([torch.finfo(torch.float32).tiny]) / 4).item() == 0
    assert (torch.tensor([torch.finfo(torch.float32).tiny]) / 4).item() > 0  # the setting is off again
    for a, b in zip(plain.state_dict().values(), flushed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="the CPU cannot flush subnormals")
@pytest.mark.parametrize("rule", ["softhebb", "soft"])
def test_flush_subnormals_zeroes_subnormal_shares_only(rule):
    # exp(-90) ≈ 8e-40 is subnormal in float32 (it slowed the Σỹx kernel 20-30x on an Intel CPU);
    # exp(-50) ≈ 2e-22 is a normal float and must be kept.
    u = torch.tensor([[0.0, -90.0, -50.0]], dtype=torch.float32)
    y, _ = P.post_synaptic(u, rule, 1.0)
    assert y[0, 1] != 0  # the rule itself keeps them
    with _cpu.flush_subnormals():
        y, _ = P.post_synaptic(u, rule, 1.0)
    sign = -1 if rule == "softhebb" else 1
    assert y.dtype == torch.float32 and y[0, 1] == 0
    assert torch.isclose(y[0, 2], torch.tensor(sign * math.exp(-50.0)), rtol=1e-5, atol=0)


def test_forward_rows_keeps_each_output_under_16_mib():
    assert _cpu.forward_rows(4 * 96 * 32 * 32) == 42
    assert _cpu.forward_rows(2**30) == 1


_FAULTS_SCRIPT = """
import resource, torch
from softhebb import _cpu
from softhebb import plasticity as P

def faults():  # minor page faults of filling a 48 MiB tensor right after a 64 MiB one was freed
    torch.ones(16 * 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(12 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

outside = faults()
with _cpu.reuse_freed_memory():
    inside = faults()
print(outside, inside, faults())
"""


@pytest.mark.skipif(_cpu._glibc() is None, reason="glibc's allocator only")
def test_reuse_freed_memory_keeps_large_blocks_for_the_next_allocation():
    # a fresh process: the allocator's state is process-wide, and other tests change it.
    # The second tensor is smaller than the freed one, so it fits the freed block wherever later small allocations
    # split it off; a same-size tensor can miss it and grow the heap instead (seen in CI, 4 of 5 rounds).
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True)
    outside, inside, after = map(int, out.stdout.split())
    pages = 12 * 2**20 * 4 // 4096
    assert outside > 0.9 * pages  # glibc returned the 64 MiB block, so the new one gets fresh pages
    assert inside < 0.1 * pages  # the freed block's pages are reused
    assert after > 0.9 * pages  # on exit the free pages went back to the system
