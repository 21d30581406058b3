"""Design exploration for the MNIST CNN preset: Hebbian variants × probe variants, features computed once.

Each Hebbian variant is one of our MNIST presets with block fields changed; its features feed every
probe variant (dropout, lr); with ``--probe-augment`` they are recomputed from augmented images every
epoch. The protocol is the one of `softhebb train` (1 Hebbian epoch at batch 10, successive mode,
50-epoch probe, test accuracy after the last epoch). One JSON line per result.

    python scripts/mnist_explore.py --device cuda --out explore.jsonl --budget 240
    python scripts/mnist_explore.py --device cuda --variants 3layer --probes p0.2,p0.3,p0.5 --probe-augment shift
    python scripts/mnist_explore.py --device cpu --train-limit 500 --probe-epochs 1 --variants base  # smoke test

The winner is then confirmed on the CPU with `softhebb train` and two seeds (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from softhebb.data import load_dataset
from softhebb.network import build_model, get_preset
from softhebb.train import StreamedFeatures, extract_features, hebbian_phase, train_probe

TWO, THREE = "SoftHebbCnnMNIST_2layer", "SoftHebbCnnMNIST"
# name → (base preset, {block index: {field: value}}); ordered by how promising they looked
VARIANTS: dict[str, tuple[str, dict[int, dict]]] = {
    "base": (TWO, {}),
    "3layer": (THREE, {}),
    "l2w768": (TWO, {1: {"out": 768}}),
    "l1w192": (TWO, {0: {"out": 192}}),
    "l1t2": (TWO, {0: {"t_invert": 2.0}}),
    "l2t1": (TWO, {1: {"t_invert": 1.0}}),
    "l2t04": (TWO, {1: {"t_invert": 0.4}}),
    "l2k5": (TWO, {1: {"kernel": 5, "padding": 2}}),
    "l1k3": (TWO, {0: {"kernel": 3, "padding": 1}}),
    "3l_l3w768": (THREE, {2: {"out": 768}}),
}
PROBES = {"p0.5": (0.5, 1e-3), "p0.7": (0.7, 1e-3), "p0.8": (0.8, 1e-3), "p0.5lr3e-4": (0.5, 3e-4),
          "p0.2": (0.2, 1e-3), "p0.3": (0.3, 1e-3)}


def variant_preset(name: str) -> dict:
    base, changes = VARIANTS[name]
    preset = copy.deepcopy(get_preset(base))
    for i, fields in changes.items():
        preset["blocks"][i].update(fields)
    preset["name"] = f"{base}+{name}"
    return preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--probes", default=",".join(PROBES), help=f"comma list of {', '.join(PROBES)}")
    ap.add_argument("--probe-augment", default=None, choices=["shift", "noise"], help="augmented probe (features streamed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-epochs", type=int, default=50)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--budget", type=float, default=float("inf"), help="start no new variant after this many seconds")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    a = ap.parse_args()
    device = torch.device(a.device)
    t_start = time.perf_counter()
    train, test = load_dataset("mnist", "train", a.data_dir), load_dataset("mnist", "test", a.data_dir)
    x_tr, y_tr = train.images[:a.train_limit].to(device), train.labels[:a.train_limit].to(device)
    x_te, y_te = test.images.to(device), test.labels.to(device)
    for name in a.variants.split(","):
        if time.perf_counter() - t_start > a.budget:
            print(f"budget spent; skipping {name} and after", flush=True)
            break
        t0 = time.perf_counter()
        model = build_model(variant_preset(name), (1, 28, 28), 10, seed=a.seed).to(device)
        hebbian_phase(model, x_tr, "successive", 1, 10, a.seed, progress=False)
        f_te = extract_features(model, x_te)
        f_tr = (StreamedFeatures(model, x_tr, augment=a.probe_augment, seed=a.seed) if a.probe_augment
                else extract_features(model, x_tr))
        t_hebb = time.perf_counter() - t0
        for probe in a.probes.split(","):
            dropout, lr = PROBES[probe]
            model.dropout.p = dropout
            torch.manual_seed(a.seed)
            model.classifier.reset_parameters()
            t1 = time.perf_counter()
            res = train_probe(model, f_tr, y_tr, f_te, y_te, a.probe_epochs, 64, lr, a.seed, a.probe_epochs, progress=False)
            row = {"variant": name, "probe": probe, "probe_augment": a.probe_augment, "seed": a.seed,
                   "features": f_tr.shape[1], "device": str(device), "train_size": int(y_tr.numel()),
                   "hebb_plus_features_s": round(t_hebb, 1), "probe_s": round(time.perf_counter() - t1, 1), **res}
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
        del f_tr, f_te, model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
