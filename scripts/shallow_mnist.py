"""The 2022 paper's shallow MNIST experiments on the 2000-neuron soft-WTA MLP (``2SoftMlpMNIST``).

    SOFTHEBB_DATA=../shared/datasets python scripts/shallow_mnist.py [--preset P] [--seed N] [--dataset D] --out DIR

Protocol of the original's B.3.A configs: one Hebbian epoch at batch 32, a 10-epoch probe at batch
32 (no dropout). Reports the probe's test accuracy, the unsupervised label-assignment accuracy
(train and test), and the post-hoc loss curve (CSV + PNG): the cross-entropy of the fixed probe
while the Hebbian layer re-learns from its initial weights without labels.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from softhebb.data import load_dataset
from softhebb.network import build_model
from softhebb.shallow import label_assignment_accuracy, post_hoc_loss
from softhebb import evaluate, extract_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="2SoftMlpMNIST")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=Path("results/shallow"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test = load_dataset(a.dataset, "train", a.data_dir), load_dataset(a.dataset, "test", a.data_dir)
    model = build_model(a.preset, (1, 28, 28), 10, seed=a.seed)
    rows = post_hoc_loss(model, train.images, train.labels, batch_size=32, probe_epochs=10, probe_batch=32, every=50,
                         eval_size=10000, seed=a.seed)
    probe = evaluate(model, extract_features(model, test.images), test.labels)
    labels = label_assignment_accuracy(model, train.images, train.labels, test.images, test.labels, 10)
    summary = {"preset": a.preset, "dataset": a.dataset, "seed": a.seed, "probe_test_acc": probe["acc"],
               "label_assignment_acc": labels, "post_hoc_ce_start": rows[0]["cross_entropy"],
               "post_hoc_ce_end": rows[-1]["cross_entropy"], "seconds": round(time.perf_counter() - t0, 1)}
    with open(a.out / "post_hoc_loss.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["examples"] for r in rows], [r["cross_entropy"] for r in rows])
        ax.set_xlabel("training images seen (second, label-free Hebbian epoch)")
        ax.set_ylabel("cross-entropy of the fixed probe")
        ax.set_title(f"{a.preset}: post-hoc loss", fontsize=9)
        fig.tight_layout()
        fig.savefig(a.out / "post_hoc_loss.png", dpi=120)
    except ImportError:
        print("matplotlib missing: no plot")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
