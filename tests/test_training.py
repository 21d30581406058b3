"""The Hebbian phase's schedules, the prefix cache and features, the probe and hybrid mode, and the head's dropout."""


import pytest
import torch

from softhebb import features
from softhebb.features import PrefixCache, extract_features
from softhebb.hebbian import hebbian_phase
from softhebb.hybrid import train_hybrid
from softhebb.modules import Dropout
from softhebb.network import build_model
from softhebb.probe import step_lr_milestones, train_probe

TINY = {"name": "tiny", "blocks": [
    {"type": "conv", "out": 8, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "max_4_2_1"},
    {"type": "conv", "out": 16, "kernel": 3, "padding": 1, "t_invert": 0.5, "lr": 0.02, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "avg_2_2_0"}]}


def images(n=60, seed=0):
    return torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_step_lr_milestones_match_the_original_schedule():
    assert step_lr_milestones(50) == [10, 17, 25, 30, 35, 40, 45]
    assert step_lr_milestones(100) == [20, 35, 50, 60, 70, 80, 90]
    assert step_lr_milestones(200) == [40, 70, 100, 120, 140, 160, 180]
    assert step_lr_milestones(19) == []
    assert step_lr_milestones(30) == [15, 22]


def test_successive_trains_each_block_once_and_never_touches_earlier_blocks_again():
    x = images()
    model = build_model(TINY, (3, 12, 12), 10, seed=0)
    snapshots = {}

    def log(row):  # called at the end of each block's epoch
        snapshots[row["block"]] = [b.layer.weight.clone() for b in model.blocks]

    hebbian_phase(model, x, "successive", batch_size=10, seed=1, log=log, progress=False)
    assert [b.layer.num_updates.item() for b in model.blocks] == [6, 6]
    # Block 0 is final after its own stage; block 1 had not moved before its stage.
    assert torch.equal(snapshots[0][0], model.blocks[0].layer.weight)
    assert torch.equal(snapshots[0][1], build_model(TINY, (3, 12, 12), 10, seed=0).blocks[1].layer.weight)
    assert not torch.equal(snapshots[1][1], snapshots[0][1])
    # Each BatchNorm tracked statistics only during its own block's epoch: 6 batches each.
    assert [blk.pre[0].num_batches_tracked.item() for blk in model.blocks] == [6, 6]
    assert not model.training


def test_linear_decay_schedule_spans_the_hebbian_phase():
    spec = {"name": "lin", "blocks": [dict(TINY["blocks"][0], lr_schedule="linear")]}
    model = build_model(spec, (3, 12, 12), 10, seed=0)
    hebbian_phase(model, images(), batch_size=10, epochs=2, progress=False)
    layer = model.blocks[0].layer
    assert layer.total_steps == 12 and layer.num_updates.item() == 12
    assert layer.learning_rate().abs().max().item() == 0.0  # decayed to zero exactly at the end


def test_stray_forward_before_training_does_not_leak_into_the_first_step():
    x = images()
    a = build_model(TINY, (3, 12, 12), 10, seed=0)
    b = build_model(TINY, (3, 12, 12), 10, seed=0)
    with torch.no_grad():
        b.blocks[0].layer(torch.rand(4, 3, 12, 12))  # accumulates sums in train mode
    hebbian_phase(a, x, batch_size=10, seed=1, progress=False)
    hebbian_phase(b, x, batch_size=10, seed=1, progress=False)
    assert torch.equal(a.blocks[0].layer.weight, b.blocks[0].layer.weight)


def test_simultaneous_trains_all_blocks_in_one_pass_with_pre_update_weights():
    x = images(20)
    model = build_model(TINY, (3, 12, 12), 10, seed=0)
    ref = build_model(TINY, (3, 12, 12), 10, seed=0)
    hebbian_phase(model, x, "simultaneous", batch_size=10, seed=1, progress=False)
    # Reference: a plain loop over the same order, stepping every layer after one full forward.
    order = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    ref.train()
    with torch.no_grad():
        for idx in order.split(10):
            ref.features(x[idx].float() / 255)
            for blk in ref.blocks:
                blk.layer.step()
    for m, r in zip(model.blocks, ref.blocks):
        torch.testing.assert_close(m.layer.weight, r.layer.weight)
        torch.testing.assert_close(m.pre[0].running_mean, r.pre[0].running_mean)


def test_hybrid_mode_gives_the_hebbian_updates_of_a_simultaneous_pass_and_trains_the_classifier():
    """Fig. B.3.B's mode: each batch updates the Hebbian blocks and steps the classifier; no gradient reaches the
    Hebbian weights, so they follow exactly the simultaneous Hebbian phase over the same batches."""
    x, y = images(120), torch.randint(0, 10, (120,), generator=torch.Generator().manual_seed(1))
    spec = {**TINY, "blocks": [TINY["blocks"][0], {**TINY["blocks"][1], "lr_schedule": "linear"}]}  # both schedules
    hybrid = build_model(spec, (3, 12, 12), 10, seed=3)
    head0 = hybrid.classifier.weight.clone()
    rows: list[dict] = []
    result = train_hybrid(hybrid, x, y, x[:40], y[:40], epochs=1, batch_size=50, seed=3, log=rows.append, progress=False)
    hebbian_only = build_model(spec, (3, 12, 12), 10, seed=3)
    hebbian_phase(hebbian_only, x, mode="simultaneous", batch_size=50, seed=3, progress=False)
    for a, b in zip(hybrid.blocks, hebbian_only.blocks):
        assert torch.equal(a.layer.weight, b.layer.weight) and torch.equal(a.pre[0].running_var, b.pre[0].running_var)
    assert not torch.equal(hybrid.classifier.weight, head0)
    per_batch = [r for r in rows if "seen" in r]
    assert [r["seen"] for r in per_batch] == [50, 100, 120]
    assert {"r1_0", "convergence_0", "lr_mean_0", "r1_1", "loss", "acc"} <= set(per_batch[0])
    assert rows[-1]["test_acc"] == result["test_acc"]


def test_hebbian_phase_is_deterministic_for_a_seed():
    x = images()
    runs = []
    for _ in range(2):
        m = build_model(TINY, (3, 12, 12), 10, seed=4)
        hebbian_phase(m, x, batch_size=10, seed=4, progress=False)
        runs.append(extract_features(m, x))
    assert torch.equal(*runs)


def test_probe_halves_the_learning_rate_on_schedule():
    model = build_model(TINY, (3, 12, 12), 3, seed=0)
    f, y = torch.randn(64, model.num_features), torch.randint(0, 3, (64,))
    rows = []
    train_probe(model, f, y, f, y, epochs=20, batch_size=32, log=rows.append, progress=False)
    lrs = [r["lr"] for r in rows]
    assert lrs[9] == 1e-3 and lrs[10] == 5e-4 and lrs[15] == 2.5e-4 and lrs[-1] == 2.5e-4  # halved after 10 and 15


def test_probe_learns_a_separable_problem():
    torch.manual_seed(0)
    model = build_model(TINY, (3, 12, 12), 3, seed=0)
    centers = torch.randn(3, model.num_features) * 3
    y = torch.randint(0, 3, (600,))
    f = centers[y] + torch.randn(600, model.num_features)
    train_f = f[:500].clone()
    res = train_probe(model, train_f, y[:500], f[500:], y[500:], epochs=5, batch_size=32, progress=False)
    assert res["test_acc"] > 95
    assert torch.equal(train_f, f[:500]) and not model.dropout.inplace  # its dropout overwrote only its own copies


def test_fast_dropout_keeps_half_and_rescales():
    d = Dropout(0.5).train()
    x = torch.ones(64, 1001, requires_grad=True)
    out = d(x)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert abs((out > 0).float().mean().item() - 0.5) < 0.01
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # gradient flows through kept entries only
    assert torch.equal(d.eval()(x), x)
    d4 = Dropout(0.4, inplace=True).train()
    ones = torch.ones(100000)
    assert abs((d4(ones) > 0).float().mean().item() - 0.6) < 0.01
    assert torch.equal(ones, torch.ones(100000))  # p ≠ 0.5 never in place (CUDA's in-place kernel draws other masks)
    with pytest.raises(ValueError, match="dropout p"):
        Dropout(1.0)


def test_dropout_reuses_its_mask_storage_without_changing_masks_or_gradients():
    def fresh(x: torch.Tensor, seed: int) -> torch.Tensor:  # what the masks must be: new storage every call
        torch.manual_seed(seed)
        rand = torch.empty((x.numel() + 7) // 8, dtype=torch.uint8).random_()
        return x * ((rand.long().unsqueeze(1) >> torch.arange(8)) & 1).flatten()[:x.numel()].view_as(x) * 2.0

    d = Dropout(0.5).train()
    x = torch.rand(64, 1001)
    for seed in (1, 2, 3):  # the second and third calls reuse the first one's storage
        torch.manual_seed(seed)
        assert torch.equal(d(x), fresh(x, seed))
    d.inplace = True
    y = x.clone()
    torch.manual_seed(4)
    assert d(y) is y and torch.equal(y, fresh(x, 4))  # overwritten, the same values
    # a mask autograd keeps is never reused: two forwards, then both backwards
    a, b = torch.rand(8, 9, requires_grad=True), torch.rand(8, 9, requires_grad=True)
    out_a, out_b = d(a), d(b)
    assert out_a.data_ptr() != a.data_ptr()  # never in place on a tracked input
    (out_a.sum() + out_b.sum()).backward()
    assert torch.equal(a.grad, out_a.detach() / a.detach()) and torch.equal(b.grad, out_b.detach() / b.detach())


@pytest.mark.parametrize("nchw_weight_bytes", [None, 100_000])  # 100 kB: the last conv runs NCHW
def test_features_are_the_flattened_nchw_block_outputs(nchw_weight_bytes, monkeypatch):
    """extract_features computes convs channels-last or NCHW (conv_layout); values and feature order must not change."""
    if nchw_weight_bytes:
        monkeypatch.setattr(features, "NCHW_WEIGHT_BYTES", nchw_weight_bytes)
    model = build_model("4SoftHebbCnnCIFAR_quarterNeurons", (3, 32, 32), 10, seed=0)
    layouts = [features.conv_layout(b, torch.zeros(1, b.layer.weight.shape[1], 2, 2)) for b in model.blocks]
    assert layouts == [torch.channels_last] * 2 + [torch.contiguous_format if nchw_weight_bytes else torch.channels_last]
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        ref = model.eval().features(x.float() / 255).flatten(1)
    got = extract_features(model, x, batch_size=3)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


THREE = {"name": "three", "blocks": [*TINY["blocks"][:1], dict(TINY["blocks"][0], out=12, pool="max_3_2_1"),
                                     TINY["blocks"][1]]}


@pytest.mark.parametrize("shape", [(3, 12, 12), (1, 14, 14)])  # 1 channel: the chain leaves some outputs NCHW
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("nchw_weight_bytes", [None, 1000])  # 1 kB: the frozen second conv runs NCHW
def test_prefix_cache_gives_the_same_weights_and_features_as_recomputing_the_prefix(shape, precision, nchw_weight_bytes,
                                                                                     monkeypatch):
    """Successive training from the PrefixCache (each frozen prefix computed once per image, ``forward_chunk`` rows
    at a time) against recomputing it for every batch of 10; then the features made in its buffer against computing them."""
    if nchw_weight_bytes:
        monkeypatch.setattr(features, "NCHW_WEIGHT_BYTES", nchw_weight_bytes)
    x = torch.randint(0, 256, (70, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cached, plain = (build_model(THREE, shape, 10, seed=0) for _ in range(2))
    cache = hebbian_phase(cached, x, batch_size=10, epochs=2, seed=1, progress=False, precision=precision)
    assert hebbian_phase(plain, x, batch_size=10, epochs=2, seed=1, progress=False, precision=precision,
                         cache_prefix=False) is None
    assert cache.depth == 2  # the input of the last block
    fresh = PrefixCache(cached, x)  # what a run resumed in the last stage builds: both blocks in one pass
    assert torch.equal(fresh.advance(2, precision), cache.advance(2, precision))
    for a, b in zip(cached.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    want = extract_features(plain, x, batch_size=30, dtype=dtype, precision=precision)
    got = extract_features(cached, x, dtype=dtype, precision=precision, cache=cache)
    assert got.shape == want.shape == (70, cached.num_features) and got.dtype == dtype
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="other images"):
        extract_features(cached, x.clone(), cache=cache)


def test_no_prefix_cache_where_it_cannot_apply():
    x = images()
    assert hebbian_phase(build_model(THREE, (3, 12, 12), 10, seed=0), x, "simultaneous", progress=False) is None
    one = {"name": "one", "blocks": TINY["blocks"][:1]}
    assert hebbian_phase(build_model(one, (3, 12, 12), 10, seed=0), x, progress=False) is None  # no prefix at all
    assert hebbian_phase(build_model(THREE, (3, 12, 12), 10, seed=0), x, progress=False, augment=True) is None


def test_features_of_a_probe_grid_model_read_every_tapped_block_with_or_without_the_prefix_cache():
    """The cache holds only the last block's input, so a model whose classifier also reads block 0 (``probe_grid``)
    computes its features from the images; they must be what ``readout`` gives, batch by batch."""
    spec = {**TINY, "blocks": [{**TINY["blocks"][0], "probe_grid": 2}, TINY["blocks"][1]]}
    x = images(70)
    model = build_model(spec, (3, 12, 12), 10, seed=0)
    cache = hebbian_phase(model, x, batch_size=10, seed=1, progress=False)
    assert cache is not None
    got = extract_features(model, x, cache=cache)
    assert got.shape == (70, 8 * 2 * 2 + 16 * 3 * 3) == (70, model.num_features)
    with torch.no_grad():
        want = torch.cat([model.readout(x[s:s + 25].float() / 255) for s in range(0, 70, 25)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # layouts differ: the last bits may
    torch.testing.assert_close(got[:, :32], torch.nn.functional.adaptive_avg_pool2d(
        model.features(x.float() / 255, 1), 2).flatten(1), rtol=1e-5, atol=1e-5)


def test_features_of_a_mirror_model_are_computed_from_the_images_not_the_prefix_cache():
    """The cache holds the prefix outputs of the images only; a mirrored readout also needs those of the mirrors."""
    spec = {**TINY, "classifier": {"mirror": True}}
    x = images(70)
    model = build_model(spec, (3, 12, 12), 10, seed=0)
    cache = hebbian_phase(model, x, batch_size=10, seed=1, progress=False)
    assert cache is not None
    got = extract_features(model, x, cache=cache)
    with torch.no_grad():
        xf = x.float() / 255
        want = (model.features(xf).flatten(1) + model.features(xf.flip(-1)).flatten(1)) / 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # layouts differ: the last bits may
