"""Reproduce the core paper numbers: MNIST, Fashion-MNIST and the CIFAR-10 depth series.

Runs every (dataset, preset, seed) one after another, skipping runs that already finished
(so an interrupted reproduction resumes), then prints a markdown table with mean ± population
std over seeds, the paper's number and the wall times of each phase.

    SOFTHEBB_DATA=/path/to/datasets python scripts/reproduce_core.py             # everything
    python scripts/reproduce_core.py --only mnist --seeds 0 1                    # a subset
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from softhebb.run import RunConfig, run

# (dataset, preset, paper accuracy or None)
EXPERIMENTS = [
    ("mnist", "SoftHebbCnnMNIST", 99.4),
    ("fashion-mnist", "SoftHebbCnnMNIST", None),
    ("cifar10", "4SoftHebbCnnCIFAR", 80.31),
    ("cifar10", "2SoftHebbCnnCIFAR", 71.11),
    ("cifar10", "3SoftHebbCnnCIFAR", 77.70),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", help="restrict to these datasets or presets")
    ap.add_argument("--out", default="runs/repro", help="folder for the run directories")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    rows = []
    for dataset, preset, paper in EXPERIMENTS:
        if args.only and dataset not in args.only and preset not in args.only:
            continue
        results = []
        for seed in args.seeds:
            out = Path(args.out) / f"{dataset}-{preset}-s{seed}"
            if (out / "result.json").exists():
                res = json.loads((out / "result.json").read_text())
            else:
                print(f"== {dataset} {preset} seed {seed} -> {out}", flush=True)
                res = run(RunConfig(preset=preset, dataset=dataset, seed=seed), out, args.data_dir, overwrite=True)
            results.append(res)
            print(f"   {dataset} {preset} seed {seed}: {res['test_acc']:.2f} % in {res['seconds']['total']:.0f} s", flush=True)
        accs = [r["test_acc"] for r in results]
        sec = {k: statistics.mean(r["seconds"][k] for r in results) for k in ("hebbian", "features", "probe", "total")}
        rows.append((dataset, preset, accs, paper, sec, max(r["peak_rss_mb"] for r in results)))
    print("\n| dataset | preset | seeds | test acc % (mean ± std) | per seed | paper | Hebbian s | features s | probe s | total s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dataset, preset, accs, paper, sec, rss in rows:
        mean, std = statistics.mean(accs), statistics.pstdev(accs)
        print(f"| {dataset} | {preset} | {len(accs)} | {mean:.2f} ± {std:.2f} | {', '.join(f'{a:.2f}' for a in accs)} | "
              f"{paper if paper is not None else '—'} | {sec['hebbian']:.0f} | {sec['features']:.0f} | {sec['probe']:.0f} | "
              f"{sec['total']:.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
