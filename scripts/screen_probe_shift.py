"""Screen shifted views for the linear probe, on the frozen network of one finished MNIST run.

    SOFTHEBB_DATA=DIR python scripts/screen_probe_shift.py RUN_DIR "0,0 0,1 0,-1" "0,0 0,1 0,-1 1,0 -1,0" ...

Each argument after RUN_DIR is one variant: a set of [down, right] pixel offsets. The features of every image moved
by each offset any variant names are computed once (bf16, the uncovered border filled by reflection, as the
reflect-padded crops of ``--probe-augment shift``); a variant's probe is trained and tested on the mean of its offsets'
features: a fixed, label-free feature map, as ``"mirror": true`` is for left-right mirrors. The probe is the paper's (dropout 0.5, Adam 1e-3, 50 epochs, batch 64, seed 0); one JSON
line per variant. A screen: one run, one probe seed; confirm with full runs.
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
run_dir = sys.argv[1]
variants = [[tuple(int(d) for d in o.split(",")) for o in v.split()] for v in sys.argv[2:]]
offsets = sorted({o for v in variants for o in v})
model, cfg = load_run(run_dir)
dataset = cfg["run"]["dataset"]
tr, te = load_dataset(dataset, "train"), load_dataset(dataset, "test")


def translate(x: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """NCHW images moved ``down`` and ``right`` pixels (negative: up, left), the border filled by reflection."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(right, 0), max(-right, 0), max(down, 0), max(-down, 0)), mode="reflect")
    return padded[..., max(-down, 0):max(-down, 0) + h, max(-right, 0):max(-right, 0) + w]


@torch.no_grad()
def feats(images: torch.Tensor) -> dict:
    """{offset: (n, features) bf16}."""
    out = {}
    for s in range(0, len(images), 500):
        x = as_input(images[s:s + 500])
        for o in offsets:
            f = frozen_forward(model.blocks, translate(x, *o)).flatten(1)
            if o not in out:
                out[o] = torch.empty(len(images), f.shape[1], dtype=torch.bfloat16)
            out[o][s:s + len(f)] = f
    return out


t = time.time()
ftr, fte = feats(tr.images), feats(te.images)
n_feat = next(iter(ftr.values())).shape[1]
print(f"features {time.time() - t:.0f}s, {len(offsets)} offsets, {n_feat} features", flush=True)


def mean_of(f: dict, v: list) -> torch.Tensor:
    total = f[v[0]].float()
    for o in v[1:]:
        total += f[o].float()
    return (total / len(v)).to(torch.bfloat16)


for v in variants:
    r = paper_probe(mean_of(ftr, v), tr.labels, mean_of(fte, v), te.labels)
    print(json.dumps({"shifts": [list(o) for o in v], **r}), flush=True)
