"""Hebbian layers you can drop into any PyTorch model, plus the activations the paper uses.

A Hebbian layer learns while it is in training mode (``layer.train()``) and ``layer.plastic``
is true: each forward adds its local Hebbian sums, and ``layer.step()`` applies the
normalised update — like ``loss.backward()`` then ``optimizer.step()``, but without labels or
gradients. The weights are buffers, so no optimizer or autograd ever touches them, while
gradients still flow *through* the layer to its input (useful for attacks and visualisation).

    >>> import torch
    >>> from softhebb import HebbianConv2d
    >>> layer = HebbianConv2d(3, 16, kernel_size=5, padding=2, t_invert=1.0, lr=0.08)
    >>> u = layer(torch.rand(10, 3, 32, 32))   # forward accumulates Σỹx and Σỹu
    >>> layer.step()                            # w += η·Δw/max|Δw|
    True
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import plasticity as P
from .modules import triangle

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
SCHEDULES = ("radius", "linear")


class NonFiniteError(RuntimeError):
    """A Hebbian update that is NaN or Inf; it was refused, so the weights are still those before it."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v) if isinstance(v, (tuple, list)) else ()
    _check(len(t) == 2 and all(isinstance(a, int) and not isinstance(a, bool) for a in t),
           f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


class HebbianLayer(nn.Module):
    """Shared state and update logic of the Hebbian conv and linear layers."""

    r1_tolerance: float

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        groups: int,
        rule: str,
        t_invert: float,
        lr: float,
        lr_schedule: str,
        power_lr: float,
        radius: float,
        init: str,
        delta: float,
        rank: int,
        lebesgue_p: float,
        bias: bool,
    ) -> None:
        super().__init__()
        _check(rule in P.RULES, f"rule must be one of {P.RULES}, got {rule!r}")
        _check(lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES}, got {lr_schedule!r}")
        _check(t_invert > 0 and math.isfinite(t_invert), f"t_invert must be a positive number, got {t_invert!r}")
        _check(lr >= 0 and math.isfinite(lr), f"lr must be >= 0, got {lr!r}")
        _check(power_lr >= 0 and math.isfinite(power_lr), f"power_lr must be >= 0, got {power_lr!r}")
        _check(radius > 0 and math.isfinite(radius), f"radius must be > 0, got {radius!r}")
        _check(init in ("normal", "uniform"), f"init must be 'normal' or 'uniform', got {init!r}")
        _check(delta >= 0 and math.isfinite(delta), f"delta must be a finite number >= 0, got {delta!r}")
        competing = weight_shape[0] // groups
        _check(isinstance(rank, int) and not isinstance(rank, bool) and (rule != "hardkrotov" or 2 <= rank <= competing),
               f"rank must be an integer between 2 and the {competing} neurons that compete"
               + (" (per group)" if groups > 1 else "") + f", got {rank!r}")
        _check(lebesgue_p >= 2 and math.isfinite(lebesgue_p), f"lebesgue_p must be a finite number >= 2, got {lebesgue_p!r}")
        _check(isinstance(bias, bool) and (not bias or rule in ("softhebb", "soft")),
               f"bias must be true or false, and true only with rule softhebb or soft (the soft competition's prior), "
               f"got bias={bias!r} with rule {rule!r}")
        self.rule, self.t_invert, self.groups = rule, float(t_invert), groups
        self.delta, self.rank, self.lebesgue_p = float(delta), rank, float(lebesgue_p)
        self.lr, self.lr_schedule, self.power_lr = float(lr), lr_schedule, float(power_lr)
        self.radius_init, self.init = float(radius), init
        self.plastic = True
        self.total_steps: float | None = None  # length of the linear-decay schedule (see schedule)
        self.register_buffer("weight", P.init_weight(weight_shape, radius, init, p=self.lebesgue_p))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        k = weight_shape[0]
        # A plastic bias is each neuron's log-prior of winning (reference §1.6); None when disabled, as in every paper preset.
        self.register_buffer("bias", torch.full((k,), math.log(1 / k) / t_invert) if bias else None)
        self._ysum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        # Monitoring counters live on the device so reading them never syncs per batch.
        self.register_buffer("win_counts", torch.zeros(k, dtype=torch.long), persistent=False)
        self.register_buffer("winner_y_sum", torch.zeros(()), persistent=False)
        # num_updates after the first update that left a non-finite weight, −1 while all are finite.
        self.register_buffer("first_nonfinite_update", torch.full((), -1, dtype=torch.long), persistent=False)
        self._yx: torch.Tensor | None = None
        self._yu: torch.Tensor | None = None

    # -- learning -------------------------------------------------------------------------
    def _hebbian_terms(self, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def _accumulate(self, x: torch.Tensor, u: torch.Tensor) -> None:
        y, winner = P.post_synaptic(u, self.rule, self.t_invert, self.groups, self.delta, self.rank)
        # Under bf16 autocast u is bf16: Σỹx (the costly product) comes out of a bf16 kernel, while Σỹu,
        # the accumulation over batches and the update stay fp32.
        yx, yu = self._hebbian_terms(x, y, u)
        yx, yu = yx.to(self.weight.dtype), yu.to(self.weight.dtype)
        if self._yx is None:
            self._yx, self._yu = yx, yu
        else:
            self._yx += yx
            self._yu += yu
        if self.bias is not None:  # |ỹ| is the softmax for both soft rules (softhebb only flips the losers' sign)
            dims = (0, *range(2, y.dim()))
            ysum = y.abs().sum(dim=dims).to(self.weight.dtype)
            count = torch.full((), float(y.numel() // y.shape[1]), device=y.device, dtype=self.weight.dtype)  # no host copy
            self._ysum = ysum if self._ysum is None else self._ysum + ysum
            self._count = count if self._count is None else self._count + count
        per_group = self.weight.shape[0] // self.groups
        offset = torch.arange(self.groups, device=u.device).view(1, self.groups, *([1] * (winner.dim() - 2))) * per_group
        winners = (winner + offset).flatten()
        self.win_counts.index_add_(0, winners, torch.ones_like(winners))  # bincount would sync with the host on CUDA
        self.winner_y_sum += y.reshape(winner.shape[0], self.groups, per_group, *winner.shape[3:]).gather(2, winner).abs().sum()

    @property
    def pending(self) -> tuple[torch.Tensor, ...] | None:
        """The accumulated (Σỹx, Σỹu[, Σy, M for the bias]) since the last step; data-parallel training all-reduces
        these."""
        if self._yx is None:
            return None
        return (self._yx, self._yu) if self.bias is None else (self._yx, self._yu, self._ysum, self._count)  # type: ignore[return-value]

    @torch.no_grad()
    def step(self) -> bool:
        """Apply w_k += η_k·Δw_k with Δw normalised by its layer-wide max-abs. Returns False if nothing was accumulated."""
        if self._yx is None:
            return False
        rate = self.learning_rate().to(self.weight.dtype)
        dw, dmax = P.update_direction(self.weight, self._yx, self._yu, self.groups)
        db = None if self.bias is None else P.bias_direction(self.bias, self._ysum, self._count, self.t_invert)
        self._yx = self._yu = self._ysum = self._count = None
        self.num_updates += 1
        # |step| ≤ rate, so a finite rate and Δw keep w finite; after a bad update the layer stays frozen.
        if self.weight.device.type == "cpu":  # reading a CPU flag costs nothing: refuse before the weights change
            finite = (bool(torch.isfinite(dmax).all()) and bool(torch.isfinite(rate).all())
                      and (db is None or bool(torch.isfinite(db).all())))
            if not finite or int(self.first_nonfinite_update) >= 0:
                if int(self.first_nonfinite_update) < 0:
                    self.first_nonfinite_update.fill_(int(self.num_updates))
                raise NonFiniteError(f"{type(self).__name__} ({self.rule_repr()}): update {int(self.num_updates)} is "
                                     "not finite (NaN or Inf in Σỹx, Σỹu or the rate); the weights are left unchanged")
            P.apply_direction_(self.weight, dw, dmax, rate, self.groups)
            if db is not None:
                self.bias.add_(rate * db, alpha=self.bias_rate / self.t_invert)
            return True
        # on a GPU reading the flag would sync every batch: the update is skipped on the device instead, and the
        # training loop reads first_nonfinite_update at checkpoints and epoch ends
        ok = torch.isfinite(dmax).all() & torch.isfinite(rate).all() & (self.first_nonfinite_update < 0)
        if db is not None:
            ok &= torch.isfinite(db).all()
        self.first_nonfinite_update.copy_(torch.where(ok | (self.first_nonfinite_update >= 0),
                                                      self.first_nonfinite_update, self.num_updates))
        P.apply_direction_(self.weight, dw.nan_to_num_(0.0, 0.0, 0.0), torch.where(ok, dmax, 1.0),
                           torch.where(ok, rate, 0.0), self.groups)
        if db is not None:
            self.bias.add_(torch.where(ok, rate, 0.0) * db.nan_to_num_(0.0, 0.0, 0.0), alpha=self.bias_rate / self.t_invert)
        return True

    def zero_pending(self) -> None:
        """Discard accumulated sums without updating (e.g. after a forward that should not learn)."""
        self._yx = self._yu = self._ysum = self._count = None

    # -- monitoring -----------------------------------------------------------------------
    def learning_rate(self) -> torch.Tensor:
        """Per-neuron rate η_k for the next update."""
        if self.lr_schedule == "radius":
            return P.radius_rate(self.weight, self.lr, self.power_lr, self.lebesgue_p)
        rate = torch.full((self.weight.shape[0],), self.lr, device=self.weight.device)
        if self.total_steps is None:
            return rate
        return P.linear_decay_rate(rate, self.num_updates, self.total_steps)  # stays on the device

    def schedule(self, total_steps: float | None) -> None:
        """Set the length of the linear-decay schedule: the rate reaches 0 after ``total_steps`` updates (None: the
        rate stays at ``lr``). ``hebbian_phase`` sets it to epochs × batches per epoch; the radius schedule needs none."""
        if total_steps is not None and not (total_steps > 0 and math.isfinite(total_steps)):
            raise ValueError(f"total_steps must be a finite number > 0 or None, got {total_steps!r}")
        self.total_steps = None if total_steps is None else float(total_steps)

    def radius(self) -> torch.Tensor:
        """‖w_k‖_p of every neuron (p = ``lebesgue_p``)."""
        return P.neuron_norms(self.weight, self.lebesgue_p)

    def synaptic_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weights the forward pass multiplies the input with: φ(w), = w for ``lebesgue_p`` 2."""
        return P.synaptic_weight(self.weight, self.lebesgue_p).to(dtype or self.weight.dtype)

    def convergence(self) -> float:
        """mean_k |‖w_k‖ − 1|: 0 when every neuron has reached the unit sphere."""
        return float((self.radius() - 1).abs().mean())

    def r1(self) -> int:
        """Number of neurons whose norm is within the R1 tolerance of 1 (the paper's "R1 features")."""
        return int(((self.radius() - 1).abs() < self.r1_tolerance).sum())

    def winner_share(self) -> float:
        """Mean |ỹ| of the winner since the last reset; 1 − this is the anti-Hebbian share."""
        n = float(self.win_counts.sum())
        return float(self.winner_y_sum) / n if n else float("nan")

    def win_fraction(self) -> torch.Tensor:
        """Fraction of competitions each neuron won since the last reset."""
        return self.win_counts / self.win_counts.sum().clamp(min=1).double()

    def reset_stats(self) -> None:
        self.win_counts.zero_()
        self.winner_y_sum.zero_()

    def stats(self) -> dict[str, float]:
        """Monitoring quantities as plain numbers (one host sync)."""
        r = self.radius()
        return {
            "radius_mean": float(r.mean()), "radius_std": float(r.std()) if r.numel() > 1 else 0.0,
            "convergence": float((r - 1).abs().mean()), "r1": int(((r - 1).abs() < self.r1_tolerance).sum()),
            "winner_share": self.winner_share(), "lr_mean": float(self.learning_rate().mean()),
        }

    def rule_repr(self) -> str:
        krotov = f", delta={self.delta:g}, rank={self.rank}" if self.rule == "hardkrotov" else ""
        p = f", lebesgue_p={self.lebesgue_p:g}" if self.lebesgue_p != 2 else ""
        bias = ", bias=True" if self.bias is not None else ""
        return (f"rule={self.rule}, t_invert={self.t_invert:g}, lr={self.lr:g}, lr_schedule={self.lr_schedule}, "
                f"power_lr={self.power_lr:g}{krotov}{p}{bias}")


class HebbianConv2d(HebbianLayer):
    """Conv2d trained by a local Hebbian rule with (soft) winner-take-all across output channels.

    Competition runs independently at every output position (and within each group).
    ``padding_mode`` defaults to "reflect", as in every paper preset; the padded input is
    also what the plasticity sees.
    """

    r1_tolerance = 1e-2
    bias_rate = 0.1  # the bias moves at η_k·0.1/t_invert in conv layers, η_k/t_invert in linear ones (as the authors')

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "reflect",
        rule: str = "softhebb",
        t_invert: float = 96.0,  # the authors' CNN defaults (reference §2.5); every paper preset sets its own
        lr: float = 0.009,
        lr_schedule: str = "radius",
        power_lr: float = 0.75,
        radius: float = 25.0,
        init: str = "normal",
        pre_triangle: bool = False,
        delta: float = 2.0,  # hardkrotov only: the authors' CNN default
        rank: int = 3,
        lebesgue_p: float = 2.0,
        bias: bool = False,
    ) -> None:
        ks, st, pd, dl = (_pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"))
        _check(in_channels > 0 and out_channels > 0, f"in_channels and out_channels must be > 0, got {in_channels} and {out_channels}")
        _check(groups > 0 and in_channels % groups == 0 and out_channels % groups == 0,
               f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        _check(min(ks) > 0 and min(st) > 0 and min(dl) > 0 and min(pd) >= 0,
               f"kernel_size, stride, dilation must be > 0 and padding >= 0, got {ks}, {st}, {dl}, {pd}")
        _check(padding_mode in PADDING_MODES, f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        super().__init__((out_channels, in_channels // groups, *ks), groups, rule, t_invert, lr, lr_schedule, power_lr,
                         radius, init, delta, rank, lebesgue_p, bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = ks, st, pd, dl
        self.padding_mode, self.pre_triangle = padding_mode, pre_triangle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x.dim() == 4 and x.shape[1] == self.in_channels,
               f"HebbianConv2d expects (N, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}")
        x = P.pad_input(x, self.padding, self.padding_mode)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        u = F.conv2d(x, self.synaptic_weight(x.dtype), bias, self.stride, 0, self.dilation, self.groups)
        if self.pre_triangle:
            u = triangle(u, 1.0)
        if self.training and self.plastic:
            self._accumulate(x, u)
        return u

    def _hebbian_terms(self, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return P.hebbian_terms_conv(x, y, u, self.weight.shape, self.stride, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, padding_mode={self.padding_mode}, "
                f"{self.rule_repr()}, pre_triangle={self.pre_triangle}")


class HebbianLinear(HebbianLayer):
    """Linear layer trained by the same Hebbian rule, with competition across its outputs."""

    r1_tolerance = 5e-3
    bias_rate = 1.0

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rule: str = "softhebb",
        t_invert: float = 10.0,
        lr: float = 0.05,
        lr_schedule: str = "radius",
        power_lr: float = 0.2,
        radius: float = 10.0,
        init: str = "uniform",
        delta: float = 0.1,  # hardkrotov only: the authors' MLP default
        rank: int = 3,
        lebesgue_p: float = 2.0,
        bias: bool = False,
    ) -> None:
        _check(in_features > 0 and out_features > 0, f"in_features and out_features must be > 0, got {in_features} and {out_features}")
        super().__init__((out_features, in_features), 1, rule, t_invert, lr, lr_schedule, power_lr, radius, init,
                         delta, rank, lebesgue_p, bias)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x.dim() == 2 and x.shape[1] == self.in_features,  # the update sums over one batch dimension
               f"HebbianLinear expects (N, {self.in_features}) input (flatten first), got shape {tuple(x.shape)}")
        u = x @ self.synaptic_weight(x.dtype).t()
        if self.bias is not None:
            u = u + self.bias.to(x.dtype)
        if self.training and self.plastic:
            self._accumulate(x, u)
        return u

    def _hebbian_terms(self, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return P.hebbian_terms_linear(x, y, u)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.rule_repr()}"


def hebbian_layers(module: nn.Module) -> list[HebbianLayer]:
    """All Hebbian layers inside ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, HebbianLayer)]


def hebbian_step(module: nn.Module) -> int:
    """Apply the pending update of every Hebbian layer in ``module``; returns how many moved."""
    return sum(layer.step() for layer in hebbian_layers(module))
