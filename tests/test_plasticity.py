"""The learning rule against slow, obviously-correct per-patch reference loops."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from softhebb import plasticity as P
from softhebb.layers import HebbianConv2d, HebbianLinear



@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons with the loops need double precision; restore the default after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


DELTA, RANK = 1.5, 2  # hardkrotov's anti-Hebbian strength and rank in these tests (2: the test groups have 2 neurons)


def ref_post_synaptic(u, rule, t, groups, delta=DELTA, rank=RANK):
    """ỹ position by position, group by group, with explicit loops."""
    y = torch.zeros_like(u)
    n, k = u.shape[:2]
    kg = k // groups
    for idx in itertools.product(range(n), *[range(s) for s in u.shape[2:]]):
        for g in range(groups):
            vals = [u[(idx[0], g * kg + j, *idx[1:])].item() for j in range(kg)]
            win = max(range(kg), key=lambda j: vals[j])
            ranked = sorted(range(kg), key=lambda j: -vals[j])[rank - 1]  # 1st = the winner
            exps = [math.exp(t * v - t * max(vals)) for v in vals]
            for j in range(kg):
                soft = exps[j] / sum(exps)
                if rule == "hard":
                    val = 1.0 if j == win else 0.0
                elif rule == "hardkrotov":
                    val = 1.0 if j == win else -delta if j == ranked else 0.0
                elif rule == "soft":
                    val = soft
                else:
                    val = soft if j == win else -soft
                y[(idx[0], g * kg + j, *idx[1:])] = val
    return y


def phi(w, p):
    """sign(w)·|w|^(p−1), element by element."""
    return w.clone().apply_(lambda v: math.copysign(abs(v) ** (p - 1), v))


def ref_conv_delta(x, w, stride, padding, dilation, groups, padding_mode, rule, t, p=2.0):
    """Δw (before normalisation) with a loop over every output position and patch; φ(w) in the forward."""
    ph, pw = padding
    mode = "constant" if padding_mode == "zeros" else padding_mode
    xp = F.pad(x, (pw, pw, ph, ph), mode=mode) if (ph or pw) else x
    k_out, c_in_g, kh, kw = w.shape
    kg = k_out // groups
    n, _, hp, wp = xp.shape
    ho = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    u = torch.zeros(n, k_out, ho, wo)
    patches = {}
    for b, i, j in itertools.product(range(n), range(ho), range(wo)):
        for k in range(k_out):
            g = k // kg
            patch = xp[b, g * c_in_g:(g + 1) * c_in_g,
                       i * stride[0]: i * stride[0] + dilation[0] * (kh - 1) + 1: dilation[0],
                       j * stride[1]: j * stride[1] + dilation[1] * (kw - 1) + 1: dilation[1]]
            patches[b, k, i, j] = patch
            u[b, k, i, j] = (patch * phi(w[k], p)).sum()
    y = ref_post_synaptic(u, rule, t, groups)
    dw = torch.zeros_like(w)
    for (b, k, i, j), patch in patches.items():
        dw[k] += y[b, k, i, j] * (patch - u[b, k, i, j] * w[k])
    return u, y, dw


CONV_CASES = [
    # stride, padding, dilation, groups, padding_mode
    ((1, 1), (1, 1), (1, 1), 1, "reflect"),
    ((2, 2), (2, 2), (1, 1), 1, "zeros"),
    ((1, 2), (0, 1), (2, 1), 1, "replicate"),
    ((2, 1), (1, 1), (1, 2), 2, "reflect"),
    ((3, 3), (0, 0), (1, 1), 3, "zeros"),  # stride that does not divide the input
]


@pytest.mark.parametrize("rule", P.RULES)
@pytest.mark.parametrize("stride,padding,dilation,groups,padding_mode", CONV_CASES)
def test_conv_update_matches_per_patch_reference(rule, stride, padding, dilation, groups, padding_mode):
    torch.manual_seed(0)
    layer = HebbianConv2d(6, 6, kernel_size=3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          padding_mode=padding_mode, rule=rule, t_invert=0.7, lr=0.1, radius=2.0, delta=DELTA, rank=RANK)
    layer.weight = layer.weight.double()
    x = torch.rand(2, 6, 8, 9)
    w0 = layer.weight.clone()
    u = layer(x)
    u_ref, y_ref, dw_ref = ref_conv_delta(x, w0, stride, padding, dilation, groups, padding_mode, rule, 0.7)
    torch.testing.assert_close(u, u_ref)
    yx, yu = layer.pending
    torch.testing.assert_close(yx - yu.view(-1, 1, 1, 1) * w0, dw_ref)
    # normalisation per group, then the per-neuron rate
    expected = torch.cat([g / g.abs().max() for g in dw_ref.chunk(groups)])
    rate = layer.learning_rate()
    layer.step()
    torch.testing.assert_close(layer.weight, w0 + rate.view(-1, 1, 1, 1) * expected)


@pytest.mark.parametrize("method", ["kernel", "gemm"])
@pytest.mark.parametrize("stride,padding,dilation,groups,padding_mode", CONV_CASES)
def test_both_yx_methods_match_the_reference(method, stride, padding, dilation, groups, padding_mode):
    torch.manual_seed(2)
    w = torch.randn(6, 6 // groups, 3, 3)
    x = torch.rand(2, 6, 8, 9)
    u, y, dw_ref = ref_conv_delta(x, w, stride, padding, dilation, groups, padding_mode, "softhebb", 0.7)
    xp = P.pad_input(x, padding, padding_mode)
    yx, yu = P.hebbian_terms_conv(xp, y, u, w.shape, stride, dilation, groups, method=method)
    torch.testing.assert_close(yx - yu.view(-1, 1, 1, 1) * w, dw_ref)


@pytest.mark.parametrize("rule", P.RULES)
def test_linear_update_matches_reference(rule):
    torch.manual_seed(1)
    layer = HebbianLinear(7, 5, rule=rule, t_invert=3.0, lr=0.05, radius=1.5, delta=DELTA, rank=RANK)
    layer.weight = layer.weight.double()
    x = torch.rand(4, 7)
    w0 = layer.weight.clone()
    u = layer(x)
    y = ref_post_synaptic(u, rule, 3.0, 1)
    dw = torch.zeros_like(w0)
    for n in range(4):
        for k in range(5):
            dw[k] += y[n, k] * (x[n] - u[n, k] * w0[k])
    rate = layer.learning_rate()
    layer.step()
    torch.testing.assert_close(layer.weight, w0 + rate.view(-1, 1) * dw / dw.abs().max())


def test_post_synaptic_matches_reference_with_groups():
    u = torch.randn(3, 8, 2, 2)
    for rule in P.RULES:
        y, _ = P.post_synaptic(u, rule, 2.0, groups=2, delta=DELTA, rank=RANK)
        torch.testing.assert_close(y, ref_post_synaptic(u, rule, 2.0, 2))


@pytest.mark.parametrize("stride,padding,dilation,groups,padding_mode", CONV_CASES)
def test_lebesgue_p_conv_update_matches_per_patch_reference(stride, padding, dilation, groups, padding_mode):
    torch.manual_seed(3)
    layer = HebbianConv2d(6, 6, kernel_size=3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          padding_mode=padding_mode, t_invert=0.7, lr=0.1, radius=2.0, lebesgue_p=3.0)
    layer.weight = layer.weight.double()
    x = torch.rand(2, 6, 8, 9)
    w0 = layer.weight.clone()
    u = layer(x)
    u_ref, _, dw_ref = ref_conv_delta(x, w0, stride, padding, dilation, groups, padding_mode, "softhebb", 0.7, p=3.0)
    torch.testing.assert_close(u, u_ref)
    # the rate anneals with the p-norm, so it is the p-norm that goes to 1
    norms = torch.tensor([sum(abs(v) ** 3 for v in w.flatten().tolist()) ** (1 / 3) for w in w0])
    rate = 0.1 * ((norms - 1).abs() + P.RATE_EPS) ** layer.power_lr
    torch.testing.assert_close(layer.radius(), norms)
    layer.step()
    expected = torch.cat([g / g.abs().max() for g in dw_ref.chunk(groups)])
    torch.testing.assert_close(layer.weight, w0 + rate.view(-1, 1, 1, 1) * expected)


def test_lebesgue_p_linear_update_matches_reference():
    torch.manual_seed(4)
    layer = HebbianLinear(7, 5, rule="soft", t_invert=3.0, lr=0.05, radius=1.5, lebesgue_p=4.0)
    layer.weight = layer.weight.double()
    x = torch.rand(4, 7)
    w0 = layer.weight.clone()
    u = layer(x)
    torch.testing.assert_close(u, x @ phi(w0, 4.0).t())
    y = ref_post_synaptic(u, "soft", 3.0, 1)
    dw = torch.zeros_like(w0)
    for n in range(4):
        for k in range(5):
            dw[k] += y[n, k] * (x[n] - u[n, k] * w0[k])  # the decay term uses w, not φ(w), as the authors' code
    norms = torch.tensor([sum(abs(v) ** 4 for v in w.tolist()) ** 0.25 for w in w0])
    rate = 0.05 * ((norms - 1).abs() + P.RATE_EPS) ** layer.power_lr
    layer.step()
    torch.testing.assert_close(layer.weight, w0 + rate.view(-1, 1) * dw / dw.abs().max())


@pytest.mark.parametrize("p", [2.0, 3.0, 4.5])
@pytest.mark.parametrize("init", ["normal", "uniform"])
def test_initial_p_norms_are_about_the_radius(p, init):
    w = P.init_weight((4000, 50), 3.0, init, torch.Generator().manual_seed(0), p=p)
    # E‖w_k‖_p^p = r^p: the mean of the p-th powers, over 4000 neurons, within 2 %
    assert (w.abs() ** p).sum(1).mean().item() == pytest.approx(3.0 ** p, rel=0.02)
    assert init == "normal" or w.min() >= 0


def test_hardkrotov_pushes_the_ranked_neuron_away():
    u = torch.tensor([[0.3, 2.0, -1.0, 1.2, 0.9]])
    y, winner = P.post_synaptic(u, "hardkrotov", 1.0, delta=0.4, rank=3)
    torch.testing.assert_close(y, torch.tensor([[0.0, 1.0, 0.0, 0.0, -0.4]]))  # winner 2.0, 3rd strongest 0.9
    assert winner.flatten().tolist() == [1]
    with pytest.raises(ValueError, match="rank between 2 and the 5 neurons"):
        P.post_synaptic(u, "hardkrotov", 1.0, delta=0.4, rank=6)
    with pytest.raises(ValueError, match="rank must be an integer between 2 and the 4 neurons"):
        HebbianConv2d(3, 4, 3, rule="hardkrotov", rank=5)


def test_exactly_one_positive_per_position_with_anti_hebbian():
    u = torch.randn(4, 16, 5, 5) * 3
    y, _ = P.post_synaptic(u, "softhebb", 1.0)
    assert ((y > 0).sum(dim=1) == 1).all()
    # ỹ sums to 2·y_max − 1 at every position (reference §10.3)
    soft = torch.softmax(u, dim=1)
    torch.testing.assert_close(y.sum(dim=1), 2 * soft.amax(dim=1) - 1)
    # the positive entry sits at argmax u
    assert (y.argmax(dim=1) == u.argmax(dim=1)).all()


def test_applied_update_has_max_abs_one_per_group():
    layer = HebbianConv2d(4, 8, 3, padding=1, groups=2)
    w0 = layer.weight.clone()
    layer(torch.rand(5, 4, 10, 10))
    rate = layer.learning_rate().view(-1, 1, 1, 1)
    layer.step()
    dw = (layer.weight - w0) / rate
    for group in dw.chunk(2):
        assert group.abs().max().item() == pytest.approx(1.0, abs=1e-9)


def test_update_returns_the_exact_max_abs_per_group_and_propagates_non_finite():
    torch.manual_seed(0)
    w, yx, yu = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2), torch.randn(8)

    def expected(yx: torch.Tensor) -> torch.Tensor:
        dw = torch.addcmul(yx, yu.view(-1, 1, 1, 1), w, value=-1)
        return torch.linalg.vector_norm(dw.view(2, -1), ord=float("inf"), dim=1)

    assert torch.equal(P.apply_update_(w.clone(), yx, yu, torch.ones(8), groups=2), expected(yx))  # exact: a max
    for bad, group in ((float("nan"), 1), (float("-inf"), 0), (float("inf"), 1)):
        y = yx.clone()
        y[4 * group + 1, 0, 0, 0] = bad
        dmax = P.apply_update_(w.clone(), y, yu, torch.ones(8), groups=2)
        assert torch.isfinite(dmax[1 - group]) and not torch.isfinite(dmax[group])


def test_pre_triangle_changes_the_competition_input():
    torch.manual_seed(0)
    plain = HebbianConv2d(3, 6, 3, t_invert=1.0)
    tri = HebbianConv2d(3, 6, 3, t_invert=1.0, pre_triangle=True)
    tri.weight = plain.weight.clone()
    x = torch.rand(2, 3, 6, 6)
    u = plain(x)
    ut = torch.relu(u - u.mean(dim=1, keepdim=True))
    torch.testing.assert_close(tri(x), ut)
    y, _ = P.post_synaptic(ut, "softhebb", 1.0)  # the layer used the triangled u in ỹ and in Σỹu
    torch.testing.assert_close(tri.pending[1], (y * ut).sum(dim=(0, 2, 3)))


def test_radius_rate_formula():
    w = torch.zeros(3, 4)
    w[0, 0] = 1.0  # norm exactly 1
    w[1, :] = 2.0  # norm 4
    w[2, 0] = 0.5  # norm 0.5
    rate = P.radius_rate(w, lr=0.08, power=0.5)
    torch.testing.assert_close(rate, torch.tensor([0.08 * 1e-10**0.5, 0.08 * 3**0.5, 0.08 * 0.5**0.5]))


def test_linear_decay_schedule_reaches_zero():
    layer = HebbianLinear(4, 3, lr=0.2, lr_schedule="linear")
    layer.schedule(4)
    rates = []
    for _ in range(6):
        rates.append(float(layer.learning_rate()[0]))
        layer(torch.rand(2, 4))
        layer.step()
    assert rates == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0, 0.0])


def test_initial_norms_are_about_the_radius():
    conv = HebbianConv2d(384, 64, 3, radius=25.0)
    assert conv.radius().mean().item() == pytest.approx(25.0, rel=0.02)
    lin = HebbianLinear(784, 200, radius=35.0, init="uniform")
    assert lin.radius().mean().item() == pytest.approx(35.0, rel=0.02)
    assert lin.weight.min() >= 0


@pytest.mark.parametrize("rule", P.RULES)
def test_weight_norms_move_toward_one_on_a_stream(rule):
    torch.manual_seed(0)
    layer = HebbianConv2d(3, 8, 3, padding=1, rule=rule, t_invert=1.0, lr=0.05, radius=4.0)
    start = layer.convergence()
    for _ in range(200):
        layer(torch.randn(8, 3, 8, 8))
        layer.step()
    assert layer.convergence() < 0.5 * start
    assert layer.num_updates.item() == 200


def test_no_learning_in_eval_mode_or_when_frozen():
    layer = HebbianConv2d(3, 4, 3)
    w0 = layer.weight.clone()
    layer.eval()
    layer(torch.rand(2, 3, 6, 6))
    assert not layer.step()
    layer.train()
    layer.plastic = False
    layer(torch.rand(2, 3, 6, 6))
    assert not layer.step()
    assert torch.equal(layer.weight, w0)


def test_gradients_flow_to_input_but_not_to_weights():
    layer = HebbianConv2d(3, 4, 3, padding=1)
    layer.eval()
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert list(layer.parameters()) == []


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=0, out_channels=4, kernel_size=3), "must be > 0"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), "groups=2 must divide"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, rule="krotov"), "rule must be one of"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, lr=-1.0), "lr must be >= 0"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, t_invert=0.0), "t_invert must be a positive"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding_mode="mirror"), "padding_mode must be one of"),
])
def test_bad_hyperparameters_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HebbianConv2d(**kwargs)


def test_monitoring_counts_wins_and_winner_share():
    layer = HebbianConv2d(3, 6, 3, groups=3, rule="softhebb", t_invert=1.0)
    x = torch.rand(2, 3, 5, 5)
    u = layer(x)
    assert layer.win_counts.sum().item() == 2 * 3 * 3 * 3  # batch · groups · positions
    soft = torch.softmax(u.view(2, 3, 2, 3, 3), dim=2)
    assert layer.winner_share() == pytest.approx(soft.amax(dim=2).mean().item())
    expected_wins = torch.bincount((u.view(2, 3, 2, 3, 3).argmax(2) + torch.tensor([0, 2, 4]).view(1, 3, 1, 1)).flatten(), minlength=6)
    assert torch.equal(layer.win_counts, expected_wins)
    s = layer.stats()
    assert set(s) >= {"radius_mean", "convergence", "r1", "winner_share", "lr_mean"}


def test_layers_name_the_input_shape_they_expect():
    conv, lin = HebbianConv2d(3, 4, 3), HebbianLinear(6, 2)
    cases = ((conv, torch.rand(3, 8, 8), r"\(N, 3, H, W\)"), (conv, torch.rand(1, 2, 8, 8), r"got shape \(1, 2, 8, 8\)"),
             (lin, torch.rand(6), r"\(N, 6\) input \(flatten first\)"), (lin, torch.rand(2, 5, 6), r"got shape \(2, 5, 6\)"))
    for layer, x, message in cases:
        for training in (True, False):  # the same answer whether or not the layer learns
            layer.train(training)
            with pytest.raises(ValueError, match=message):
                layer(x)
    with pytest.raises(ValueError, match="padding must be an int or a pair of ints, got 'same'"):
        HebbianConv2d(3, 4, 3, padding="same")


@pytest.mark.parametrize("rule", ["softhebb", "soft"])
def test_plastic_bias_matches_per_sample_reference_linear(rule):
    torch.manual_seed(5)
    layer = HebbianLinear(6, 4, rule=rule, t_invert=2.0, lr=0.05, radius=1.5, bias=True)
    layer.weight, layer.bias = layer.weight.double(), layer.bias.double()
    torch.testing.assert_close(layer.bias, torch.full((4,), math.log(1 / 4) / 2.0))  # the uniform prior
    layer.bias += torch.tensor([0.3, -0.2, 0.1, 0.0])
    x = torch.rand(5, 6)
    w0, b0 = layer.weight.clone(), layer.bias.clone()
    u = layer(x)
    torch.testing.assert_close(u, x @ w0.t() + b0)
    y = ref_post_synaptic(u, rule, 2.0, 1)
    dw = torch.zeros_like(w0)
    db = torch.zeros_like(b0)
    for n in range(5):
        for k in range(4):
            dw[k] += y[n, k] * (x[n] - u[n, k] * w0[k])
            db[k] += abs(y[n, k])  # the softmax, whatever the sign the rule gives it
    db = (db - 5 * torch.exp(2.0 * b0)) / torch.exp(2.0 * b0)
    rate = layer.learning_rate()
    layer.step()
    torch.testing.assert_close(layer.weight, w0 + rate.view(-1, 1) * dw / dw.abs().max())
    torch.testing.assert_close(layer.bias, b0 + rate * (db / db.abs().max()) / 2.0)


@pytest.mark.parametrize("stride,padding,dilation,groups,padding_mode", CONV_CASES)
def test_plastic_bias_matches_per_patch_reference_conv(stride, padding, dilation, groups, padding_mode):
    torch.manual_seed(6)
    layer = HebbianConv2d(6, 6, kernel_size=3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          padding_mode=padding_mode, t_invert=0.7, lr=0.1, radius=2.0, bias=True)
    layer.weight, layer.bias = layer.weight.double(), layer.bias.double() + torch.linspace(-0.5, 0.5, 6)
    x = torch.rand(2, 6, 8, 9)
    w0, b0 = layer.weight.clone(), layer.bias.clone()
    u = layer(x)
    u_ref, _, _ = ref_conv_delta(x, w0, stride, padding, dilation, groups, padding_mode, "softhebb", 0.7)
    torch.testing.assert_close(u, u_ref + b0.view(1, -1, 1, 1))
    y = ref_post_synaptic(u, "softhebb", 0.7, groups)
    m = y.shape[0] * y.shape[2] * y.shape[3]  # competitions per neuron: every sample and position
    db = (y.abs().sum(dim=(0, 2, 3)) - m * torch.exp(0.7 * b0)) / torch.exp(0.7 * b0)
    rate = layer.learning_rate()
    layer.step()
    torch.testing.assert_close(layer.bias, b0 + rate * (db / db.abs().max()) * 0.1 / 0.7)


def test_bias_needs_the_soft_competition():
    with pytest.raises(ValueError, match="true only with rule softhebb or soft"):
        HebbianConv2d(3, 4, 3, rule="hard", bias=True)
    from softhebb.network import PresetError, resolve_preset
    with pytest.raises(PresetError, match="'bias' must be false with rule 'hard'"):
        resolve_preset({"name": "p", "blocks": [{"type": "linear", "out": 4, "rule": "hard", "bias": True}]})
