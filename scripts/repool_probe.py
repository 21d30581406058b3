"""Re-probe a trained run: other pools after its last block, or other probe augmentation, same Hebbian weights.

The last block's pool is never used while the Hebbian weights learn, and the probe never changes them, so
neither needs Hebbian retraining. Each pool (default: the run's own) gets the run's own probe protocol, with
``--probe-augment`` / ``--probe-views`` replaced if given, through the same code as ``softhebb train``
(``run.probe_features``, ``train.train_probe``): a run's own pool and options give its own result exactly.
One JSON line per pool.

    SOFTHEBB_DATA=../shared/datasets python scripts/repool_probe.py RUN_DIR avg_3_2_1 avg_4_2_1 [--out rows.jsonl]
    SOFTHEBB_DATA=../shared/datasets python scripts/repool_probe.py RUN_DIR --probe-augment shift --probe-views 4
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch

from softhebb.cli import positive_int
from softhebb.data import load_dataset
from softhebb.network import SoftHebbNet, _parse_pool, resolve_preset
from softhebb.run import ADDED_FIELDS, IN_MEMORY, PROBE_AUGMENTS, RunConfig, _subset, load_run, probe_features
from softhebb.train import train_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("pools", nargs="*", help="pools such as avg_3_2_1 (type_kernel_stride_padding); default: the run's own")
    ap.add_argument("--probe-augment", choices=PROBE_AUGMENTS, default=None, help="default: the run's own")
    ap.add_argument("--probe-views", type=positive_int, default=None, help="default: the run's own")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="append the JSON lines here too")
    a = ap.parse_args()
    model, config = load_run(a.run_dir)
    saved = {**ADDED_FIELDS, **config["run"]}
    if saved["dataset"] not in IN_MEMORY or saved["mode"] == "hybrid" or not model.hebbian_block_indices():
        raise SystemExit(f"{a.run_dir}: this script re-probes Hebbian successive/simultaneous runs on "
                         f"{', '.join(IN_MEMORY)} only")
    changes = {k: v for k, v in (("probe_augment", a.probe_augment), ("probe_views", a.probe_views)) if v is not None}
    cfg = dataclasses.replace(RunConfig(**saved), device="cpu", **changes)
    pools = a.pools or [model.preset["blocks"][-1]["pool"]]
    for p in pools:
        _parse_pool(p)  # a bad pool fails before any feature is computed
    x, y = {}, {}
    for split, limit in (("train", cfg.train_limit), ("test", cfg.test_limit)):
        ds = load_dataset(cfg.dataset, split, a.data_dir)
        x[split], y[split] = _subset(ds.images, ds.labels, limit, cfg.seed)  # the rows the run itself used
    for pool in pools:
        preset = copy.deepcopy(model.preset)
        preset["blocks"][-1]["pool"] = pool
        torch.manual_seed(cfg.seed)  # a fresh classifier, initialised as `softhebb train` does
        repooled = SoftHebbNet(resolve_preset(preset), model.in_shape, model.num_classes)
        repooled.blocks.load_state_dict(model.blocks.state_dict())
        t = time.perf_counter()
        f_train, f_test = probe_features(repooled, cfg, x["train"], x["test"])
        features_s = time.perf_counter() - t
        res = train_probe(repooled, f_train, y["train"], f_test, y["test"], cfg.probe_epochs, cfg.probe_batch,
                          cfg.probe_lr, cfg.seed, cfg.eval_every, progress=False)
        row = {"run_dir": a.run_dir, "pool": pool, "probe_augment": cfg.probe_augment, "probe_views": cfg.probe_views,
               "features": repooled.num_features, **res, "features_s": round(features_s),
               "probe_s": round(time.perf_counter() - t - features_s)}
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        del f_train, f_test  # free this pool's features before the next


if __name__ == "__main__":
    main()
