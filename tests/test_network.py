"""Presets build the paper's architectures (reference §3.2–3.3)."""

from pathlib import Path

import pytest
import torch

from softhebb.layers import HebbianConv2d, HebbianLinear
from softhebb.modules import AvgPool2d, MaxPool2d, Triangle
from softhebb.network import PresetError, build_model, feature_shapes, get_preset, list_presets, probe_inputs

CIFAR, STL, IMNET, MNIST = (3, 32, 32), (3, 96, 96), (3, 160, 160), (1, 28, 28)

# classifier input sizes from reference §3.2
CLASSIFIER_INPUTS = [
    ("2SoftHebbCnnCIFAR", CIFAR, 24576), ("3SoftHebbCnnCIFAR", CIFAR, 24576), ("4SoftHebbCnnCIFAR", CIFAR, 24576),
    ("4SoftHebbCnnSTL", STL, 221184), ("5SoftHebbCnnSTL", STL, 221184), ("5SoftHebbCnnSTL", IMNET, 614400),
    ("3HardCnnCIFAR", CIFAR, 18816), ("3HardCnnCIFAR", STL, 203136), ("4HardCnnCIFAR", CIFAR, 6144),
    ("4HardCnnCIFAR", IMNET, 497664), ("6SoftHebbCnnImNet", IMNET, 307200), ("6HardCnnImNet", IMNET, 307200),
    ("6CnnImNet", IMNET, 307200), ("2SoftHebbCnnImNet", MNIST, 9408), ("4SoftHebbCnnCIFAR", MNIST, 13824),
    ("5SoftHebbCnnSTL", MNIST, 6144), ("3SoftHebbCnnCIFAR_wf2", CIFAR, 12288), ("3SoftHebbCnnCIFAR_wf1", CIFAR, 6144),
    ("4SoftHebbCnnCIFAR_wf2", CIFAR, 6144), ("4SoftHebbCnnCIFAR_wf1", CIFAR, 1536),
    ("4SoftHebbCnnCIFAR_halfNeurons", CIFAR, 12288), ("4SoftHebbCnnCIFAR_doubleNeurons", CIFAR, 49152),
    ("4SoftHebbCnnCIFAR_quarterNeurons", CIFAR, 6144), ("4SoftHebbCnnCIFAR_concat", CIFAR, 30720), ("4SoftHebbCnnCIFAR_mirror", CIFAR, 24576), ("2SoftMlpMNIST", MNIST, 2000), ("SoftHebbCnnMNIST", MNIST, 13824), ("SoftHebbCnnMNIST_2layer", MNIST, 18816),
]


@pytest.mark.parametrize("name,shape,n", CLASSIFIER_INPUTS)
def test_classifier_input_sizes(name, shape, n):
    assert sum(k for _, k in probe_inputs(get_preset(name), shape)) == n
    assert build_model(name, shape, 10).classifier.in_features == n


def test_probe_grid_concatenates_pooled_hidden_blocks_before_the_last_one():
    spec = {"blocks": [{"type": "conv", "out": 6, "kernel": 3, "padding": 1, "activation": "triangle_1", "pool": "max_2_2_0",
                        "probe_grid": 2},
                       {"type": "conv", "out": 5, "kernel": 3, "activation": "triangle_1", "probe_grid": 3},
                       {"type": "conv", "out": 4, "kernel": 3, "pool": "avg_2_2_0"}]}
    model = build_model(spec, (3, 12, 12), 10, seed=0).eval()
    assert probe_inputs(model.preset, (3, 12, 12)) == [(0, 6 * 4), (1, 5 * 9), (2, 4)]
    x = torch.rand(3, 3, 12, 12)
    h0 = model.blocks[0](x)
    h1 = model.blocks[1](h0)
    h2 = model.blocks[2](h1)
    # by hand: h0 is 6×6, its 2×2 map averages 3×3 windows; h1 is 4×4 and adaptive 3×3 pooling overlaps its windows
    by_hand0 = torch.stack([h0[:, :, 3 * i:3 * i + 3, 3 * j:3 * j + 3].mean((2, 3)) for i in range(2) for j in range(2)], 2)
    by_hand1 = torch.stack([h1[:, :, i:i + 2, j:j + 2].mean((2, 3)) for i in range(3) for j in range(3)], 2)
    expected = torch.cat([by_hand0.flatten(1), by_hand1.flatten(1), h2.flatten(1)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model.readout(x), expected)
        torch.testing.assert_close(model(x), model.classifier(expected))  # eval: dropout is the identity


def test_mirror_reads_the_mean_of_the_features_of_the_image_and_its_mirror():
    spec = {"blocks": [{"type": "conv", "out": 6, "kernel": 3, "padding": 1, "activation": "triangle_1", "pool": "max_2_2_0",
                        "probe_grid": 2},
                       {"type": "conv", "out": 4, "kernel": 3, "pool": "avg_2_2_0"}], "classifier": {"mirror": True}}
    model = build_model(spec, (3, 12, 12), 10, seed=0).eval()
    plain = build_model({**spec, "classifier": {}}, (3, 12, 12), 10, seed=0).eval()
    assert model.mirror and not plain.mirror and model.num_features == plain.num_features
    x = torch.rand(3, 3, 12, 12)
    mirrored = x[..., torch.arange(11, -1, -1)]  # column j of the mirror is column 11 - j of the image
    with torch.no_grad():
        expected = (plain.readout(x) + plain.readout(mirrored)) / 2
        assert not torch.allclose(plain.readout(x), plain.readout(mirrored))  # the mirror is another image here
        torch.testing.assert_close(model.readout(x), expected)
        torch.testing.assert_close(model(x), model.classifier(expected))


def test_mirror_refuses_inputs_that_are_not_images():
    with pytest.raises(PresetError, match=r"needs \(channels, height, width\) inputs, got input shape \(20,\)"):
        build_model({"blocks": [{"type": "linear", "out": 4}], "classifier": {"mirror": True}}, (20,), 3, seed=0)


def test_the_mirror_and_concat_presets_learn_the_weights_of_the_paper_preset():
    """They change what the classifier reads, not the Hebbian network: same initial weights for the same seed."""
    paper = build_model("4SoftHebbCnnCIFAR", CIFAR, 10, seed=3).blocks.state_dict()
    for name in ("4SoftHebbCnnCIFAR_mirror", "4SoftHebbCnnCIFAR_concat"):
        ours = build_model(name, CIFAR, 10, seed=3).blocks.state_dict()
        assert ours.keys() == paper.keys() and all(torch.equal(ours[k], paper[k]) for k in paper)


@pytest.mark.parametrize("name, changed", [
    ("4HardCnnCIFAR_b2pad1avg", [{}, {}, {"padding": 1, "pool": "avg_2_2_0"}]),
    ("4HardCnnCIFAR_softTokens", [{"rule": "soft", "t_invert": t} for t in (1, 0.8, 0.5)]),
])
def test_hard_wta_variant_files_change_only_what_they_say(name, changed):
    """The Hard-WTA variants of docs/RESULTS.md are 4HardCnnCIFAR with a few fields changed, nothing else."""
    base = get_preset("4HardCnnCIFAR")
    variant = get_preset(str(Path(__file__).parents[1] / "scripts" / "hard_wta" / f"{name}.json"))
    assert len(variant["blocks"]) == len(base["blocks"]) and variant["classifier"] == base["classifier"]
    for b, v, c in zip(base["blocks"], variant["blocks"], changed):
        assert {k: x for k, x in v.items() if b.get(k) != x} == c


def test_every_preset_resolves_and_all_paper_families_exist():
    names = list_presets()
    assert len(names) >= 40
    for name in names:
        assert get_preset(name)["blocks"]
    for family in ("SoftHebbCnnCIFAR", "HardCnnCIFAR", "CnnCIFAR", "SoftHebbCnnSTL", "SoftHebbCnnImNet", "HardCnnImNet", "CnnImNet"):
        assert any(n[1:] == family for n in names), family


def test_six_layer_imagenet_collapses_on_mnist_with_a_clear_error():
    with pytest.raises(PresetError, match="block 4"):
        feature_shapes(get_preset("6SoftHebbCnnImNet"), MNIST)


def test_cifar_headline_network_matches_reference_table():
    model = build_model("4SoftHebbCnnCIFAR", CIFAR, 10, seed=0)
    convs = [b.layer for b in model.blocks]
    assert [c.weight.shape for c in convs] == [(96, 3, 5, 5), (384, 96, 3, 3), (1536, 384, 3, 3)]
    assert [c.t_invert for c in convs] == [1.0, 0.65, 0.25]
    assert [c.lr for c in convs] == [0.08, 0.005, 0.01]
    assert all(isinstance(c, HebbianConv2d) and c.rule == "softhebb" and c.padding_mode == "reflect" for c in convs)
    assert all(not b.pre[0].affine for b in model.blocks)
    # triangle_0.7 → max pool runs as triangle_1 → max pool → x^0.7 (test_power_after_max_pool_is_the_same_block)
    assert [[type(m).__name__ for m in b.post] for b in model.blocks] == [
        ["Triangle", "MaxPool2d", "Power"], ["Triangle", "MaxPool2d", "Power"], ["Triangle", "AvgPool2d"]]
    assert [b.post[-1].power for b in model.blocks[:2]] == [0.7, 1.4] and [b.post[0].power for b in model.blocks] == [1.0] * 3
    # init std r/√n (reference §1.7): 2.887, 0.8505, 0.4253
    for c, std in zip(convs, (2.887, 0.8505, 0.4253)):
        assert c.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.classifier.in_features == 24576 and model.dropout.p == 0.5
    assert model(torch.rand(2, *CIFAR)).shape == (2, 10)


def test_depth_series_quirks_are_kept():
    two = get_preset("3SoftHebbCnnCIFAR")["blocks"]
    assert two[0]["pool"] == "avg_4_2_1" and two[1]["pre_triangle"] is True
    three = get_preset("4SoftHebbCnnCIFAR")["blocks"]
    assert three[0]["pool"] == "max_4_2_1" and three[1]["pre_triangle"] is False


def test_mnist_mlp_preset():
    model = build_model("2SoftMlpMNIST", MNIST, 10, seed=0)
    layer = model.blocks[0].layer
    assert isinstance(layer, HebbianLinear) and layer.rule == "soft" and layer.weight.shape == (2000, 784)
    assert layer.weight.min() >= 0 and layer.weight.max() < 35 * (3 / 784) ** 0.5  # uniform init without BN
    assert model.dropout.p == 0.0
    assert torch.allclose(model.features(torch.rand(3, *MNIST)).sum(1), torch.ones(3))  # softmax_5 output


def test_backprop_presets_use_trainable_convs():
    model = build_model("4CnnCIFAR", CIFAR, 10, seed=0)
    assert model.hebbian_block_indices() == []
    assert model.blocks[2].layer.groups == 192 and model.blocks[2].layer.bias is None
    assert sum(p.numel() for p in model.parameters()) > 0


def test_same_seed_same_weights():
    a = build_model("2SoftHebbCnnCIFAR", CIFAR, 10, seed=3).state_dict()
    b = build_model("2SoftHebbCnnCIFAR", CIFAR, 10, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("spec,match", [
    ({"blocks": [{"type": "conv", "out": 4, "kernal": 3}]}, "unknown field"),
    ({"blocks": [{"type": "dense", "out": 4}]}, "'type' must be"),
    ({"blocks": [{"type": "conv", "out": 0}]}, "'out' must be a positive int"),
    ({"blocks": [{"type": "conv", "out": 4, "pool": "max_4_2"}]}, "pool must look like"),
    ({"blocks": [{"type": "conv", "out": 4, "activation": "gelu"}]}, "activation must be"),
    ({"blocks": [{"type": "conv", "out": 4}], "classifier": {"dropuot": 0.5}}, "unknown field"),
    ({"blocks": [{"type": "conv", "out": 4}], "classifier": {"dropout": 1.0}}, "'dropout' must be in"),
    ({"blocks": [{"type": "conv", "out": 4}], "classifier": {"mirror": 1}}, "'mirror' must be true or false"),
    ({"blocks": [{"type": "conv", "out": 4, "probe_grid": 0}, {"type": "conv", "out": 4}]}, "'probe_grid' must be"),
    ({"blocks": [{"type": "conv", "out": 4, "probe_grid": True}, {"type": "conv", "out": 4}]}, "'probe_grid' must be"),
    ({"blocks": [{"type": "conv", "out": 4, "probe_grid": 2}]}, "'probe_grid' is for hidden blocks before the last"),
    ({"blocks": [{"type": "conv", "out": 4}, {"type": "linear", "out": 4, "probe_grid": 2}]}, "unknown field"),
])
def test_bad_presets_give_clear_errors(spec, match):
    with pytest.raises(PresetError, match=match):
        build_model(spec, CIFAR, 10)


def test_unknown_preset_suggests_close_names():
    with pytest.raises(PresetError, match="Did you mean 4SoftHebbCnnCIFAR"):
        get_preset("4SoftHebbCnnCIFR")
    assert get_preset("4softhebbcnncifar")["name"] == "4SoftHebbCnnCIFAR"


def test_triangle():
    x = torch.tensor([[[[1.0]], [[2.0]], [[6.0]]]])  # mean 3 over channels
    torch.testing.assert_close(Triangle(2.0)(x).flatten(), torch.tensor([0.0, 0.0, 9.0]))


def test_preset_files_load_and_bad_ones_are_named(tmp_path):
    from softhebb.network import PresetError, get_preset
    spec = get_preset("2SoftHebbCnnCIFAR")
    spec["blocks"][0]["t_invert"] = 3.0
    path = tmp_path / "tuned.json"
    path.write_text(__import__("json").dumps(spec))
    loaded = get_preset(str(path))
    assert loaded["blocks"][0]["t_invert"] == 3.0 and loaded["name"] == "2SoftHebbCnnCIFAR"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(PresetError, match="bad.json"):
        get_preset(str(tmp_path / "bad.json"))
    with pytest.raises(PresetError, match="missing.json"):
        get_preset(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("ours, theirs, args", [(MaxPool2d, torch.nn.MaxPool2d, (4, 2, 1)),
                                                (AvgPool2d, torch.nn.AvgPool2d, (2, 2, 0))])
def test_pools_match_torch_in_values_layout_and_gradient(ours, theirs, args):
    """Our pools pool in channels-last memory on the CPU; nothing a caller sees may change."""
    x = torch.randn(3, 5, 9, 8, requires_grad=True)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.detach().contiguous(memory_format=fmt).requires_grad_()
        ref, got = theirs(*args)(xf), ours(*args)(xf)
        assert torch.equal(got, ref) and got.is_contiguous(memory_format=fmt)
        g = torch.randn_like(ref)
        assert torch.equal(torch.autograd.grad(got, xf, g)[0], torch.autograd.grad(ref, xf, g)[0])
    pools = [b.post[1] for b in build_model("4SoftHebbCnnCIFAR", (3, 32, 32), 10).blocks]
    assert [type(p) for p in pools] == [MaxPool2d, MaxPool2d, AvgPool2d]


@pytest.mark.parametrize("power", [0.7, 1.0, 1.4])
def test_triangle_matches_its_formula_leaves_its_input_and_has_the_right_gradient(power):
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    expected = (x0 - x0.mean(1, keepdim=True)).clamp_min(0) ** power
    assert torch.allclose(Triangle(power)(x), expected) and torch.equal(x.detach(), x0)
    with torch.no_grad():  # the in-place path
        assert torch.allclose(Triangle(power)(x), expected) and torch.equal(x.detach(), x0)
    y = Triangle(power)(x)
    y.pow(2).sum().backward()
    c = (x0 - x0.mean(1, keepdim=True)).clamp_min(0)  # the channel mean is a constant for gradients
    assert torch.allclose(x.grad, 2 * power * c ** (2 * power - 1) * (c > 0))


@pytest.mark.parametrize("power", [0.7, 1.4])
def test_power_after_max_pool_is_the_same_block(power):
    """A block computes triangle_p → max pool as triangle_1 → max pool → x^p: the same values and gradients."""
    preset = {"blocks": [{"type": "conv", "out": 8, "kernel": 3, "padding": 1, "activation": f"triangle_{power}",
                          "pool": "max_4_2_1"}]}
    block = build_model(preset, (3, 12, 12), 10, seed=0).blocks[0].eval()
    x = torch.randn(4, 3, 12, 12, requires_grad=True)
    u = block.layer(block.pre(x))
    ref = torch.nn.MaxPool2d(4, 2, 1)(Triangle(power)(u))
    got = block(x)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(ref, x, g)[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the in-place path of the frozen network
        torch.testing.assert_close(block(x), ref.detach(), rtol=1e-6, atol=0)
    assert [type(m).__name__ for m in block.post] == ["Triangle", "MaxPool2d", "Power"] and block.post[-1].power == power
