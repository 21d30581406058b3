"""Screen mirrored views for the linear probe, on the frozen network of one finished CIFAR-10 run.

    SOFTHEBB_DATA=DIR python scripts/screen_probe_flip.py RUN_DIR plain,views,views+mean,mean [b1+b2]

The features of every image and of its left-right mirror are computed once (bf16, as ``--precision bf16`` stores
them). ``plain`` = the paper's probe on the images only; ``views`` = each epoch trains on one of the two per image,
tested on the images; ``+mean`` = tested on the mean of an image's two feature vectors (for a linear head, the mean of
its two logits); ``mean`` = trained and tested on that mean. ``b1+b2`` also reads block 1 average-pooled to 4×4, as
``4SoftHebbCnnCIFAR_concat``. The probe is the paper's (dropout 0.5, Adam 1e-3, 50 epochs, batch 64, seed 0); one
JSON line per variant. A screen: one run, one probe seed; confirm with full runs.
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
concat = len(sys.argv) > 3 and sys.argv[3] == "b1+b2"
model, cfg = load_run(run_dir)
tr, te = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")


@torch.no_grad()
def feats(images: torch.Tensor) -> torch.Tensor:
    """(2, n, features) bf16: view 0 the images, view 1 their mirrors."""
    out = None
    for s in range(0, len(images), 250):
        x = as_input(images[s:s + 250])
        for v, xv in enumerate((x, x.flip(-1))):
            h1 = frozen_forward(model.blocks[:2], xv)
            h2 = frozen_forward(model.blocks[2:], h1)
            f = torch.cat([F.adaptive_avg_pool2d(h1, 4).flatten(1), h2.flatten(1)], 1) if concat else h2.flatten(1)
            if out is None:
                out = torch.empty(2, len(images), f.shape[1], dtype=torch.bfloat16)
            out[v, s:s + len(f)] = f
    return out


t = time.time()
ftr, fte = feats(tr.images), feats(te.images)
print(f"features {time.time() - t:.0f}s", tuple(ftr.shape), flush=True)


def mean_view(f: torch.Tensor) -> torch.Tensor:
    return ((f[0].float() + f[1].float()) / 2).to(torch.bfloat16)


for v in variants:
    train = {"plain": ftr[0], "views": ftr, "views+mean": ftr, "mean": mean_view(ftr)}[v]
    test = fte[0] if v in ("plain", "views") else mean_view(fte)
    r = paper_probe(train, tr.labels, test, te.labels)
    print(json.dumps({"variant": v, "concat": concat, "features": ftr.shape[-1], **r}), flush=True)
