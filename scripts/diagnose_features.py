"""Why does a trained run's probe score what it does? Winner spread per block and quick probes on its features.

For each Hebbian block: on how many neurons the argmax competition lands, and the share of the 10 most
frequent winners. Then linear probes (10 epochs, Adam, dropout 0.5) on the features of a training slice,
raw and standardised, at two learning rates, scored on a test slice. If the standardised probe does no
better than the raw one, the features themselves, not the probe's conditioning, limit the accuracy.

    SOFTHEBB_DATA=../shared/datasets python scripts/diagnose_features.py RUN_DIR [--train 10000 --test 2000]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from softhebb.data import load_dataset
from softhebb.run import load_run
from softhebb.train import as_input, extract_features


def probe(f_tr, y_tr, f_te, y_te, lr: float, epochs: int = 10) -> tuple[float, float]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(f_tr.shape[1], int(y_tr.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(f_tr)).split(64):
            loss = F.cross_entropy(lin(F.dropout(f_tr[idx], 0.5, True)), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return tuple(100 * (lin(f).argmax(1) == y).float().mean().item() for f, y in ((f_te, y_te), (f_tr, y_tr)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train", type=int, default=10_000, help="training images for the probes (the first N)")
    ap.add_argument("--test", type=int, default=2_000, help="test images (the first N)")
    a = ap.parse_args()
    model, config = load_run(a.run_dir)
    model.eval()
    name = config["run"]["dataset"]
    train, test = load_dataset(name, "train", a.data_dir), load_dataset(name, "test", a.data_dir)
    with torch.no_grad():
        h = as_input(train.images[:500])
        for i, block in enumerate(model.blocks):
            u = block.layer(block.pre(h))
            if block.hebbian:
                wins = torch.bincount(u.argmax(1).flatten(), minlength=u.shape[1]).sort(descending=True).values
                print(f"block {i}: {int((wins > 0).sum())}/{u.shape[1]} neurons win somewhere; "
                      f"the top 10 take {float(wins[:10].sum() / wins.sum()):.1%} of the positions")
            h = block.post(u)
    f_tr = extract_features(model, train.images[:a.train]).flatten(1)
    f_te = extract_features(model, test.images[:a.test]).flatten(1)
    y_tr, y_te = train.labels[:a.train].long(), test.labels[:a.test].long()
    var = f_tr.var(0)
    print(f"features: {f_tr.shape[1]}, variance median {var.median():.3g}, max {var.max():.3g}, "
          f"{int((var < 1e-8).sum())} constant")
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    for kind, tr, te in (("raw", f_tr, f_te), ("standardised", (f_tr - mu) / sd, (f_te - mu) / sd)):
        for lr in (1e-3, 1e-4):
            test_acc, train_acc = probe(tr, y_tr, te, y_te, lr)
            print(f"probe on {kind} features, lr {lr:g}: test {test_acc:.2f} %, train {train_acc:.2f} %")


if __name__ == "__main__":
    main()
