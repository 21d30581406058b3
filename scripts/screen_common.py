"""What the scripts/screen_probe_*.py screens share: the paper's linear probe on features computed beforehand."""
import time

import torch
import torch.nn as nn

from softhebb.modules import Dropout
from softhebb.probe import train_probe


class _Head(nn.Module):
    """The classifier part of a SoftHebbNet, which is all ``train_probe`` uses."""

    def __init__(self, n: int, classes: int) -> None:
        super().__init__()
        self.dropout, self.classifier = Dropout(0.5), nn.Linear(n, classes)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(f.flatten(1)))


def paper_probe(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                lr: float = 1e-3, classes: int = 10) -> dict:
    """Dropout 0.5 + linear head, Adam at ``lr`` on the step-halving schedule, 50 epochs, batch 64, seed 0:
    ``train_probe``'s result and its wall time in seconds. ``train`` may hold views, (views, n, features)."""
    torch.manual_seed(0)
    head = _Head(train.shape[-1], classes)
    t = time.time()
    result = train_probe(head, train, train_labels, test, test_labels, epochs=50, batch_size=64, lr=lr, seed=0,
                         progress=False)
    return {**result, "seconds": round(time.time() - t)}
