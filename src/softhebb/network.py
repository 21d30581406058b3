"""Networks built from declarative presets (the JSON files in ``softhebb/presets``).

A preset is a list of hidden blocks plus a classifier head:

    block      = [BatchNorm (non-affine)] → layer → [activation] → [pool]
    classifier = flatten → dropout → linear

Block fields (defaults in ``CONV_DEFAULTS`` / ``LINEAR_DEFAULTS``): ``type`` conv|linear,
``rule`` softhebb|soft|hard|hardkrotov|bp, ``out``, ``kernel``, ``stride``, ``padding``, ``dilation``,
``groups``, ``padding_mode``, ``t_invert``, ``lr``, ``lr_schedule`` radius|linear,
``power_lr``, ``radius``, ``delta`` and ``rank`` (hardkrotov), ``lebesgue_p``, ``bias`` (plastic), ``pre_triangle``, ``bn``, ``activation`` (``triangle_P``, ``relu``,
``softmax_B`` or null), ``pool`` (``max|avg_kernel_stride_padding`` or null) and ``probe_grid`` (N or null: a
hidden block's output, average-pooled to an N×N map, is fed to the classifier as well as the last block's).
Classifier fields (``CLASSIFIER_DEFAULTS``): ``dropout``, ``rule`` bp|hebbian, ``lr`` and ``radius`` (hebbian) and
``mirror`` (read the mean of the features of the image and of its left-right mirror).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import PADDING_MODES, SCHEDULES, HebbianConv2d, HebbianLayer, HebbianLinear
from .modules import AvgPool2d, ChannelSoftmax, Dropout, MaxPool2d, Power, Triangle
from .plasticity import RULES

HEBBIAN_FIELDS = ("rule", "t_invert", "lr", "lr_schedule", "power_lr", "radius", "delta", "rank", "lebesgue_p", "bias")


def _defaults(layer: type, fields: tuple[str, ...]) -> dict[str, Any]:
    """Block defaults read off the layer's signature: the layers hold the one set of Hebbian defaults."""
    params = inspect.signature(layer).parameters
    return {f: params[f].default for f in fields}


_CONV = _defaults(HebbianConv2d, ("padding_mode", *HEBBIAN_FIELDS, "pre_triangle"))
CONV_DEFAULTS: dict[str, Any] = dict(
    rule=_CONV.pop("rule"), kernel=3, stride=1, padding=0, dilation=1, groups=1, **_CONV, bn=True, activation=None,
    pool=None, probe_grid=None,
)
LINEAR_DEFAULTS: dict[str, Any] = dict(**_defaults(HebbianLinear, HEBBIAN_FIELDS), bn=False, activation=None)
# rule "hebbian": the authors' supervised Hebbian classifier (softhebb.hebb_classifier) with its lr₀ and initial radius
# mirror: the classifier reads the mean of the features of an image and of its left-right mirror (SoftHebbNet.readout)
CLASSIFIER_DEFAULTS: dict[str, Any] = dict(dropout=0.5, rule="bp", lr=0.045, radius=35.0, mirror=False)
# A preset may name its own training protocol (e.g. the MNIST MLP's batch 32 and 10-epoch probe); these
# replace the dataset's protocol where a run does not set them.
PROTOCOL_FIELDS = ("hebb_batch", "probe_epochs", "probe_batch")


class PresetError(ValueError):
    """A preset name or field that does not exist or has a wrong value."""


@lru_cache(maxsize=None)
def _registry() -> dict[str, dict]:
    presets: dict[str, dict] = {}
    for f in sorted(resources.files("softhebb").joinpath("presets").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".json"):
            for name, spec in json.loads(f.read_text()).items():
                if name.startswith("_"):
                    continue
                if name in presets:
                    raise PresetError(f"preset {name!r} is defined twice (second time in {f.name})")
                presets[name] = {**spec, "source": f.name}
    return presets


def list_presets() -> list[str]:
    """Names of every shipped preset."""
    return sorted(_registry())


def get_preset(name: str) -> dict:
    """A resolved copy of a preset (block defaults filled in); names are case-insensitive.

    A name ending in ``.json`` is a preset file, e.g. the ``best_preset.json`` of `softhebb search`.
    """
    if name.endswith(".json"):
        path = Path(name)
        try:
            spec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PresetError(f"cannot read the preset file {path}: {e}") from None
        if not isinstance(spec, dict):
            raise PresetError(f"preset file {path}: expected a JSON object with 'blocks', got {type(spec).__name__}")
        return resolve_preset({**spec, "name": spec.get("name", path.stem)})
    reg = _registry()
    match = {k.lower(): k for k in reg}.get(name.lower())
    if match is None:
        close = difflib.get_close_matches(name, list(reg), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PresetError(f"unknown preset {name!r}.{hint} Run `softhebb presets` to list all {len(reg)} presets.")
    return resolve_preset({**copy.deepcopy(reg[match]), "name": match})


def resolve_preset(spec: dict) -> dict:
    """Fill block defaults and validate field names, so every saved config is explicit."""
    if not isinstance(spec.get("blocks"), list):
        raise PresetError(f"preset {spec.get('name', '?')!r}: 'blocks' must be a list of block objects")
    blocks = []
    for i, b in enumerate(spec["blocks"]):
        kind = b.get("type")
        if kind not in ("conv", "linear"):
            raise PresetError(f"preset {spec.get('name', '?')!r} block {i}: 'type' must be 'conv' or 'linear', got {kind!r}")
        defaults = CONV_DEFAULTS if kind == "conv" else LINEAR_DEFAULTS
        unknown = set(b) - set(defaults) - {"type", "out"}
        if unknown:
            raise PresetError(f"preset {spec.get('name', '?')!r} block {i}: unknown field(s) {sorted(unknown)}; "
                              f"allowed: {sorted(set(defaults) | {'type', 'out'})}")
        if not isinstance(b.get("out"), int) or isinstance(b["out"], bool) or b["out"] <= 0:
            raise PresetError(f"preset {spec.get('name', '?')!r} block {i}: 'out' must be a positive int, got {b.get('out')!r}")
        blocks.append({**defaults, **b})
        _check_block_values(spec.get("name", "?"), i, blocks[-1])
    if blocks and blocks[-1].get("probe_grid") is not None:
        raise PresetError(f"preset {spec.get('name', '?')!r} block {len(blocks) - 1}: 'probe_grid' is for hidden blocks "
                          "before the last; the last block's whole output always feeds the classifier")
    head = {**CLASSIFIER_DEFAULTS, **spec.get("classifier", {})}
    if set(head) != set(CLASSIFIER_DEFAULTS):
        raise PresetError(f"preset {spec.get('name', '?')!r} classifier: unknown field(s) "
                          f"{sorted(set(head) - set(CLASSIFIER_DEFAULTS))}; allowed: {sorted(CLASSIFIER_DEFAULTS)}")
    if not isinstance(head["dropout"], (int, float)) or not 0 <= head["dropout"] < 1:
        raise PresetError(f"preset {spec.get('name', '?')!r} classifier: 'dropout' must be in [0, 1), got {head['dropout']!r}")
    if head["rule"] not in ("bp", "hebbian"):
        raise PresetError(f"preset {spec.get('name', '?')!r} classifier: 'rule' must be 'bp' (the linear probe) or "
                          f"'hebbian' (the supervised Hebbian classifier), got {head['rule']!r}")
    if not isinstance(head["mirror"], bool):
        raise PresetError(f"preset {spec.get('name', '?')!r} classifier: 'mirror' must be true or false, "
                          f"got {head['mirror']!r}")
    for field in ("lr", "radius"):
        v = head[field]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise PresetError(f"preset {spec.get('name', '?')!r} classifier: {field!r} must be a finite number > 0, "
                              f"got {v!r}")
    protocol = spec.get("protocol", {})
    if not isinstance(protocol, dict) or set(protocol) - set(PROTOCOL_FIELDS):
        raise PresetError(f"preset {spec.get('name', '?')!r} protocol: expected an object with some of "
                          f"{list(PROTOCOL_FIELDS)}, got {protocol!r}")
    for k, v in protocol.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise PresetError(f"preset {spec.get('name', '?')!r} protocol: {k!r} must be a positive int, got {v!r}")
    return {k: v for k, v in spec.items() if k not in ("blocks", "classifier")} | {"blocks": blocks, "classifier": head}


# numeric block fields: (lowest allowed, whether the lowest itself is allowed, what the value means)
_NUMBERS = {
    "t_invert": (0, False, "the inverse softmax temperature of the competition; paper presets use 0.25–12"),
    "lr": (0, True, "the Hebbian learning rate lr₀; paper presets use 0.005–0.08 (0 freezes the layer)"),
    "power_lr": (0, True, "the exponent of the radius-dependent rate; paper presets use 0.2–0.75"),
    "radius": (0, False, "the initial weight norm per neuron; paper presets use 2–35"),
    "delta": (0, True, "the anti-Hebbian strength of rule hardkrotov; the authors' default is 2 (conv), 0.1 (linear)"),
    "lebesgue_p": (2, True, "the Lebesgue exponent p of the weight norm; 2 in every paper preset"),
}
_INTS = {"kernel": 1, "stride": 1, "dilation": 1, "groups": 1, "padding": 0, "rank": 2}


def _check_block_values(name: str, i: int, b: dict) -> None:
    """Reject absurd values when a preset is resolved, with the block named, not deep inside training."""
    where = f"preset {name!r} block {i}"

    def bad(field: str, expected: str) -> PresetError:
        return PresetError(f"{where}: {field!r} must be {expected}, got {b[field]!r}")

    for field, (low, inclusive, meaning) in _NUMBERS.items():
        v = b[field]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= low if inclusive else v > low)
        if not ok:
            raise bad(field, f"a finite number {'>=' if inclusive else '>'} {low} ({meaning})")
    if b.get("probe_grid") is not None and (not isinstance(b["probe_grid"], int) or isinstance(b["probe_grid"], bool)
                                            or b["probe_grid"] < 1):
        raise bad("probe_grid", "null or an integer >= 1 (the side of the pooled map the classifier also reads)")
    for field, low in _INTS.items():
        if field in b and (not isinstance(b[field], int) or isinstance(b[field], bool) or b[field] < low):
            raise bad(field, f"an integer >= {low}")
    if b["rule"] not in (*RULES, "bp"):
        raise bad("rule", f"one of {(*RULES, 'bp')}")
    if b.get("bias") and b["rule"] not in ("softhebb", "soft"):
        raise bad("bias", "false with rule " + repr(b["rule"]) + " (a plastic bias needs the soft competition)")
    if b["rule"] == "hardkrotov" and b["rank"] > b["out"] // b.get("groups", 1):
        raise bad("rank", f"at most the {b['out'] // b.get('groups', 1)} neurons that compete (rule hardkrotov)")
    if b["lr_schedule"] not in SCHEDULES:
        raise bad("lr_schedule", f"one of {SCHEDULES}")
    if "padding_mode" in b and b["padding_mode"] not in PADDING_MODES:
        raise bad("padding_mode", f"one of {PADDING_MODES}")
    for field in ("bn", "pre_triangle", "bias"):
        if field in b and not isinstance(b[field], bool):
            raise bad(field, "true or false")
    for field in ("activation", "pool"):
        if b.get(field) is not None and not isinstance(b[field], str):
            raise bad(field, "a string or null")
    try:
        _parse_activation(b["activation"])
        if b.get("pool") is not None:
            _, k, st, p = pool_params(b["pool"])
            if k < 1 or st < 1 or not 0 <= p <= k // 2:
                raise PresetError(f"pool kernel and stride must be >= 1 and padding between 0 and half the kernel, "
                                  f"got {b['pool']!r}")
    except (PresetError, ValueError) as e:
        raise PresetError(f"{where}: {e}") from None


def pool_params(pool: str) -> tuple[str, int, int, int]:
    try:
        kind, k, s, p = pool.split("_")
        k, s, p = int(k), int(s), int(p)
    except ValueError:
        raise PresetError(f"pool must look like 'max_4_2_1' (type_kernel_stride_padding), got {pool!r}") from None
    if kind not in ("max", "avg"):
        raise PresetError(f"pool type must be 'max' or 'avg', got {kind!r} in {pool!r}")
    return kind, k, s, p


def _parse_pool(pool: str | None) -> nn.Module | None:
    if pool is None:
        return None
    kind, k, s, p = pool_params(pool)
    return MaxPool2d(k, s, p) if kind == "max" else AvgPool2d(k, s, p)


def _parse_activation(act: str | None) -> nn.Module | None:
    if act is None:
        return None
    name, _, param = act.partition("_")
    if name == "triangle":
        return Triangle(float(param) if param else 1.0)
    if name == "relu":
        return nn.ReLU()
    if name == "softmax":
        return ChannelSoftmax(float(param) if param else 1.0)
    raise PresetError(f"activation must be triangle[_P], relu or softmax[_B], got {act!r}")


def _conv_out(n: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def block_output_shape(block: dict, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape after one resolved block, computed without building it (big presets stay cheap)."""
    if block["type"] == "linear":
        return (block["out"],)
    if len(in_shape) != 3:
        raise PresetError(f"a conv block needs a (C, H, W) input, got shape {in_shape}")
    c, h, w = in_shape
    if c % block["groups"] or block["out"] % block["groups"]:
        raise PresetError(f"groups={block['groups']} must divide the block's input channels ({c}) and 'out' ({block['out']})")
    h, w = (_conv_out(n, block["kernel"], block["stride"], block["padding"], block["dilation"]) for n in (h, w))
    if block["pool"]:
        _, k, s, p = pool_params(block["pool"])
        h, w = (_conv_out(n, k, s, p) for n in (h, w))
    if h <= 0 or w <= 0:
        raise PresetError(f"input of shape {in_shape} is too small for this block: its output would be {h}×{w}")
    return (block["out"], h, w)


def feature_shapes(preset: dict, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Output shape of every hidden block (see ``probe_inputs`` for what the classifier reads)."""
    shapes, shape = [], tuple(in_shape)
    for i, b in enumerate(preset["blocks"]):
        try:
            shape = block_output_shape(b, shape)
        except PresetError as e:
            raise PresetError(f"preset {preset.get('name', '?')!r} on input {tuple(in_shape)}, block {i}: {e}") from None
        shapes.append(shape)
    return shapes


def probe_inputs(preset: dict, in_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(block index, feature count) of every block the classifier reads, in the order they are concatenated: the
    blocks with a ``probe_grid`` (channels × grid²), then the last block (its whole output)."""
    shapes = feature_shapes(preset, in_shape)
    if not shapes:
        return [(-1, math.prod(in_shape))]
    taps = [(i, shapes[i][0] * b["probe_grid"] ** 2) for i, b in enumerate(preset["blocks"]) if b.get("probe_grid")]
    return taps + [(len(shapes) - 1, math.prod(shapes[-1]))]


class Block(nn.Module):
    """[BatchNorm] → layer → [activation] → [pool]. ``pre`` and ``post`` are exposed so that the
    Hebbian phase can stop right after ``layer`` when training it."""

    def __init__(self, cfg: dict, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        pre: list[nn.Module] = []
        if cfg["type"] == "conv":
            c = in_shape[0]
            if cfg["bn"]:
                pre.append(nn.BatchNorm2d(c, affine=False))
            common = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"],
                          padding_mode=cfg["padding_mode"])
            if cfg["rule"] == "bp":
                self.layer: nn.Module = nn.Conv2d(c, cfg["out"], cfg["kernel"], bias=False, **common)
            else:
                self.layer = HebbianConv2d(c, cfg["out"], cfg["kernel"], **common, **self._hebb_args(cfg), pre_triangle=cfg["pre_triangle"])
        else:
            n = 1
            for s in in_shape:
                n *= s
            if cfg["bn"]:  # per channel on images (the original's BN2d before the flatten), per feature otherwise
                pre.append(nn.BatchNorm2d(in_shape[0], affine=False) if len(in_shape) == 3 else nn.BatchNorm1d(n, affine=False))
            pre.append(nn.Flatten())
            self.layer = nn.Linear(n, cfg["out"], bias=False) if cfg["rule"] == "bp" else HebbianLinear(n, cfg["out"], **self._hebb_args(cfg))
        self.pre = nn.Sequential(*pre)
        act, pool = _parse_activation(cfg["activation"]), _parse_pool(cfg.get("pool"))
        if isinstance(act, Triangle) and act.power != 1.0 and isinstance(pool, nn.MaxPool2d):
            post = [Triangle(1.0), pool, Power(act.power)]  # the pow on the pooled map: see Power
        else:
            post = [m for m in (act, pool) if m is not None]
        self.post = nn.Sequential(*post)

    @staticmethod
    def _hebb_args(cfg: dict) -> dict:
        return {**{f: cfg[f] for f in HEBBIAN_FIELDS}, "init": "normal" if cfg["bn"] else "uniform"}

    @property
    def hebbian(self) -> bool:
        return isinstance(self.layer, HebbianLayer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.layer(self.pre(x)))


class SoftHebbNet(nn.Module):
    """Hidden blocks (Hebbian or backprop) followed by a dropout + linear classifier."""

    def __init__(self, preset: dict, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.preset, self.in_shape, self.num_classes = preset, tuple(in_shape), num_classes
        shapes = feature_shapes(preset, in_shape)
        self.blocks = nn.ModuleList(Block(b, s) for b, s in zip(preset["blocks"], [tuple(in_shape)] + shapes[:-1]))
        self.feature_shape = shapes[-1] if shapes else tuple(in_shape)
        self.probe_grids = {i: b["probe_grid"] for i, b in enumerate(preset["blocks"]) if b.get("probe_grid")}
        self.mirror = preset["classifier"]["mirror"]
        if self.mirror and len(self.in_shape) != 3:
            raise PresetError(f"preset {preset.get('name', '?')!r} classifier: 'mirror' flips images left-right, so it "
                              f"needs (channels, height, width) inputs, got input shape {self.in_shape}")
        n_features = sum(n for _, n in probe_inputs(preset, in_shape))
        self.dropout = Dropout(preset["classifier"]["dropout"])
        self.classifier = nn.Linear(n_features, num_classes)

    @property
    def device(self) -> torch.device:
        """Where the model lives; images may stay (uint8) elsewhere and move one batch at a time."""
        return self.classifier.weight.device

    @property
    def num_features(self) -> int:
        return self.classifier.in_features

    def hebbian_block_indices(self) -> list[int]:
        return [i for i, b in enumerate(self.blocks) if b.hebbian]

    def features(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Output of the first ``depth`` blocks (all of them by default)."""
        for block in self.blocks[:depth]:
            x = block(x)
        return x

    def readout(self, x: torch.Tensor, apply: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
        """What the classifier reads, flattened: the blocks' ``probe_grid`` maps, then the last block's output;
        with ``mirror``, the mean of those of ``x`` and of ``x`` mirrored left-right (a fixed, label-free feature map:
        the classes of natural images do not change in a mirror, so the probe need not learn both orientations).
        ``apply(block, x)`` runs one block (default ``block(x)``; feature extraction picks memory layouts)."""
        if self.mirror:
            return (self._read(x, apply) + self._read(x.flip(-1), apply)) * 0.5  # not in place: gradients may flow
        return self._read(x, apply)

    @property
    def reads_last_block_only(self) -> bool:
        """Whether the classifier reads just the last block's output of ``x`` (no ``probe_grid``, no ``mirror``)."""
        return not self.probe_grids and not self.mirror

    def _read(self, x: torch.Tensor, apply: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        parts = []
        for i, block in enumerate(self.blocks):
            x = block(x) if apply is None else apply(block, x)
            if i in self.probe_grids:
                parts.append(F.adaptive_avg_pool2d(x, self.probe_grids[i]).flatten(1))
        return torch.cat([*parts, x.flatten(1)], 1) if parts else x.flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.readout(x))


def build_model(preset: str | dict, in_shape: tuple[int, int, int], num_classes: int, seed: int | None = None) -> SoftHebbNet:
    """Build a network from a preset name or a preset dict; ``seed`` fixes the initial weights."""
    spec = get_preset(preset) if isinstance(preset, str) else resolve_preset(preset)
    if seed is not None:
        torch.manual_seed(seed)
    return SoftHebbNet(spec, in_shape, num_classes)
