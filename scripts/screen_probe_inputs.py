"""Screen what the linear probe reads, on the frozen network of one finished CIFAR-10 run (no Hebbian retraining).

    SOFTHEBB_DATA=DIR python scripts/screen_probe_inputs.py RUN_DIR b2,b2:z,b1+b2,b1+b2:z,b0+b1+b2:z,b2:row

Each variant joins feature sets with ``+`` and may name a normalisation after ``:``:
b2 = the last block's output (the paper's 24,576 features); b1, b0 = blocks 1 and 0, average-pooled to 4×4;
z = each feature standardised with the training set's mean and std; blockz = each set divided by its own std;
row = every row scaled to the mean row norm. The probe is the paper's (dropout 0.5, Adam 1e-3, 50 epochs,
batch 64, seed 0); one JSON line per variant. A screen: one run, one probe seed; confirm with full runs.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

from softhebb.batching import as_input
from softhebb.data import load_dataset
from softhebb.features import frozen_forward
from softhebb.rundir import load_run
from screen_common import paper_probe

torch.set_num_threads(2)
run_dir, variants = sys.argv[1], sys.argv[2].split(",")
model, cfg = load_run(run_dir)
tr, te = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")


@torch.no_grad()
def feats(images):
    out = {"b0": [], "b1": [], "b2": []}
    for s in range(0, len(images), 250):
        x = as_input(images[s:s + 250])
        h0 = frozen_forward(model.blocks[:1], x)
        h1 = frozen_forward(model.blocks[1:2], h0)
        h2 = frozen_forward(model.blocks[2:3], h1)
        out["b0"].append(F.adaptive_avg_pool2d(h0, 4).flatten(1))
        out["b1"].append(F.adaptive_avg_pool2d(h1, 4).flatten(1))
        out["b2"].append(h2.flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}


t = time.time()
ftr, fte = feats(tr.images), feats(te.images)
print(f"features {time.time() - t:.0f}s", {k: tuple(v.shape) for k, v in ftr.items()}, flush=True)


for v in variants:
    parts, norm = v.split(":")[0].split("+"), (v.split(":")[1] if ":" in v else "none")
    a = torch.cat([ftr[p] for p in parts], 1) if len(parts) > 1 else ftr[parts[0]].clone()
    b = torch.cat([fte[p] for p in parts], 1) if len(parts) > 1 else fte[parts[0]].clone()
    if norm == "z":
        m, s = a.mean(0), a.std(0) + 1e-6
        a.sub_(m).div_(s)
        b.sub_(m).div_(s)
    elif norm == "blockz":
        off = 0
        for p in parts:
            n = ftr[p].shape[1]
            s = a[:, off:off + n].std()
            a[:, off:off + n] /= s
            b[:, off:off + n] /= s
            off += n
    elif norm == "row":
        sc = a.norm(dim=1).mean()
        a.div_(a.norm(dim=1, keepdim=True)).mul_(sc)
        b.div_(b.norm(dim=1, keepdim=True)).mul_(sc)
    r = paper_probe(a, tr.labels, b, te.labels)
    print(json.dumps({"variant": v, "features": a.shape[1], **r}), flush=True)
    del a, b
