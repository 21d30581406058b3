"""The paper's STL-10 / ImageNette / ImageNet protocols wired into runs, on tiny files in the official formats:
Hebbian phase on the right split (and sample, and augmentation), the probe on features recomputed from
augmented images every epoch, and results that do not depend on the number of decoding workers.
Also the named probe augmentations (``--probe-augment shift|noise``) on any dataset."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")

from softhebb import data, hebbian, run as run_module  # noqa: E402
from softhebb import augment  # noqa: E402
from softhebb.augment import affine_warp, augment_batch  # noqa: E402
from softhebb.batching import as_input, batch_seed, iterate_batches, load_batch  # noqa: E402
from softhebb.config import PROTOCOLS, RunConfig  # noqa: E402
from softhebb.features import StreamedFeatures, extract_features, feature_views  # noqa: E402
from softhebb.network import build_model  # noqa: E402
from softhebb.probe import train_probe  # noqa: E402
from softhebb.run import RunError, run  # noqa: E402
from test_data_formats import imagenette_tree, stl_images, write_stl, write_tree  # noqa: E402

SMALL = "2SoftHebbCnnCIFAR"  # one Hebbian block: the protocols, not the network, are under test here


@pytest.fixture
def unverified(monkeypatch):
    """The tiny files are not the published ones: load them without the official counts and checksums."""
    monkeypatch.setattr(run_module, "load_dataset", functools.partial(data.load_dataset, verify=False))


@pytest.fixture
def spy(monkeypatch):
    """Record what the Hebbian phase was given."""
    calls = []
    real = hebbian.hebbian_phase

    def hebbian_phase(model, images, *args, **kwargs):
        calls.append({"n": len(images), "split": getattr(images, "split", None), "args": args, **kwargs})
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(run_module, "hebbian_phase", hebbian_phase)
    return calls


def stl_tree(root, n_train=12, n_test=6, n_unlabeled=40):
    folder = root / "stl10" / "stl10_binary"
    rng = np.random.default_rng(0)
    write_stl(folder, "train", stl_images(n_train), rng.integers(1, 11, n_train))
    write_stl(folder, "test", stl_images(n_test, 9), rng.integers(1, 11, n_test))
    write_stl(folder, "unlabeled", stl_images(n_unlabeled, 100))
    return folder


def test_protocols_resolve_the_papers_defaults():
    assert PROTOCOLS["stl10"].hebb_split == "unlabeled"
    cfg = RunConfig(dataset="stl10", preset=SMALL)
    assert (cfg.hebb_batch, cfg.probe_epochs, cfg.probe_batch) == (32, 100, 64)
    cfg = RunConfig(dataset="imagenet", preset=SMALL, probe_epochs=3)
    assert (cfg.hebb_batch, cfg.probe_epochs, cfg.probe_batch) == (10, 3, 32)  # explicit values win
    assert PROTOCOLS["imagenet"].hebb_images == 128_116 and PROTOCOLS["imagenet"].hebb_augment
    assert (RunConfig().hebb_batch, RunConfig().probe_epochs, RunConfig().probe_batch) == (10, 50, 64)
    with pytest.raises(RunError, match="workers"):
        RunConfig(workers=-1)


def test_stl10_run_hebbian_on_unlabeled_then_augmented_probe(tmp_path, unverified, spy):
    stl_tree(tmp_path)
    cfg = RunConfig(dataset="stl10", preset=SMALL, probe_epochs=2, eval_every=1)
    res = run(cfg, tmp_path / "run", tmp_path, progress=False, echo=False)
    assert spy[0]["n"] == 40 and spy[0]["split"] == "unlabeled" and spy[0]["args"][2] == 32  # batch 32
    assert spy[0]["augment"] is False
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    probe = [r for r in rows if r["phase"] == "probe"]
    assert len(probe) == 2 and all("test_acc" in r for r in probe)
    assert 0 <= res["test_acc"] <= 100 and res["dataset"] == "stl10"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["run"]
    assert saved["hebb_batch"] == 32 and saved["probe_epochs"] == 2


def test_streamed_features_augment_per_epoch_and_match_cached_without_augmentation(tmp_path):
    ds = data.load_dataset("stl10", "train", stl_tree(tmp_path).parent.parent, verify=False)
    model = build_model(SMALL, (3, 96, 96), 10, seed=0)
    idx = [torch.arange(0, 5), torch.arange(5, 12)]
    aug = StreamedFeatures(model, ds, augment=True, seed=3)
    e0, e0_again, e1 = (torch.cat(list(aug.iterate(idx, epoch))) for epoch in (0, 0, 1))
    assert torch.equal(e0, e0_again)  # seeded by (seed, epoch, batch): a resumed epoch sees the same crops
    assert not torch.equal(e0, e1)  # and a new epoch new ones
    plain = torch.cat(list(StreamedFeatures(model, ds).iterate(idx)))
    torch.testing.assert_close(plain, extract_features(model, ds), rtol=1e-5, atol=1e-5)
    assert not torch.equal(plain, e0)


def test_imagenette_run_is_the_same_with_and_without_decoding_workers(tmp_path, unverified):
    imagenette_tree(tmp_path, train=2, val=1)
    results, weights = [], []
    for workers in (0, 2):
        cfg = RunConfig(dataset="imagenette", preset=SMALL, probe_epochs=2, probe_batch=8, eval_every=1, workers=workers)
        out = tmp_path / f"run{workers}"
        results.append(run(cfg, out, tmp_path, progress=False, echo=False))
        weights.append(run_module.load_run(out)[0].state_dict())
    assert results[0]["test_acc"] == results[1]["test_acc"] and results[0]["test_loss"] == results[1]["test_loss"]
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_imagenet_protocol_samples_and_augments_the_hebbian_phase(tmp_path, unverified, spy, monkeypatch):
    base = tmp_path / "imagenet"
    wnids = [f"n{i:08d}" for i in range(3)]
    for split in ("train", "val"):
        write_tree(base / split, {w: 4 for w in wnids}, sizes=((20, 14),))
    monkeypatch.setitem(PROTOCOLS, "imagenet", PROTOCOLS["imagenet"].__class__(
        **{**PROTOCOLS["imagenet"].__dict__, "hebb_images": 5}))  # the paper's 10 % of 12 images
    cfg = RunConfig(dataset="imagenet", preset=SMALL, probe_epochs=1, workers=0)
    res = run(cfg, tmp_path / "run", tmp_path, progress=False, echo=False)
    assert spy[0]["n"] == 5 and spy[0]["augment"] is True
    assert 0 <= res["test_acc"] <= 100


def test_backprop_baseline_on_a_file_dataset(tmp_path, unverified):
    stl_tree(tmp_path, n_train=8, n_test=4, n_unlabeled=4)
    cfg = RunConfig(dataset="stl10", preset="2CnnCIFAR", probe_epochs=1)
    res = run(cfg, tmp_path / "bp", tmp_path, progress=False, echo=False)
    assert res["method"] == "backprop" and 0 <= res["test_acc"] <= 100


def test_eval_of_a_file_dataset_run(tmp_path, unverified, monkeypatch):
    stl_tree(tmp_path)
    res = run(RunConfig(dataset="stl10", preset=SMALL, probe_epochs=1), tmp_path / "run", tmp_path,
              progress=False, echo=False)
    monkeypatch.setattr(run_module, "load_dataset", functools.partial(data.load_dataset, verify=False))
    again = run_module.evaluate_run(tmp_path / "run", data_dir=tmp_path, device="cpu")
    assert again["n"] == 6 and abs(again["test_acc"] - res["test_acc"]) < 1e-9


def test_streamed_bf16_features_do_not_leave_autocast_on_for_the_head(tmp_path):
    ds = data.load_dataset("stl10", "train", stl_tree(tmp_path).parent.parent, verify=False)
    model = build_model(SMALL, (3, 96, 96), 10, seed=0)
    rows = StreamedFeatures(model, ds, precision="bf16").iterate([torch.arange(0, 4)])
    f = next(rows)
    assert not torch.is_autocast_enabled("cpu") and model.head(f.float()).dtype == torch.float32


def test_augmentation_without_a_seed_is_refused():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="seed"):
        load_batch(images, torch.arange(2), torch.device("cpu"), augment=True)


def test_shift_translates_by_at_most_two_pixels_without_flipping():
    x = torch.rand(64, 1, 12, 12)  # random content: a flip or another offset cannot match by chance
    out = augment_batch(x, "shift", torch.Generator().manual_seed(0))
    offsets = []
    for a, b in zip(x, out):  # away from the reflected border, the output is the input moved by (dy, dx)
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(b[:, 2:10, 2:10], a[:, 2 + dy:10 + dy, 2 + dx:10 + dx])]
        assert len(match) == 1
        offsets.append(match[0])
    assert len(set(offsets)) >= 20  # of the 25: every offset is drawn, not a fixed one


def test_affine_warp_reference_cases():
    x = torch.rand(3, 2, 9, 9)
    one, none = torch.ones(3), torch.zeros(3, 2)
    # pixel centres land on pixel centres, so bilinear sampling returns the pixels themselves
    assert torch.allclose(affine_warp(x, torch.zeros(3), one, none), x, atol=1e-6)
    assert torch.allclose(affine_warp(x, torch.full((3,), 90.0), one, none), x.rot90(1, dims=(2, 3)), atol=1e-5)
    moved = affine_warp(x, torch.zeros(3), one, torch.tensor([[2.0, -1.0]] * 3))  # 2 px right, 1 px up
    assert torch.allclose(moved[:, :, :8, 2:], x[:, :, 1:, :7], atol=1e-6)
    assert moved[:, :, :, :2].abs().max() == 0 and moved[:, :, 8].abs().max() == 0  # zeros come in


def test_affine_warp_scales_about_the_centre():
    ys, xs = torch.meshgrid(torch.arange(31.0), torch.arange(31.0), indexing="ij")
    disc = (((xs - 15) ** 2 + (ys - 15) ** 2) <= 49).float()[None, None]
    for factor in (0.9, 1.1):
        out = affine_warp(disc, torch.tensor([17.0]), torch.tensor([factor]), torch.tensor([[1.5, 0.5]]))
        mass = out.sum()
        assert abs(float(mass / disc.sum()) - factor ** 2) < 0.03  # area scales by factor²
        centre = ((out[0, 0] * xs).sum() / mass - 15, (out[0, 0] * ys).sum() / mass - 15)
        assert abs(float(centre[0]) - 1.5) < 1e-3 and abs(float(centre[1]) - 0.5) < 1e-3


def test_affine_draws_vary_per_image_and_repeat_with_the_seed():
    x = torch.rand(32, 1, 28, 28)
    a, b = (augment_batch(x, "affine", torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, augment_batch(x, "affine", torch.Generator().manual_seed(6)))
    same = augment_batch(x[:1].expand(32, -1, -1, -1), "affine", torch.Generator().manual_seed(5))
    assert len({round(float(v), 4) for v in same.sum((1, 2, 3))}) == 32  # a different transform for every image


def test_random_affine_draws_inside_its_ranges(monkeypatch):
    seen = {}
    monkeypatch.setattr(augment, "affine_warp", lambda x, d, f, t: seen.update(d=d, f=f, t=t) or x)
    augment.random_affine(torch.zeros(4000, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    d, f, t = seen["d"], seen["f"], seen["t"]
    assert 9.9 < d.abs().max() <= 10 and d.min() < -9.9  # both directions, up to 10 degrees
    assert 0.9 <= f.min() < 0.901 and 1.099 < f.max() <= 1.1
    assert t.shape == (4000, 2) and 1.99 < t.abs().max() <= 2 and (t < -1.99).any(0).all()  # both axes


def test_noise_adds_unit_gaussian_noise_reproducibly():
    x = torch.rand(200, 1, 28, 28)
    a, b = (augment_batch(x, "noise", torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b)
    d = a - x
    assert abs(float(d.mean())) < 0.01 and abs(float(d.std()) - 1) < 0.01
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment_batch(x, "flip")


@pytest.mark.parametrize("name", ["shift", "affine", "noise"])
def test_named_augmentation_is_the_same_from_a_tensor_a_dataset_and_workers(tmp_path, name):
    ds = data.load_dataset("stl10", "train", stl_tree(tmp_path).parent.parent, verify=False)
    batches, seeds = [torch.arange(0, 5), torch.arange(5, 12)], [7, 8]
    tensor = ds.get_images(torch.arange(len(ds)))
    cpu = torch.device("cpu")
    from_tensor = [load_batch(tensor, b, cpu, name, s) for b, s in zip(batches, seeds)]
    for workers in (0, 2):
        got = list(iterate_batches(ds, batches, cpu, name, seeds, workers))
        assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(from_tensor, got))
    plain = load_batch(tensor, batches[0], cpu)
    assert not torch.equal(plain, from_tensor[0])
    assert not torch.equal(load_batch(tensor, batches[0], cpu, True, 7), from_tensor[0])  # not crop + flip


def test_probe_augment_option_on_an_in_memory_dataset(data_root, tmp_path, spy):
    base = dict(dataset="mnist", preset="SoftHebbCnnMNIST_2layer", train_limit=200, test_limit=100, probe_epochs=2)
    with pytest.raises(RunError, match="probe_augment"):
        RunConfig(**base, probe_augment="flip")
    assert RunConfig(**base).probe_augmentation is False and RunConfig(**base, probe_augment="dataset").probe_augmentation
    assert RunConfig(dataset="stl10", preset=SMALL).probe_augmentation is True
    assert RunConfig(dataset="stl10", preset=SMALL, probe_augment="none").probe_augmentation is False
    plain = run(RunConfig(**base), tmp_path / "plain", data_root, progress=False, echo=False)
    shifted = run(RunConfig(**base, probe_augment="shift"), tmp_path / "shift", data_root, progress=False, echo=False)
    assert plain["test_loss"] != shifted["test_loss"]
    assert [call["augment"] for call in spy] == [False, False]  # the Hebbian phase never sees the probe's augmentation
    assert json.loads((tmp_path / "shift" / "config.json").read_text())["run"]["probe_augment"] == "shift"


def test_runs_started_before_probe_augment_and_probe_dropout_existed_keep_their_names_and_resume():
    name = run_module.run_name
    assert name(RunConfig()) == "cifar10-4SoftHebbCnnCIFAR-ce64bcd2-s0"  # the name of our published run
    assert name(RunConfig(probe_augment="none")) == name(RunConfig())  # the protocol's: the same run
    assert name(RunConfig(probe_dropout=0.5)) == name(RunConfig())  # the preset's: the same run
    assert name(RunConfig(probe_augment="shift")) != name(RunConfig())
    assert name(RunConfig(probe_dropout=0.3)) != name(RunConfig())
    cfg = RunConfig()
    old = {k: v for k, v in cfg.__dict__.items() if k not in ("probe_augment", "probe_dropout")}
    run_module._same_config(Path("x"), old, cfg.resolved_preset(), cfg, cfg.resolved_preset())
    with pytest.raises(RunError, match="probe_augment: None there, 'shift' now"):
        shifted = RunConfig(probe_augment="shift")
        run_module._same_config(Path("x"), old, cfg.resolved_preset(), shifted, shifted.resolved_preset())


def test_streamed_features_group_batches_and_return_them_in_order(tmp_path):
    ds = data.load_dataset("stl10", "train", stl_tree(tmp_path).parent.parent, verify=False)
    model = build_model(SMALL, (3, 96, 96), 10, seed=0)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    batches = [order[:3], order[3:4], order[4:11], order[11:]]  # uneven, one larger than the group size
    streamed = StreamedFeatures(model, ds, batch_size=4)
    got = list(streamed.iterate(batches))
    assert [f.shape[0] for f in got] == [3, 1, 7, 1]
    torch.testing.assert_close(torch.cat(got), extract_features(model, ds)[order], rtol=1e-5, atol=1e-5)
    assert list(streamed.iterate([])) == []


def test_noise_is_added_to_pixels_before_a_folders_normalisation(tmp_path):
    imagenette_tree(tmp_path, train=2, val=1)
    ds = data.load_dataset("imagenette", "train", tmp_path, verify=False)
    idx, cpu = torch.arange(4), torch.device("cpu")
    noisy = load_batch(ds, idx, cpu, "noise", 5) - load_batch(ds, idx, cpu)
    std = torch.tensor(data.IMAGENET_MEAN_STD[1]).view(1, 3, 1, 1)
    assert abs(float((noisy * std).std()) - 1) < 0.05  # N(0, 1) in [0, 1] pixel units, whatever the dataset's std


def test_probe_dropout_is_validated_and_names_one_run():
    preset = RunConfig(dataset="mnist", preset=SMALL, probe_dropout=0.2).resolved_preset()
    assert build_model(preset, (1, 28, 28), 10, seed=0).dropout.p == 0.2
    assert RunConfig(dataset="mnist", preset="2SoftMlpMNIST", probe_dropout=0).probe_dropout is None  # its own
    assert run_module.run_name(RunConfig(probe_dropout=0)) == run_module.run_name(RunConfig(probe_dropout=0.0))
    for bad in (1.0, -0.1, True, "0.3", float("nan")):
        with pytest.raises(RunError, match="probe_dropout"):
            RunConfig(dataset="mnist", preset=SMALL, probe_dropout=bad)


def test_probe_dropout_reaches_the_saved_preset(data_root, tmp_path):
    cfg = RunConfig(dataset="mnist", preset="SoftHebbCnnMNIST_2layer", train_limit=100, test_limit=50, probe_epochs=1,
                    probe_dropout=0.2)
    run(cfg, tmp_path / "r", data_root, progress=False, echo=False)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["preset"]["classifier"]["dropout"] == 0.2


def test_feature_views_are_the_features_of_seeded_augmented_copies():
    """View v of rows [s, s + 4) is the network applied to those images shifted with the seed of (run seed,
    -1 - v, group), computed here by hand from augment_batch."""
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    model = build_model(SMALL, (1, 28, 28), 10, seed=0)
    views = feature_views(StreamedFeatures(model, images, augment="shift", seed=7, batch_size=4), 3)
    assert views.shape == (3, 10, model.num_features)
    for v in range(3):
        for g, s in enumerate(range(0, 10, 4)):
            gen = torch.Generator().manual_seed(batch_seed(7, -1 - v, g))
            x = augment_batch(as_input(images[s:s + 4]), "shift", gen)
            torch.testing.assert_close(views[v, s:s + 4], model.features(x).flatten(1), rtol=1e-5, atol=1e-5)
    assert not torch.equal(views[0], views[1])


def test_probe_on_views_draws_one_view_per_row_and_keeps_the_data_order():
    torch.manual_seed(0)
    x, y = torch.randn(96, 12), torch.randint(0, 3, (96,))
    x_test, y_test = torch.randn(20, 12), torch.randint(0, 3, (20,))

    def probe(features):
        model = build_model("2SoftMlpMNIST", (1, 28, 28), 3, seed=0)
        model.classifier = torch.nn.Linear(12, 3)
        torch.manual_seed(1)
        model.classifier.reset_parameters()
        train_probe(model, features, y, x_test, y_test, epochs=3, batch_size=16, seed=5, progress=False)
        return model.classifier.weight.detach().clone()

    plain, noisy = probe(x), x + torch.randn_like(x)
    assert torch.equal(probe(torch.stack([x, x, x])), plain)  # identical views: the plain probe, step for step
    mixed = probe(torch.stack([x, noisy]))
    assert not torch.equal(mixed, plain) and not torch.equal(mixed, probe(noisy))  # it trains on both views


def test_probe_views_are_validated_and_keep_old_run_names():
    base = dict(dataset="mnist", preset=SMALL)
    assert RunConfig(**base, probe_augment="shift", probe_views=4).probe_views == 4
    assert RunConfig(dataset="stl10", preset=SMALL, probe_views=2).probe_views == 2  # STL-10's own augmentation
    for bad in ({"probe_views": 2}, {"probe_views": 0}, {"probe_views": True}, {"probe_views": 2.0},
                {"probe_views": 2, "probe_augment": "shift", "preset": "3CnnCIFAR"}):
        with pytest.raises(RunError, match="probe_views"):
            RunConfig(**{**base, **bad})
    assert run_module.run_name(RunConfig(probe_views=1)) == "cifar10-4SoftHebbCnnCIFAR-ce64bcd2-s0"
    assert run_module.run_name(RunConfig(probe_augment="shift", probe_views=2)) != \
        run_module.run_name(RunConfig(probe_augment="shift"))
