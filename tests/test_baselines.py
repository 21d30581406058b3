import pytest
import torch

from softhebb.baselines import calibrate_batchnorm, train_backprop
from softhebb.network import build_model

BP = {"name": "tinyBP", "blocks": [
    {"type": "conv", "rule": "bp", "out": 8, "kernel": 3, "padding": 1, "activation": "relu", "pool": "max_2_2_0"},
    {"type": "conv", "rule": "bp", "out": 16, "kernel": 3, "padding": 1, "activation": "relu", "pool": "avg_2_2_0"}]}
HEBB = {"name": "tinyHebb", "blocks": [
    {"type": "conv", "out": 8, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "activation": "triangle_1", "pool": "max_2_2_0"},
    {"type": "conv", "out": 16, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "activation": "triangle_1"}]}


def _toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: bright top half vs bright bottom half, with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randint(0, 100, (n, 1, 8, 8), generator=g)
    x[y == 0, :, :4] += 150
    x[y == 1, :, 4:] += 150
    return x.to(torch.uint8), y


def test_end_to_end_backprop_learns():
    x, y = _toy(256, 0)
    xt, yt = _toy(200, 1)
    model = build_model(BP, (1, 8, 8), 2, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    r = train_backprop(model, x, y, xt, yt, epochs=3, batch_size=32, progress=False)
    assert r["test_acc"] > 90
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_layerwise_trains_one_stage_at_a_time():
    x, y = _toy(128, 0)
    model = build_model(BP, (1, 8, 8), 2, seed=0)
    head0 = model.classifier.weight.detach().clone()
    block0 = model.blocks[0].layer.weight.detach().clone()
    seen = []

    def log(row):
        seen.append(row["phase"])
        if row["phase"] == "backprop block 0":
            assert torch.equal(model.classifier.weight, head0)  # the classifier stays random while block 0 trains
            assert torch.equal(model.blocks[1].pre[0].running_mean, torch.zeros(8))  # block 1's BN stays in eval mode
            assert not torch.equal(model.blocks[0].layer.weight, block0)
        if row["phase"] == "backprop block 1":
            assert torch.equal(model.classifier.weight, head0)

    train_backprop(model, x, y, mode="layerwise", epochs=1, batch_size=32, log=log, progress=False)
    assert seen == ["backprop block 0", "backprop block 1", "backprop classifier"]
    assert not torch.equal(model.classifier.weight, head0)
    assert all(p.requires_grad for p in model.parameters())


def test_backprop_refuses_hebbian_presets_and_bad_mode():
    x, y = _toy(16, 0)
    with pytest.raises(ValueError, match="rule: bp"):
        train_backprop(build_model(HEBB, (1, 8, 8), 2), x, y, progress=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        train_backprop(build_model(BP, (1, 8, 8), 2), x, y, mode="greedy", progress=False)


def test_calibrate_batchnorm_sets_input_statistics():
    x, _ = _toy(300, 0)
    model = build_model(HEBB, (1, 8, 8), 2, seed=0)
    bn0, bn1 = model.blocks[0].pre[0], model.blocks[1].pre[0]
    assert torch.equal(bn0.running_mean, torch.zeros(1))  # the paper's random baseline: identity BNs
    calibrate_batchnorm(model, x, batch_size=50)
    pixels = x.float() / 255
    assert torch.allclose(bn0.running_mean, pixels.mean().view(1), atol=1e-5)
    assert torch.allclose(bn0.running_var, pixels.var().view(1), rtol=0.02)
    with torch.no_grad():
        h = model.features(pixels, 1)
    assert torch.allclose(bn1.running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not bn0.training and bn0.momentum == 0.1
