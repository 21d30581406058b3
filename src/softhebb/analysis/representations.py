"""What whole layers represent: block outputs, 2-D embeddings, sparsity, top-activating patches."""

from __future__ import annotations

import math

import torch

from ..network import SoftHebbNet
from ..batching import as_input
from .geometry import crop, receptive_fields


@torch.no_grad()
def block_outputs(model: SoftHebbNet, images: torch.Tensor, depths: list[int] | None = None,
                  batch_size: int = 250) -> dict[int, torch.Tensor]:
    """Eval-mode output of block ``d`` for each ``d`` in ``depths`` (default: every block), on CPU.

    ``images`` are uint8 NCHW. Outputs keep their shape: (N, C, H, W) for conv blocks, (N, D) for
    linear ones. The prefix is computed once per batch for all depths.
    """
    model.eval()
    depths = sorted(set(range(len(model.blocks)) if depths is None else depths))
    device = model.classifier.weight.device
    out: dict[int, list[torch.Tensor]] = {d: [] for d in depths}
    for s in range(0, images.shape[0], batch_size):
        h = as_input(images[s:s + batch_size].to(device))
        for i, block in enumerate(model.blocks[:depths[-1] + 1]):
            h = block(h)
            if i in out:
                out[i].append(h.float().cpu())
    return {d: torch.cat(v) for d, v in out.items()}


def principal_components(x: torch.Tensor, q: int, seed: int = 0) -> torch.Tensor:
    """Scores (N, q) on the top ``q`` principal components of ``x`` (N, D), centred here.

    Exact (eigendecomposition of the smaller of the Gram and covariance matrices) up to 4096 on
    that side, randomised (torch.pca_lowrank, oversampled) beyond."""
    x = x.flatten(1).float()  # float32 data, float64 only for the small Gram/covariance matrix
    x = x - x.mean(0)
    q = min(q, *x.shape)
    if min(x.shape) <= 4096:
        if x.shape[0] <= x.shape[1]:
            vals, vecs = torch.linalg.eigh((x @ x.t()).double())  # scores = U·S = eigenvectors of XXᵀ times √λ
            return (vecs[:, -q:] * vals[-q:].clamp(min=0).sqrt()).flip(1)
        return (x.double() @ torch.linalg.eigh((x.t() @ x).double())[1][:, -q:]).flip(1)
    torch.manual_seed(seed)  # pca_lowrank draws its random projection from the global generator
    u, s, _ = torch.pca_lowrank(x, q=min(q + 10, *x.shape), center=False, niter=6)
    return (u * s)[:, :q].double()


def embed_2d(features: torch.Tensor, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """(N, ...) → (N, 2). ``pca``: top two principal components. ``tsne``: scikit-learn t-SNE on
    the top 50 principal components (ImportError without scikit-learn)."""
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    pcs = principal_components(features, 50 if method == "tsne" else 2, seed)
    n, q = pcs.shape
    if method == "pca":
        return torch.cat([pcs, pcs.new_zeros(n, 2 - q)], 1).float()
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (n - 1) / 3))  # sklearn requires perplexity < n
    return torch.from_numpy(TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(pcs.numpy())).float()


def _treves_rolls(a: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised Treves–Rolls sparseness along ``dim`` and a mask of non-silent slices."""
    a = a.abs().double()
    n = a.shape[dim]
    m1, m2 = a.mean(dim), a.pow(2).mean(dim)
    alive = m2 > 0
    s = (1 - m1.pow(2) / m2.clamp(min=1e-300)) / (1 - 1 / n) if n > 1 else torch.zeros_like(m1)
    return s.clamp(0, 1), alive


def sparsity(acts: torch.Tensor) -> dict[str, float]:
    """Sparsity of one block's outputs (N, C, H, W) or (N, D).

    zero_fraction        fraction of outputs that are exactly 0 (triangle/ReLU silence).
    population           Treves–Rolls sparseness S = (1 − (mean|a|)² / mean a²) / (1 − 1/n) across
                         the n neurons that compete — the C channels at each (image, position) for a
                         conv block, all D units for a linear one — averaged over images (and
                         positions). 0: all neurons equally active; 1: a single one active.
    lifetime             the same S per neuron across all images (and positions), averaged over the
                         neurons that are ever active: how selective a neuron is over stimuli.
    dead_fraction        neurons that are exactly 0 on every input (excluded from ``lifetime``).
    All four lie in [0, 1]; |a| is used so signed outputs (no activation) are measured too.
    """
    per_unit = acts.movedim(1, -1).reshape(-1, acts.shape[1])  # rows: (image, position), cols: neurons
    pop, alive_rows = _treves_rolls(per_unit, 1)
    life, alive_cols = _treves_rolls(per_unit, 0)
    nan = float("nan")
    return {
        "zero_fraction": float((acts == 0).double().mean()),
        "population": float(pop[alive_rows].mean()) if alive_rows.any() else nan,
        "lifetime": float(life[alive_cols].mean()) if alive_cols.any() else nan,
        "dead_fraction": float((~alive_cols).double().mean()),
    }


def top_patches(model: SoftHebbNet, images: torch.Tensor, depth: int, neurons: list[int] | torch.Tensor,
                k: int = 10, acts: torch.Tensor | None = None) -> tuple[torch.Tensor, list[dict]]:
    """The ``k`` most activating input patches of each neuron (channel) of block ``depth`` (Fig. 5 C/D).

    Each neuron's response to an image is its maximum over positions; the top ``k`` distinct images
    are kept and cropped to the neuron's receptive field at the argmax position (outside-the-image
    pixels read 0). Returns (patches (len(neurons), k, C, rf, rf) in [0, 1], one row per patch:
    neuron, rank, image index, position, window and activation).
    """
    if acts is None:
        acts = block_outputs(model, images, [depth])[depth]
    rf = receptive_fields(model)[depth]
    x = as_input(images.cpu())
    k = min(k, images.shape[0])
    patches, rows = [], []
    for n in torch.as_tensor(neurons).tolist():
        a = acts[:, n]
        flat = a.flatten(1) if a.dim() == 3 else a.view(-1, 1)
        best, pos = flat.max(1)
        top = best.topk(k).indices
        mine = []
        for rank, img in enumerate(top.tolist()):
            i, j = divmod(int(pos[img]), a.shape[-1]) if a.dim() == 3 else (0, 0)
            t, l, size = rf.window(i, j)
            mine.append(crop(x[img], t, l, size) if not rf.whole_image else x[img])
            rows.append({"block": depth, "neuron": n, "rank": rank, "image": img, "row": i, "col": j,
                         "top": t, "left": l, "size": size, "activation": float(best[img])})
        patches.append(torch.stack(mine))
    return torch.stack(patches), rows


def alive_neurons(acts: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random (seeded) neurons that respond to at least one input, falling back to any."""
    c = acts.shape[1]
    peak = acts.transpose(0, 1).reshape(c, -1).abs().amax(1)
    pool = (peak > 0).nonzero().flatten()
    pool = pool if pool.numel() >= n else torch.arange(c)
    return pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))[:n]].sort().values


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (%) with cosine similarity: a label-free-training, label-using
    probe of how well a layer's geometry separates classes (complements the 2-D pictures)."""
    x = torch.nn.functional.normalize(features.flatten(1).float(), dim=1)
    k = min(k, x.shape[0] - 1)
    idx = []
    for s in range(0, x.shape[0], 1024):  # row blocks keep memory at 1024·N
        sim = x[s:s + 1024] @ x.t()
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -math.inf
        idx.append(sim.topk(k, dim=1).indices)
    idx = torch.cat(idx)
    votes = torch.nn.functional.one_hot(labels[idx], int(labels.max()) + 1).sum(1)
    return 100.0 * float((votes.argmax(1) == labels).double().mean())
