"""Try other pools after the last block of a trained run: same Hebbian weights, new features, a new probe.

The last block's pool is never used while the Hebbian weights learn, so changing it needs no Hebbian
retraining. Each pool gets the run's own protocol: features of the train and test splits computed once,
the 50-epoch probe (Adam 1e-3, step-halving schedule, batch 64, dropout of the preset), test accuracy
after the last epoch. One pass of the network serves every pool. One JSON line per pool.

    SOFTHEBB_DATA=../shared/datasets python scripts/repool_probe.py RUN_DIR avg_3_2_1 avg_4_2_1 [--out rows.jsonl]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from softhebb.data import load_dataset
from softhebb.network import SoftHebbNet, _parse_pool, resolve_preset
from softhebb.run import IN_MEMORY, _subset, load_run
from softhebb.train import as_input, train_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("pools", nargs="+", help="pools such as avg_3_2_1 (type_kernel_stride_padding)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="append the JSON lines here too")
    a = ap.parse_args()
    model, config = load_run(a.run_dir)
    run = config["run"]
    if run["dataset"] not in IN_MEMORY or run.get("probe_augment") not in (None, "none") or \
            run.get("precision", "fp32") != "fp32" or run["mode"] == "hybrid" or not model.hebbian_block_indices():
        raise SystemExit(f"{a.run_dir}: this script re-probes fp32 features computed once, so it takes Hebbian "
                         f"successive/simultaneous runs on {', '.join(IN_MEMORY)} without probe augmentation only")
    pools = [_parse_pool(p) for p in a.pools]
    *front, last = model.blocks
    split_features = {}
    t0 = time.perf_counter()
    for split, limit in (("train", run.get("train_limit")), ("test", run.get("test_limit"))):
        ds = load_dataset(run["dataset"], split, a.data_dir)
        images, labels = _subset(ds.images, ds.labels, limit, run["seed"])  # the rows the run itself used
        chunks: list[list[torch.Tensor]] = [[] for _ in pools]
        with torch.no_grad():
            for i in range(0, len(images), 250):
                h = as_input(images[i:i + 250]).contiguous(memory_format=torch.channels_last)
                for block in front:
                    h = block(h)
                h = last.layer(last.pre(h))
                h = last.post[0](h) if last.cfg["activation"] else h  # the activation; the old pool is left out
                for out, pool in zip(chunks, pools):
                    out.append(pool(h).flatten(1).contiguous())
        split_features[split] = ([torch.cat(c) for c in chunks], labels)
    seconds = time.perf_counter() - t0
    (train_f, y_train), (test_f, y_test) = split_features["train"], split_features["test"]
    for j, pool in enumerate(a.pools):
        preset = copy.deepcopy(model.preset)
        preset["blocks"][-1]["pool"] = pool
        torch.manual_seed(run["seed"])  # a fresh classifier, initialised as `softhebb train` does
        repooled = SoftHebbNet(resolve_preset(preset), model.in_shape, model.num_classes)
        repooled.blocks.load_state_dict(model.blocks.state_dict())
        t = time.perf_counter()
        res = train_probe(repooled, train_f[j], y_train, test_f[j], y_test, run["probe_epochs"], run["probe_batch"],
                          run["probe_lr"], run["seed"], progress=False)
        row = {"run_dir": a.run_dir, "pool": pool, "features": train_f[j].shape[1], **res,
               "features_s_all_pools": round(seconds), "probe_s": round(time.perf_counter() - t)}
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        train_f[j] = test_f[j] = None  # free this pool's features before the next probe


if __name__ == "__main__":
    main()
