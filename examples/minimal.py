"""The whole SoftHebb method in one short file, written with softhebb's layers only.

Two Hebbian conv layers learn from MNIST digits without labels, one after the other, for one epoch:
every forward of a layer in training mode accumulates its local Hebbian sums (soft winner-take-all,
anti-Hebbian losers), and ``hebbian_step`` applies them. No labels, no backprop, no feedback.
A linear classifier on the frozen features then measures what was learned.

    python examples/minimal.py                    # all 60,000 digits
    python examples/minimal.py --limit 2000       # a quick look (30 s on 2 CPU cores)
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from softhebb import HebbianConv2d, Triangle, hebbian_step
from softhebb.data import load_dataset


def block(c_in: int, c_out: int, kernel: int, t_invert: float, lr: float, power: float) -> nn.Sequential:
    """BatchNorm → Hebbian conv → the paper's triangle activation → max pool (its CIFAR blocks 1 and 2)."""
    return nn.Sequential(
        nn.BatchNorm2d(c_in, affine=False),
        HebbianConv2d(c_in, c_out, kernel, padding=kernel // 2, t_invert=t_invert, lr=lr, power_lr=0.5, radius=25),
        Triangle(power),
        nn.MaxPool2d(4, 2, 1),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--data-dir", default=None, help="data root (default: $SOFTHEBB_DATA or ~/.cache/softhebb/data)")
    args = p.parse_args()
    torch.manual_seed(0)

    train, test = load_dataset("mnist", "train", args.data_dir), load_dataset("mnist", "test", args.data_dir)
    x_train = train.images[:args.limit].float() / 255  # uint8 (N, 1, 28, 28) -> [0, 1]
    y_train, x_test, y_test = train.labels[:args.limit], test.images.float() / 255, test.labels

    blocks = nn.ModuleList([block(1, 96, 5, t_invert=1.0, lr=0.08, power=0.7),
                            block(96, 384, 3, t_invert=0.65, lr=0.005, power=1.4)])

    # 1. The Hebbian phase: block k learns alone while the blocks before it are frozen (eval mode).
    order = torch.randperm(len(x_train))
    with torch.no_grad():
        for k, learning in enumerate(blocks):
            blocks.eval()
            learning.train()  # its BatchNorm uses batch statistics, its Hebbian layer accumulates
            for idx in order.split(10):  # the paper's batch of 10
                h = x_train[idx]
                for frozen in blocks[:k]:
                    h = frozen(h)
                learning[:2](h)  # BatchNorm + Hebbian conv: the activation and pool do not affect learning
                hebbian_step(learning)  # w += η·Δw / max|Δw|, η from each neuron's distance to the unit sphere
            radius = learning[1].radius()
            print(f"block {k}: mean |‖w‖ - 1| = {(radius - 1).abs().mean():.3f} after {len(x_train)} images")

        # 2. Frozen features of every image.
        blocks.eval()

        def features(x: torch.Tensor) -> torch.Tensor:
            out = []
            for chunk in x.split(500):
                for b in blocks:
                    chunk = b(chunk)
                out.append(chunk.flatten(1))
            return torch.cat(out)

        f_train, f_test = features(x_train), features(x_test)

    # 3. The linear probe: dropout + linear classifier, Adam, the only part that sees labels.
    head = nn.Sequential(nn.Dropout(0.5), nn.Linear(f_train.shape[1], 10))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for epoch in range(args.probe_epochs):
        head.train()
        for idx in torch.randperm(len(f_train)).split(64):
            loss = F.cross_entropy(head(f_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        acc = (head(f_test).argmax(1) == y_test).float().mean().item() * 100
    print(f"test accuracy {acc:.2f} % ({f_train.shape[1]} features, {len(x_train)} training images)")


if __name__ == "__main__":
    main()
