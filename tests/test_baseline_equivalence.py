"""The fast path (softhebb) and the original code's computation (benchmarks/original.py) give the same update."""

import sys
from pathlib import Path

import pytest
import torch

from softhebb import plasticity as P
from softhebb import batching, features, hebbian
from softhebb.network import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from original import OriginalNet, conv_trick_yx, hebbian_epoch  # noqa: E402

TINY = {"name": "tiny", "blocks": [
    {"type": "conv", "out": 8, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "max_4_2_1"},
    {"type": "conv", "out": 16, "kernel": 3, "padding": 1, "t_invert": 0.65, "lr": 0.02, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1.4", "pool": "avg_2_2_0"}]}
SHAPE = (3, 12, 12)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a − b| / max|b| over the whole tensor."""
    return float((a - b).abs().max().detach() / b.abs().max().detach())


@pytest.mark.parametrize("kernel,stride,dilation,size", [
    (3, 1, 1, (12, 12)),
    (5, 1, 1, (11, 9)),
    (3, 2, 1, (12, 12)),   # k' = 4 > 3: the original crops
    (3, 1, 2, (12, 10)),
    (3, 2, 2, (13, 13)),
    (3, 3, 2, (13, 13)),   # stride > dilation: k' = 4 > 3 with dilation 2
    (2, 3, 1, (14, 11)),   # k' = 3 or 4 > 2
])
def test_conv_trick_equals_weight_gradient(kernel, stride, dilation, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, *size, dtype=torch.float64, generator=g)
    weight_shape = (7, 5, kernel, kernel)
    u = torch.nn.functional.conv2d(x, torch.randn(weight_shape, dtype=torch.float64, generator=g), stride=stride, dilation=dilation)
    y, _ = P.post_synaptic(u, "softhebb", 0.7)
    trick = conv_trick_yx(x, y, (kernel, kernel), (stride, stride), (dilation, dilation))
    fast, _ = P.hebbian_terms_conv(x, y, u, weight_shape, stride, dilation)
    assert trick.shape == fast.shape == weight_shape
    torch.testing.assert_close(trick, fast, rtol=1e-12, atol=1e-12)


def _train_both(mode: str, dtype: torch.dtype, monkeypatch, n: int = 40, batch: int = 10, seed: int = 3,
                preset: dict | str = TINY, shape: tuple[int, int, int] = SHAPE):
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    model = build_model(preset, shape, 10, seed=0).to(dtype)
    net = OriginalNet(model)
    for a, b in zip(model.blocks, net.blocks):
        assert torch.equal(a.layer.weight, b.layer.weight)
    for module in (batching, features):  # batches and the prefix cache both turn uint8 images into inputs
        monkeypatch.setattr(module, "as_input", lambda im: im.to(dtype).div_(255.0))
    hebbian.hebbian_phase(model, images, mode, batch_size=batch, seed=seed, progress=False)
    # hebbian_phase's data order: one seeded permutation, identical for every block.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    data = images.to(dtype) / 255.0
    blocks = list(range(len(model.blocks)))
    stages = [[i] for i in blocks] if mode == "successive" else [blocks]
    for stage in stages:
        hebbian_epoch(net, data, stage, batch, order)
    return model, net


@pytest.mark.parametrize("mode", ["successive", "simultaneous"])
# 100 steps per block. float32: the bound (3e-7 measured). float64: the same computation up to rounding (the
# frozen prefix runs in channels-last memory, the original's in NCHW: 7e-9 apart in successive mode, 1e-15 otherwise)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_training_reaches_the_same_weights(mode, dtype, tol, monkeypatch):
    model, net = _train_both(mode, dtype, monkeypatch, n=1000)
    for i, (a, b) in enumerate(zip(model.blocks, net.blocks)):
        assert a.layer.num_updates.item() == 100
        assert max_rel_diff(b.layer.weight, a.layer.weight) <= tol, f"block {i}"
        assert max_rel_diff(b.bn.running_var, a.pre[0].running_var) <= tol, f"block {i} BN"
        # the original's full-size rate equals softhebb's per-neuron rate, broadcast
        rate = a.layer.learning_rate()
        assert max_rel_diff(b.layer.lr, rate.view(-1, 1, 1, 1).expand_as(b.layer.lr)) <= tol
    # eval forwards (feature extraction) agree too
    x = torch.rand(5, *SHAPE, dtype=dtype, generator=torch.Generator().manual_seed(2))
    assert max_rel_diff(net.eval()(x), model.eval()(x)) <= 10 * tol


def test_weights_actually_change_and_differ_between_modes(monkeypatch):
    succ, _ = _train_both("successive", torch.float64, monkeypatch)
    simu, _ = _train_both("simultaneous", torch.float64, monkeypatch)
    start = build_model(TINY, SHAPE, 10, seed=0).double()
    assert max_rel_diff(succ.blocks[0].layer.weight, start.blocks[0].layer.weight) > 1e-3
    assert max_rel_diff(succ.blocks[1].layer.weight, simu.blocks[1].layer.weight) > 1e-6


def test_hard_wta_preset_matches_the_released_hard_computation(monkeypatch):
    """4HardCnnCIFAR (the paper's Hard-WTA baseline, Fig. 3) trained by softhebb and by the released HebbHardConv2d
    computation, block after block on 200 images: the same weights, BatchNorm statistics and features. So the gap to
    the paper's 60.29 % (we reach 42.5 %) does not come from the rule or the preset as released."""
    model, net = _train_both("successive", torch.float32, monkeypatch, n=200, preset="4HardCnnCIFAR", shape=(3, 32, 32))
    for i, (a, b) in enumerate(zip(model.blocks, net.blocks)):
        assert a.layer.rule == "hard" and a.layer.num_updates.item() == 20
        assert max_rel_diff(b.layer.weight, a.layer.weight) <= 1e-5, f"block {i}"
        assert max_rel_diff(b.bn.running_var, a.pre[0].running_var) <= 1e-4, f"block {i} BN"
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert max_rel_diff(net.eval()(x), model.eval()(x)) <= 1e-4
