"""softhebb.analysis on tiny networks and random images (plus one real-data CLI run when available)."""

import copy
import dataclasses
import json

import pytest
import torch

from softhebb import analysis as A
from softhebb.cli import main
from softhebb.network import build_model
from softhebb.run import RunConfig, atomic_write, run, save_model
from softhebb.batching import as_input
from softhebb.hebbian import hebbian_phase

TINY = {"name": "tiny", "blocks": [
    {"type": "conv", "out": 8, "kernel": 5, "padding": 2, "t_invert": 1, "lr": 0.08, "power_lr": 0.5, "activation": "triangle_0.7",
     "pool": "max_4_2_1"},
    {"type": "conv", "out": 16, "kernel": 3, "padding": 1, "t_invert": 0.65, "lr": 0.005, "power_lr": 0.5,
     "activation": "triangle_1.4", "pool": "max_4_2_1"},
    {"type": "conv", "out": 32, "kernel": 3, "padding": 1, "t_invert": 0.25, "lr": 0.01, "power_lr": 0.5,
     "activation": "triangle_1", "pool": "avg_2_2_0"}]}
TINY_BP = {"name": "tiny_bp", "blocks": [{**b, "rule": "bp", "activation": "relu"} for b in TINY["blocks"]]}
MLP = {"name": "mlp", "classifier": {"dropout": 0.0}, "blocks": [
    {"type": "linear", "rule": "soft", "out": 20, "t_invert": 12, "lr": 0.045, "radius": 35, "activation": "softmax_5"}]}


def _images(n=40, shape=(1, 28, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g)


def _trained(preset=TINY, shape=(1, 28, 28), n=40, seed=0):
    model = build_model(preset, shape, 10, seed=seed)
    x, y = _images(n, shape, seed)
    hebbian_phase(model, x, batch_size=10, progress=False)
    return model, x, y


def _run_dir(path, preset=TINY, shape=(1, 28, 28), fit_head=False):
    model, x, y = _trained(preset, shape) if any(b.get("rule") != "bp" for b in preset["blocks"]) else \
        (build_model(preset, shape, 10, seed=0), *_images(40, shape))
    if fit_head:
        _fit_head(model, x, y)
    run_cfg = {**dataclasses.asdict(RunConfig(dataset="mnist" if shape[0] == 1 else "cifar10")), "preset": preset["name"]}
    config = {"run": run_cfg, "preset": model.preset, "in_shape": list(shape), "num_classes": 10}
    path.mkdir(parents=True)
    atomic_write(path / "config.json", json.dumps(config))
    save_model(model, path / "model.safetensors", config)
    return path, (x, y)


def _fit_head(model, x, y, steps=150):
    """Memorise the labels of the random images so attacks have correct answers to break."""
    with torch.no_grad():
        f = model.features(as_input(x)).flatten(1)
    opt = torch.optim.Adam(model.classifier.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model.classifier(f), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# -- receptive fields ---------------------------------------------------------------------------
def test_rf_sizes_of_4SoftHebbCnnCIFAR_match_a_hand_computation():
    # size += (k−1)·jump, jump *= stride, start −= padding·jump, layer by layer:
    # conv1 k5 p2: 5 (jump 1, start −2); max 4/2/1: 5+3·1 = 8 (jump 2, start −3);
    # conv2 k3 p1: 8+2·2 = 12 (start −5);  max 4/2/1: 12+3·2 = 18 (jump 4, start −7);
    # conv3 k3 p1: 18+2·4 = 26 (start −11); avg 2/2/0: 26+1·4 = 30 (jump 8).
    # Fig. 2 of the paper quotes 5, 12, 26 for the first three layers (of the STL-10 net, same geometry).
    rfs = A.receptive_fields("4SoftHebbCnnCIFAR", (3, 32, 32))
    assert [r.conv_size for r in rfs] == [5, 12, 26]
    assert [r.size for r in rfs] == [8, 18, 30]
    assert [r.conv_jump for r in rfs] == [1, 2, 4] and [r.jump for r in rfs] == [2, 4, 8]
    assert [r.conv_start for r in rfs] == [-2, -5, -11] and [r.start for r in rfs] == [-3, -7, -11]
    assert [r.out_shape for r in rfs] == [(96, 16, 16), (384, 8, 8), (1536, 4, 4)]
    assert A.receptive_fields("2SoftMlpMNIST", (1, 28, 28))[0].whole_image


def test_gradient_support_of_a_unit_is_exactly_its_theoretical_window():
    preset = {**TINY, "blocks": [{**b, "pool": b["pool"].replace("max", "avg")} for b in TINY["blocks"]]}
    model = build_model(preset, (3, 32, 32), 10, seed=0).eval()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    u = model.blocks[2].layer(model.blocks[2].pre(model.features(x, 2)))
    i = j = 4
    u[0, :, i, j].sum().backward()
    rows, cols = (x.grad[0].abs().sum(0) > 0).nonzero().unbind(1)
    top, left, size = A.receptive_fields(model)[2].window(i, j, after_pool=False)
    assert (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1) == (top, left, top + size, left + size)


def test_unit_response_on_the_rf_crop_equals_the_full_network_at_an_interior_unit():
    model, x, _ = _trained(TINY, (3, 32, 32), n=20)
    h = as_input(x[:4])
    for b in range(3):
        full = model.blocks[b].layer(model.blocks[b].pre(model.features(h, b)))
        i = full.shape[2] // 2
        top, left, size = A.receptive_fields(model)[b].window(i, i, after_pool=False)
        crop = A.crop(h, top, left, size)
        torch.testing.assert_close(A.unit_response(model, crop, b), full[:, :, i, i], rtol=1e-4, atol=1e-4)


def test_crop_fills_outside_the_image():
    img = torch.arange(16.0).view(1, 4, 4)
    c = A.crop(img, -1, 2, 3, fill=-1)
    assert c.shape == (1, 3, 3) and c[0, 0].tolist() == [-1, -1, -1] and c[0, 1].tolist() == [2, 3, -1]


# -- filters and activation maximisation --------------------------------------------------------
@pytest.mark.parametrize("preset,shape", [(TINY, (1, 28, 28)), (TINY, (3, 32, 32)), (MLP, (1, 28, 28))])
def test_filter_grid_shapes_range_and_order(preset, shape):
    model = build_model(preset, shape, 10, seed=0)
    f, order = A.first_layer_filters(model)
    k = model.blocks[0].layer.weight.shape[0]
    expected = (k, shape[0], 5, 5) if preset is TINY else (k, *shape)
    assert f.shape == expected and sorted(order.tolist()) == list(range(k))
    assert f.min() >= 0 and f.max() <= 1 and torch.allclose(f.flatten(1).amax(1), torch.ones(k))
    std = A.filter_std(model.blocks[0].layer.weight)[order]
    assert (std[:-1] >= std[1:]).all()
    grid = A.tile(f, ncols=4, pad=1)
    rows = -(-k // 4)
    assert grid.shape == (shape[0], rows * (expected[2] + 1) + 1, 4 * (expected[3] + 1) + 1)


def test_activation_maximisation_of_a_first_layer_neuron_is_its_bn_scaled_filter():
    model, _, _ = _trained(TINY, (3, 32, 32), n=20)
    neurons = torch.tensor([0, 3, 5])
    x, resp = A.maximize_activation(model, 0, neurons, steps=60, budget=0.05)
    assert x.shape == (3, 3, 5, 5) and x.min() >= 0 and x.max() <= 1
    bn = model.blocks[0].pre[0]
    w = model.blocks[0].layer.weight[neurons] / (bn.running_var + bn.eps).sqrt().view(1, -1, 1, 1)
    cos = torch.nn.functional.cosine_similarity((x - 0.5).flatten(1), w.flatten(1), dim=1)
    assert (cos > 0.99).all(), cos
    assert ((x - 0.5).flatten(1).norm(dim=1) <= 0.05 * 75 ** 0.5 + 1e-4).all()
    grey = A.unit_response(model, torch.full((3, 3, 5, 5), 0.5), 0).gather(1, neurons.view(-1, 1)).squeeze(1)
    assert (resp > grey).all()


def test_activation_maximisation_of_deeper_neurons_raises_their_response():
    model, _, _ = _trained(TINY, (1, 28, 28), n=20)
    idx = A.pick_neurons(model, 2, 4, seed=0)
    x, resp = A.maximize_activation(model, 2, idx, steps=20, budget=0.3)
    assert x.shape == (4, 1, 26, 26)
    start = A.unit_response(model, torch.full((4, 1, 26, 26), 0.5), 2).gather(1, idx.view(-1, 1)).squeeze(1)
    assert (resp > start).all()


# -- learning dynamics --------------------------------------------------------------------------
def test_dynamics_records_are_monotone_and_training_matches_hebbian_phase():
    x, _ = _images(40, (1, 28, 28))
    ref = build_model(TINY, (1, 28, 28), 10, seed=0)
    hebbian_phase(ref, x, batch_size=10, epochs=2, seed=3, progress=False)
    model = build_model(TINY, (1, 28, 28), 10, seed=0)
    dyn = A.record_dynamics(model, x, batch_size=10, epochs=2, seed=3, every=3)
    for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for b in range(3):
        rows = dyn.block_rows(b)
        seen = [r["examples"] for r in rows]
        assert seen == sorted(set(seen)) and seen[0] == 0 and seen[-1] == 80
        assert [r["updates"] for r in rows] == [s // 10 for s in seen]
        assert dyn.radius[b].shape == dyn.lr[b].shape == dyn.wins[b].shape == (len(rows), TINY["blocks"][b]["out"])
        torch.testing.assert_close(dyn.radius[b][-1], model.blocks[b].layer.radius().double())
        for r in rows[1:]:
            assert 0 <= r["winner_share"] <= 1 and r["anti_hebbian_share"] == pytest.approx(1 - r["winner_share"])
            assert 0 <= r["r1"] <= r["neurons"] and r["radius_q05"] <= r["radius_q50"] <= r["radius_q95"]
        torch.testing.assert_close(dyn.wins[b][1:].sum(1), torch.ones(len(rows) - 1, dtype=torch.float64))


def test_schedule_comparison_radius_vs_linear_decay():
    x, _ = _images(40, (1, 28, 28))
    comp = A.compare_schedules(TINY, (1, 28, 28), 10, x, blocks=1, batch_size=10, every=1)
    assert set(comp) == {"radius", "linear"}
    lin = comp["linear"].block_rows(0)
    assert lin[0]["lr_mean"] == pytest.approx(0.08) and lin[-1]["lr_mean"] == pytest.approx(0.0, abs=1e-12)
    rad = comp["radius"].block_rows(0)
    assert [r["examples"] for r in rad] == [r["examples"] for r in lin] == [0, 10, 20, 30, 40]
    assert rad[-1]["lr_mean"] < rad[0]["lr_mean"]  # the radius-dependent rate anneals as norms approach 1
    assert comp["radius"].radius[0][0].tolist() == comp["linear"].radius[0][0].tolist()  # same initial weights


# -- representations ----------------------------------------------------------------------------
def test_block_outputs_embeddings_and_knn():
    model, x, y = _trained(TINY, (3, 32, 32))
    acts = A.block_outputs(model, x, batch_size=16)
    assert [tuple(a.shape) for a in acts.values()] == [(40, 8, 16, 16), (40, 16, 8, 8), (40, 32, 4, 4)]
    torch.testing.assert_close(acts[2], model.features(as_input(x)))
    e = A.embed_2d(acts[1], "pca")
    assert e.shape == (40, 2)
    c = acts[1].flatten(1).double() - acts[1].flatten(1).double().mean(0)
    top = torch.linalg.svdvals(c)[:2]
    torch.testing.assert_close(e.double().norm(dim=0), top, rtol=1e-3, atol=1e-6)  # PC scores have norm σ_i
    pytest.importorskip("sklearn")
    assert A.embed_2d(acts[2], "tsne").shape == (40, 2)
    assert 0 <= A.knn_accuracy(acts[2], y) <= 100
    assert A.knn_accuracy(torch.eye(10).repeat(3, 1), torch.arange(10).repeat(3)) == 100.0


def test_sparsity_bounds_and_known_values():
    model, x, _ = _trained(TINY, (1, 28, 28))
    for a in A.block_outputs(model, x).values():
        s = A.sparsity(a)
        assert all(0 <= v <= 1 for v in s.values()), s
    one_hot = torch.eye(8).repeat(5, 1)  # every image: one neuron active; every neuron: active on 1/8 of images
    s = A.sparsity(one_hot)
    assert s["population"] == pytest.approx(1) and s["zero_fraction"] == pytest.approx(7 / 8)
    assert s["lifetime"] == pytest.approx((1 - 1 / 8) / (1 - 1 / 40)) and s["dead_fraction"] == 0
    dense = A.sparsity(torch.ones(6, 4, 2, 2))
    assert dense["population"] == dense["lifetime"] == dense["zero_fraction"] == 0
    assert A.sparsity(torch.cat([torch.ones(6, 3), torch.zeros(6, 1)], 1))["dead_fraction"] == 0.25


def test_top_patches_are_the_receptive_field_at_the_argmax():
    model, x, _ = _trained(TINY, (1, 28, 28))
    acts = A.block_outputs(model, x, [1])[1]
    neurons = A.alive_neurons(acts, 3)
    patches, rows = A.top_patches(model, x, 1, neurons, k=4, acts=acts)
    assert patches.shape == (3, 4, 1, 18, 18) and len(rows) == 12
    for r in rows:
        assert r["activation"] == pytest.approx(float(acts[r["image"], r["neuron"]].max()))
        assert r["activation"] == pytest.approx(float(acts[r["image"], r["neuron"], r["row"], r["col"]]))
    r = rows[5]
    expected = A.crop(as_input(x[r["image"]]), r["top"], r["left"], 18)
    torch.testing.assert_close(patches[1, 1], expected)
    assert len({r["image"] for r in rows if r["neuron"] == rows[0]["neuron"]}) == 4  # distinct images


# -- robustness ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    model, x, y = _trained(TINY, (1, 28, 28), n=32)
    _fit_head(model, x, y)
    return model, x, y


def test_noise_and_attacks_at_zero_equal_clean_accuracy(fitted):
    model, x, y = fitted
    clean = A.clean_accuracy(model, x, y)
    assert clean > 90  # the head memorised the labels
    assert A.noise_accuracy(model, x, y, [0.0])[0]["acc"] == clean
    for norm in ("linf", "l2"):
        for steps in (0, 3):
            assert A.attack_accuracy(model, x, y, [0.0], norm, steps)[0]["acc"] == clean


def test_pgd_is_non_increasing_in_eps_and_stronger_than_noise(fitted):
    model, x, y = fitted
    for norm, eps in (("linf", [0.0, 0.01, 0.03, 0.1, 0.3]), ("l2", [0.0, 0.3, 1.0, 3.0])):
        # each ε attacked on its own (the reported curve is nested, hence monotone by construction)
        alone = [A.attack_accuracy(model, x, y, [e], norm, steps=5, seed=1)[0]["acc"] for e in eps]
        assert alone[0] > alone[-1] and alone[1] >= alone[-1], alone  # a larger budget breaks more
        fgsm = A.attack_accuracy(model, x, y, [eps[-2]], norm, steps=0, seed=1)[0]["acc"]
        assert alone[-2] <= fgsm + 5, (alone, fgsm)  # iterating does not weaken the attack
    assert all(layer.pending is None for layer in model.modules() if hasattr(layer, "zero_pending"))
    assert not model.training and not any(m.training for m in model.modules())


def test_margin_loss_defeats_the_gradient_masking_of_a_saturated_softmax(fitted):
    """Trained SoftHebb heads have logit margins in the thousands; there float32 cross-entropy is
    exactly 0 with a zero gradient, so a CE-driven FGSM would report false robustness."""
    model, x, y = fitted
    big = copy.deepcopy(model)
    with torch.no_grad():
        big.classifier.weight.mul_(1e4)
        big.classifier.bias.mul_(1e4)
    h = as_input(x).requires_grad_(True)
    g_ce, = torch.autograd.grad(A.attack_loss(big(h), y, "ce"), h)
    assert g_ce.abs().max() == 0
    ce = A.attack_accuracy(big, x, y, [0.0, 0.3], "linf", steps=0, loss="ce")[-1]["acc"]
    margin = A.attack_accuracy(big, x, y, [0.0, 0.3], "linf", steps=0, loss="margin")[-1]["acc"]
    assert ce == A.clean_accuracy(big, x, y) and margin < ce


def test_attacks_stay_in_the_box_and_the_ball(fitted):
    model, x, y = fitted
    h = as_input(x[:8])
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        for steps in (0, 4):
            adv = A.attack(model, h, y[:8], eps, norm, steps, generator=torch.Generator().manual_seed(0))
            d = (adv - h).flatten(1)
            size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
            assert adv.min() >= 0 and adv.max() <= 1 and (size <= eps + 1e-5).all()


def test_robustness_table_has_every_attack(fitted):
    model, x, y = fitted
    rows = A.robustness(model, x[:16], y[:16], [0.0, 0.2], [0.0, 0.1], [0.0, 1.0], pgd_steps=2)
    assert {(r["attack"], r["norm"]) for r in rows} == {("clean", ""), ("gaussian", ""), ("fgsm", "linf"), ("pgd", "linf"),
                                                        ("fgm", "l2"), ("pgd", "l2")}


# -- run directories and the CLI ----------------------------------------------------------------
def test_run_level_analyses_write_figures_and_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    hebb, (x, y) = _run_dir(tmp_path / "hebb", fit_head=True)
    bp, _ = _run_dir(tmp_path / "bp", TINY_BP)
    data = (x, y, tuple(str(i) for i in range(10)))
    out = tmp_path / "out"
    dyn = A.analyze_dynamics(hebb, out, data=data, every=2, schedule_blocks=1)
    rep = A.analyze_representations(hebb, out, data=data, neurons=2, top_k=3, tsne=False)
    rob = A.analyze_robustness([hebb, bp], out, data=data, sigmas=[0, 0.1], eps_linf=[0, 0.05], eps_l2=[0, 0.5], pgd_steps=2)
    for name in ("dynamics.png", "dynamics.csv", "dynamics.npz", "schedules.png", "schedules.csv", "embeddings.png",
                 "embeddings.csv", "sparsity.png", "sparsity.csv", "top_patches_block2.png", "top_patches.csv",
                 "representations.json", "robustness.png", "robustness.csv", "robustness.json"):
        assert (out / name).stat().st_size > 0, name
    assert {r["run"] for r in rob["rows"]} == {"hebb", "bp"}
    assert all(0 <= s["population"] <= 1 for s in rep["sparsity"]) and dyn["rows"][-1]["examples"] == 40
    assert (out / "dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_filters_and_receptive_fields_without_data(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    hebb, _ = _run_dir(tmp_path / "hebb")
    bp, _ = _run_dir(tmp_path / "bp", TINY_BP)
    out = tmp_path / "out"
    assert main(["analyze", "filters", str(hebb), str(bp), "--out", str(out), "--labels", "SoftHebb,BP"]) == 0
    assert main(["analyze", "receptive-fields", str(hebb), "--out", str(out / "rf"), "--neurons", "4", "--am-steps", "5"]) == 0
    assert (out / "filters.png").stat().st_size > 0
    assert {r.split(",")[0] for r in (out / "filters.csv").read_text().splitlines()[1:]} == {"SoftHebb", "BP"}
    rf = json.loads((out / "rf" / "rf_sizes.json").read_text())
    assert [r["conv_size"] for r in rf] == [5, 12, 26]
    for name in ("receptive_fields.png", "receptive_fields.csv", "receptive_fields.npz", "rf_sizes.csv"):
        assert (out / "rf" / name).stat().st_size > 0
    assert str(out / "filters.png") in capsys.readouterr().out
    assert main(["analyze", "filters", str(hebb), str(bp), "--labels", "only-one"]) == 2  # clear error, no traceback


def test_cli_analyze_all_on_a_real_mnist_run(data_root, tmp_path):
    pytest.importorskip("matplotlib")
    rd = tmp_path / "run"
    run(RunConfig(preset="2SoftHebbCnnCIFAR", dataset="mnist", train_limit=100, test_limit=50, probe_epochs=1),
        rd, data_root, progress=False, echo=False)
    out = tmp_path / "out"
    args = ["analyze", "all", str(rd), "--out", str(out), "--data-dir", str(data_root), "--limit", "40", "--neurons", "4",
            "--am-steps", "5", "--top-k", "3", "--pgd-steps", "2", "--eps-linf", "0,0.1", "--eps-l2", "0,1", "--sigmas",
            "0,0.2", "--no-tsne", "--every", "2"]
    assert main(args) == 0
    for name in ("filters.png", "rf_sizes.json", "receptive_fields.png", "dynamics.png", "schedules.png", "embeddings.png",
                 "sparsity.csv", "top_patches_block0.png", "robustness.png", "robustness.csv"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "robustness.json").read_text())
    clean = next(r["acc"] for r in rows if r["attack"] == "clean")
    assert all(r["acc"] == clean for r in rows if r["eps"] == 0)
