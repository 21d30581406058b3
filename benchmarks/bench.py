"""Speed of softhebb vs the original code's computation (benchmarks/original.py), on this machine.

    .venv/bin/python benchmarks/bench.py --out results.json     # full run (minutes)
    .venv/bin/python benchmarks/bench.py --quick                # seconds-long smoke run (smaller net)

Measures, with torch.get_num_threads() threads and random uint8 images (no dataset):
  * fp32 peak: GFLOP/s of a square matmul (best of a few), sampled between the measurements; every row's
    % of peak is against the highest sample;
  * Hebbian training img/s on 4SoftHebbCnnCIFAR: the baseline at batch 10 (whole-net forward every
    batch) training each block alone (successive stages; the last is the most expensive) and all
    blocks simultaneously, vs softhebb's hebbian_phase (successive: per-stage time from its log,
    only the prefix is computed; simultaneous) at several batch sizes;
  * feature extraction img/s (softhebb extract_features in its default chunks, vs the baseline's eval forward
    at batch 250);
  * the same two with --precision bf16 (bf16 autocast; its % of peak is still against the fp32 peak);
  * seconds per probe epoch on random cached features (train_probe vs Dropout + Linear + Adam);
    features and probe: best of --repeats timings, like the peak; Hebbian rows: one timing each;
  * peak RSS.
FLOPs are analytic ("useful" work, the same count for both paths): a conv forward is
2·K·(C/g)·kh·kw·Ho·Wo per image; a Hebbian step of a layer is 2× its forward (u, then Σỹx);
training block ℓ also costs the forward of blocks < ℓ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from softhebb import batching, features, hebbian, probe
from softhebb.network import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import original  # noqa: E402

SHAPE, CLASSES = (3, 32, 32), 10


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn, reps: int = 1) -> float:
    """Seconds of fn(), the best of ``reps`` calls: this machine's speed drifts by ±15 % within minutes."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(n: int, reps: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    return 2 * n**3 / timed(lambda: a @ b, reps) / 1e9


@torch.no_grad()
def conv_flops(model) -> list[int]:
    """Forward FLOPs per image of each block's conv."""
    flops: list[int] = []
    hooks = [b.layer.register_forward_hook(lambda m, i, o: flops.append(2 * m.weight[0].numel() * o[0].numel()))
             for b in model.blocks]
    model.eval()
    model.features(torch.zeros(1, *model.in_shape))
    for h in hooks:
        h.remove()
    return flops


def stage_flops(fwd: list[int], stage: list[int]) -> int:
    return sum(fwd[:min(stage)]) + sum(fwd[i] for i in range(min(stage), max(stage) + 1) if i not in stage) \
        + sum(2 * fwd[i] for i in stage)


def baseline_hebbian(model, data: torch.Tensor, blocks: list[int], batch: int) -> float:
    """img/s of the original computation training ``blocks`` (whole-net forward per batch)."""
    net = original.OriginalNet(model)
    original.hebbian_epoch(net, data[:2 * batch], blocks, batch)  # warm-up
    return data.shape[0] / timed(lambda: original.hebbian_epoch(net, data, blocks, batch))


def softhebb_hebbian(preset: str, images: torch.Tensor, mode: str, batch: int, seed: int,
                     precision: str = "fp32") -> dict[int, float]:
    """img/s of each stage of hebbian_phase (successive: one per block; simultaneous: one for all)."""
    model = build_model(preset, SHAPE, CLASSES, seed=seed)
    hebbian.hebbian_phase(model, images[:max(2 * batch, 20)], mode, batch_size=batch, progress=False,
                        precision=precision)  # warm-up
    seconds: dict[int, float] = {}
    total = timed(lambda: hebbian.hebbian_phase(model, images, mode, batch_size=batch, progress=False, precision=precision,
                                              log=lambda row: seconds.__setitem__(row["block"], row["seconds"])))
    if mode == "simultaneous":
        return {-1: images.shape[0] / total}
    return {i: images.shape[0] / max(s, 1e-9) for i, s in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run: small net, few images")
    ap.add_argument("--preset", default=None, help="conv SoftHebb preset (default 4SoftHebbCnnCIFAR; quick: _quarterNeurons)")
    ap.add_argument("--images", type=int, default=None, help="images per Hebbian timing (default 640; quick 40)")
    ap.add_argument("--feature-images", type=int, default=None, help="images for feature extraction (default 2000)")
    ap.add_argument("--probe-rows", type=int, default=None, help="rows of random probe features (default 50000)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="softhebb Hebbian batch sizes (default 10 32 64 128)")
    ap.add_argument("--matmul", type=int, default=None, help="matmul size for the fp32 peak (default 4096)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings for features and probe (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args()
    q = a.quick
    preset = a.preset or ("4SoftHebbCnnCIFAR_quarterNeurons" if q else "4SoftHebbCnnCIFAR")
    n_img, n_feat = a.images or (40 if q else 640), a.feature_images or (250 if q else 2000)
    rows, batches = a.probe_rows or (1000 if q else 50_000), a.batches or ([10, 32] if q else [10, 32, 64, 128])
    torch.manual_seed(a.seed)
    info = machine() | {"preset": preset, "quick": q}
    print(f"# softhebb benchmark — {info['cpu']}, {info['threads']} threads, torch {info['torch']}, preset {preset}\n")

    # The peak is sampled between the measurements and every row is rated against the highest sample: on a
    # machine whose speed drifts, a single sample taken at a slow moment would flatter every later row.
    peaks: list[float] = []

    def sample_peak() -> None:
        peaks.append(matmul_gflops(a.matmul or (1024 if q else 4096), 3))

    sample_peak()
    res: dict = {"machine": info, "hebbian": [], "features": [], "probe": {}}
    model = build_model(preset, SHAPE, CLASSES, seed=a.seed)
    fwd, last = conv_flops(model), len(model.blocks) - 1
    every = list(range(len(model.blocks)))
    images = torch.randint(0, 256, (n_img, *SHAPE), dtype=torch.uint8)
    data = batching.as_input(images.clone())  # the original preloads float images

    def row(table: list, name: str, batch: int, ips: float, flops: int, ref: float | None) -> float:
        table.append({"name": name, "batch": batch, "img_per_s": ips, "gflops": ips * flops / 1e9,
                      "speedup": ips / ref if ref else None})
        return ips

    heb, base = res["hebbian"], {}
    for i in every:  # the original at batch 10: every stage forwards the whole net
        base[i] = row(heb, f"baseline: successive stage {i} (whole-net forward)", 10,
                      baseline_hebbian(model, data, [i], 10), stage_flops(fwd, [i]), None)
    all_flops = sum(stage_flops(fwd, [i]) for i in every)
    base["all"] = row(heb, "baseline: successive, all stages", 10, 1 / sum(1 / base[i] for i in every), all_flops, None)
    base["sim"] = row(heb, "baseline: simultaneous", 10, baseline_hebbian(model, data, every, 10), stage_flops(fwd, every), None)
    for r in heb:
        r["speedup"] = 1.0
    sample_peak()
    for b in batches:
        stages = softhebb_hebbian(preset, images, "successive", b, a.seed)
        for i, ips in stages.items():
            row(heb, f"softhebb: successive stage {i}", b, ips, stage_flops(fwd, [i]), base[i])
        row(heb, "softhebb: successive, all stages", b, 1 / sum(1 / s for s in stages.values()), all_flops, base["all"])
        row(heb, "softhebb: simultaneous", b, softhebb_hebbian(preset, images, "simultaneous", b, a.seed)[-1],
            stage_flops(fwd, every), base["sim"])
        stages = softhebb_hebbian(preset, images, "successive", b, a.seed, "bf16")  # against the fp32 peak, too
        row(heb, "softhebb bf16: successive, all stages", b, 1 / sum(1 / s for s in stages.values()), all_flops, base["all"])
        sample_peak()
    res["rss_after_hebbian_mb"] = peak_rss_mb()

    feat_images = torch.randint(0, 256, (n_feat, *SHAPE), dtype=torch.uint8)
    net, feat_data = original.OriginalNet(model), batching.as_input(feat_images.clone())

    def baseline_features() -> None:
        with torch.no_grad():
            for chunk in feat_data.split(250):
                net(chunk)

    features.extract_features(model, feat_images[:250])  # warm-up
    baseline_features()
    ref = row(res["features"], "baseline: eval forward", 250, n_feat / timed(baseline_features, a.repeats), sum(fwd), None)
    res["features"][0]["speedup"] = 1.0
    chunk = features.forward_chunk(model, torch.device("cpu"))  # extract_features' default rows per forward
    row(res["features"], "softhebb: extract_features", chunk, n_feat / timed(lambda: features.extract_features(model, feat_images), a.repeats),
        sum(fwd), ref)
    features.extract_features(model, feat_images[:250], precision="bf16")
    row(res["features"], "softhebb bf16: extract_features", chunk,
        n_feat / timed(lambda: features.extract_features(model, feat_images, precision="bf16"), a.repeats), sum(fwd), ref)
    del feat_data, feat_images
    sample_peak()
    res["rss_after_features_mb"] = peak_rss_mb()

    x = torch.rand(rows, model.num_features)
    y = torch.randint(0, CLASSES, (rows,))
    head = nn.Sequential(nn.Dropout(0.5), nn.Linear(model.num_features, CLASSES))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    t_base = timed(lambda: original.probe_epoch(x, y, head, opt), a.repeats)
    n_test = min(rows, 1000)  # train_probe evaluates a test set after epoch 1: a small one
    t_fast = timed(lambda: probe.train_probe(model, x, y, x[:n_test], y[:n_test], epochs=1, progress=False), a.repeats)
    res["probe"] = {"rows": rows, "features": model.num_features, "baseline_s_per_epoch": t_base,
                    "softhebb_s_per_epoch": t_fast, "speedup": t_base / t_fast}
    del x
    sample_peak()
    res["peak_rss_mb"] = peak_rss_mb()

    peak = max(peaks)
    res["matmul_gflops"], res["matmul_gflops_samples"] = peak, peaks
    for r in heb + res["features"]:
        r["frac_peak"] = r["gflops"] / peak
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s, the highest of {len(peaks)} samples taken through the run "
          f"({min(peaks):.1f}–{peak:.1f})\n")
    print("| measurement | batch | img/s | GFLOP/s | % of matmul peak | × baseline |\n|---|---:|---:|---:|---:|---:|")
    for r in heb + res["features"]:
        sp = f"{r['speedup']:.2f}" if r["speedup"] else "—"
        print(f"| {r['name']} | {r['batch']} | {r['img_per_s']:.1f} | {r['gflops']:.1f} | {100 * r['frac_peak']:.1f} | {sp} |")
    print()
    for name in (f"softhebb: successive stage {last}", "softhebb: successive, all stages", "softhebb: simultaneous"):
        best = max((r for r in heb if r["name"] == name), key=lambda r: r["img_per_s"])
        print(f"best batch for {name[10:]}: {best['batch']} ({best['img_per_s']:.1f} img/s, {best['speedup']:.2f}× baseline)")
    p = res["probe"]
    print(f"probe epoch on {rows}×{p['features']} features: baseline {p['baseline_s_per_epoch']:.2f} s, "
          f"softhebb {p['softhebb_s_per_epoch']:.2f} s ({p['speedup']:.2f}×)")
    print(f"peak RSS: {res['peak_rss_mb']:.0f} MB (after Hebbian {res['rss_after_hebbian_mb']:.0f} MB, "
          f"after features {res['rss_after_features_mb']:.0f} MB)")
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
