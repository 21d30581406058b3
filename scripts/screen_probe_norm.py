"""Screen the linear probe's input normalisation, on the frozen network of one finished MNIST run.

    SOFTHEBB_DATA=DIR python scripts/screen_probe_norm.py RUN_DIR plain,global,zscore,zscore_lr1e-4

The features are computed once (fp32). ``global`` divides every feature by one number (the root of the mean
per-feature variance over the training images); ``zscore`` standardises each feature with its training mean and
variance (+ 1e-4 of the mean variance); both are fixed affine maps, so the probe stays linear. ``_lr1e-4``: Adam rate
1e-4 instead of 1e-3. Otherwise the paper's probe (dropout 0.5, 50 epochs, batch 64, seed 0); the first JSON line
describes the features, then one line per variant. A screen: one run, one probe seed; confirm with full runs.
"""
import json
import sys
import time

import torch

from softhebb.data import load_dataset
from softhebb.features import extract_features
from softhebb.rundir import load_run
from screen_common import paper_probe

torch.set_num_threads(2)
run_dir, names = sys.argv[1], sys.argv[2].split(",")
model, cfg = load_run(run_dir)
dataset = cfg["run"]["dataset"]
tr, te = load_dataset(dataset, "train"), load_dataset(dataset, "test")
t = time.time()
ftr, fte = extract_features(model, tr.images), extract_features(model, te.images)
mu, var = ftr.mean(0), ftr.var(0)
print(json.dumps({"features_s": round(time.time() - t), "mean_abs": ftr.abs().mean().item(),
                  "row_norm": ftr.norm(dim=1).mean().item(), "feat_std_mean": var.sqrt().mean().item(),
                  "dead": int((var == 0).sum())}), flush=True)


def zscore(f: torch.Tensor) -> torch.Tensor:
    return (f - mu) / (var + 1e-4 * var.mean()).sqrt()


scale = var.mean().sqrt()
VARIANTS = {"plain": (lambda f: f, 1e-3), "global": (lambda f: f / scale, 1e-3), "zscore": (zscore, 1e-3),
            "zscore_lr1e-4": (zscore, 1e-4)}
for name in names:
    fn, lr = VARIANTS[name]
    r = paper_probe(fn(ftr), tr.labels, fn(fte), te.labels, lr=lr)
    print(json.dumps({"variant": name, **r}), flush=True)
