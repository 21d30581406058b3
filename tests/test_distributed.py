"""Data-parallel training: 2 gloo processes on the CPU equal one process with the global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from softhebb import distributed
from softhebb.network import build_model
from softhebb import extract_features, hebbian_phase, train_probe

# BatchNorm before every block, two conv blocks and a linear block on a BN2d-then-flatten input;
# dropout 0, so that the data-parallel probe must match one process too.
PRESET = {"name": "tiny-dp", "classifier": {"dropout": 0.0}, "blocks": [
    {"type": "conv", "out": 8, "kernel": 3, "padding": 1, "t_invert": 1, "lr": 0.05, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "max_4_2_1"},
    {"type": "conv", "out": 12, "kernel": 3, "padding": 1, "t_invert": 0.5, "lr": 0.02, "power_lr": 0.5, "radius": 5,
     "activation": "triangle_1", "pool": "avg_2_2_0"},
    {"type": "linear", "out": 10, "bn": True, "t_invert": 2, "lr": 0.05, "activation": "triangle_1"}]}
SHAPE = (3, 12, 12)
N, BATCH = 66, 8  # 8 full global batches and a last one of 2: one image per rank
PROBE_BATCH = 16  # 66 rows over 2 ranks: uneven shares of every global batch


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, *SHAPE), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (N,), generator=g)


def train(mode, parallel=None):
    """Hebbian phase, features and probe; with ``parallel`` on this rank's share. Returns state + log rows."""
    x, y = data()
    model = build_model(PRESET, SHAPE, 10, seed=3)
    rows = []
    hebbian_phase(model, x, mode, epochs=2, batch_size=BATCH, seed=1, log=rows.append, progress=False, parallel=parallel)
    shard = parallel.rows if parallel else (lambda t: t)
    f = extract_features(model, shard(x))
    train_probe(model, f, shard(y), f, shard(y), epochs=3, batch_size=PROBE_BATCH, seed=2, eval_every=1,
                log=rows.append, progress=False, parallel=parallel)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, rows


def _worker(rank, world, init_file, out):
    torch.set_num_threads(1)
    distributed.init("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        par = distributed.current()
        assert par is not None and (par.rank, par.world_size) == (rank, world)
        for mode in ("successive", "simultaneous"):
            state, rows = train(mode, par)
            if rank == 0:
                save_file(state, os.path.join(out, f"{mode}.safetensors"))
                with open(os.path.join(out, f"{mode}.json"), "w") as f:
                    json.dump(rows, f)
    finally:
        dist.destroy_process_group()
    # joined with the group: no gloo thread can still be freeing a collective when the interpreter exits
    assert not _gloo_threads(), _gloo_threads()


def _gloo_threads() -> list[str]:
    """Names of this process's gloo worker threads (Linux; elsewhere none are seen)."""
    if not os.path.isdir("/proc/self/task"):
        return []
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return [n for n in names if "gloo" in n]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return out


def _close(a, b, rtol=1e-5):
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * float(b.abs().max().clamp(min=1e-12)))


@pytest.mark.parametrize("mode", ["successive", "simultaneous"])
def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks, mode):
    ref, ref_rows = train(mode)
    got = load_file(two_ranks / f"{mode}.safetensors")
    assert set(got) == set(ref)
    for k in ref:  # Hebbian weights, num_updates, every BN's running stats and count, the classifier
        assert _close(got[k], ref[k]), (k, (got[k].double() - ref[k].double()).abs().max().item())
    assert got["blocks.0.layer.num_updates"].item() == 2 * 9  # 2 epochs × ⌈66/8⌉ global batches
    assert got["blocks.1.pre.0.num_batches_tracked"].item() == 18
    rows = json.loads((two_ranks / f"{mode}.json").read_text())
    assert [r["phase"] for r in rows] == [r["phase"] for r in ref_rows]
    for r, e in zip(rows, ref_rows):  # win counters are summed over ranks; probe metrics over the shards
        for k in ("winner_share", "r1", "radius_mean", "train_acc", "test_acc", "train_loss"):
            if k in e:
                assert r[k] == pytest.approx(e[k], rel=1e-5, abs=1e-6), (k, r, e)


def test_batches_that_leave_a_rank_empty_are_refused():
    par = distributed.Parallel(0, 2)
    par.check_batches(66, 8)
    with pytest.raises(ValueError, match="1 image.*2 processes"):
        par.check_batches(65, 8)  # the last batch holds one image
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        distributed.Parallel(0, 4).check_batches(64, 2)


def test_probe_batches_follow_the_single_process_order():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shares = [distributed.Parallel(r, 3).probe_batches(order, 4, torch.device("cpu")) for r in range(3)]
    for b, chunk in enumerate(order.split(4)):
        owned = sorted(int(i) * 3 + r for r in range(3) for i in shares[r][b][0])  # local row → global index
        assert owned == sorted(chunk.tolist())
        assert all(shares[r][b][1] == chunk.numel() for r in range(3))


def test_torchrun_cli_matches_a_single_process_and_only_rank0_writes(data_root, tmp_path):
    """`torchrun --nproc-per-node=2 -m softhebb.cli train` on 200 MNIST images."""
    common = ["train", "--dataset", "mnist", "--preset", "SoftHebbCnnMNIST_2layer", "--train-limit", "200",
              "--test-limit", "100", "--probe-epochs", "1", "--hebb-batch", "20", "--device", "cpu",
              "--data-dir", str(data_root), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                         "-m", "softhebb.cli", *common, "--out", str(tmp_path / "dp")],
                        env=env, capture_output=True, text=True, timeout=300)
    assert dp.returncode == 0, dp.stderr[-3000:]
    assert dp.stdout.count("test accuracy") == 1  # rank 0 alone reports
    single = subprocess.run([sys.executable, "-m", "softhebb.cli", *common, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors",
                                                                  "result.json"]
    assert json.loads((tmp_path / "dp" / "config.json").read_text())["world_size"] == 2
    a, b = load_file(tmp_path / "dp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    for k in a:
        if not k.startswith("classifier"):  # the probe's dropout masks differ per rank
            assert _close(a[k], b[k], 1e-4), k



def _resume_worker(rank, world, init_file, out):
    """run() on 2 ranks: uninterrupted, then crashed right after probe epoch 2's checkpoint and resumed."""
    import softhebb.config as config_module
    import softhebb.run as run_module
    from softhebb.data import ImageDataset
    from softhebb.network import resolve_preset

    torch.set_num_threads(1)
    distributed.init("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)

    def load(name, split, root=None):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 80 if split == "train" else 30
        return ImageDataset(name, split, torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                            torch.randint(0, 10, (n,), generator=g), tuple(str(d) for d in range(10)))

    spec = {**PRESET, "classifier": {"dropout": 0.5}}  # the ranks' dropout streams must continue too
    run_module.load_dataset = load
    run_module.get_preset = config_module.get_preset = lambda name: resolve_preset(spec)
    cfg = run_module.RunConfig(preset="tiny-dp", dataset="mnist", hebb_batch=8, probe_epochs=4, probe_batch=16, device="cpu")
    probe = run_module.train_probe

    def probe_then_crash(*args, checkpoint=None, **kw):
        def save_then_crash(state):
            checkpoint(state)
            if state["epoch"] == 2:
                raise KeyboardInterrupt  # on every rank, as when torchrun tears the job down
        return probe(*args, checkpoint=save_then_crash, **kw)

    try:
        run_module.run(cfg, os.path.join(out, "whole"), progress=False, echo=False, checkpoint_every=3)
        run_module.train_probe = probe_then_crash
        try:
            run_module.run(cfg, os.path.join(out, "cut"), progress=False, echo=False, checkpoint_every=3)
            raise AssertionError("did not crash")
        except KeyboardInterrupt:
            pass
        run_module.train_probe = probe
        res = run_module.run(cfg, os.path.join(out, "cut"), progress=False, echo=False, checkpoint_every=3, resume=True)
        assert res["resumed_from"] == {"phase": "probe", "epoch": 2}
    finally:
        dist.destroy_process_group()


def test_two_ranks_resume_from_a_probe_checkpoint_to_the_same_weights(tmp_path):
    mp.spawn(_resume_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "cut"))
    assert ra["test_acc"] == rb["test_acc"]
