"""What determines a run: ``RunConfig``, the datasets' protocols and the choices its fields take.

The fields' ``metadata["help"]`` (and ``"choices"``, ``"metavar"``) document each option once: the
command line (``softhebb.cli.args``) builds one ``--field-name`` option per field from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .augment import BATCH_AUGMENTATIONS
from .baselines import BP_MODES, RANDOM_BN
from .batching import PRECISIONS, Augment
from .data import DATASETS, Protocol
from .hebbian import MODES
from .network import PROTOCOL_FIELDS, feature_shapes, get_preset, resolve_preset
from .rundir import RunError

RUN_MODES = (*MODES, "hybrid")
PROTOCOLS: dict[str, Protocol] = {name: info.protocol for name, info in DATASETS.items()}
IN_MEMORY = tuple(name for name, p in PROTOCOLS.items() if p.in_memory)
PROBE_AUGMENTS = ("none", "dataset", *BATCH_AUGMENTATIONS)

# A preset is built for one input size, so a dataset's default network follows from its image shape:
# the paper's deepest SoftHebb CNN for that size (MNIST-sized images: ours, the paper ships none).
_PRESET_FOR_SHAPE = {(1, 28, 28): "SoftHebbCnnMNIST", (3, 32, 32): "4SoftHebbCnnCIFAR", (3, 96, 96): "5SoftHebbCnnSTL",
                     (3, 160, 160): "6SoftHebbCnnImNet"}
DEFAULT_PRESET: dict[str, str] = {name: _PRESET_FOR_SHAPE[info.shape] for name, info in DATASETS.items()
                                  if info.shape in _PRESET_FOR_SHAPE}


def default_preset(dataset: str) -> str:
    """The network a run on ``dataset`` uses when no preset is named (``DEFAULT_PRESET``)."""
    if dataset not in DEFAULT_PRESET:
        raise RunError(f"no default preset for {dataset}; pass --preset")
    return DEFAULT_PRESET[dataset]


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A field with its default and the documentation the CLI shows for it."""
    return field(default=default, metadata={"help": help, **meta})


_PROBE_AUGMENT_HELP = (
    "train the probe on augmented images, recomputing the features every epoch: dataset = its own "
    "(crop + flip; RandomResizedCrop + flip for image folders), shift = random translation by up to 2 px, "
    "affine = random rotation (±10°), scaling (0.9-1.1) and translation (±2 px), "
    "noise = + N(0, 1) (the original's MNIST augmentation). Default: the dataset's protocol "
    "(none on CIFAR and MNIST, dataset on STL-10, ImageNette, ImageNet)")


# Field names, order and defaults are part of every run directory's name (``run.run_name`` digests
# ``dataclasses.asdict``): changing one renames existing runs. New fields go last, into ``run.ADDED_FIELDS``.
@dataclass
class RunConfig:
    """Everything that determines a run. Defaults are the paper's CIFAR-10 protocol."""

    preset: str = _opt("4SoftHebbCnnCIFAR", "network preset (see `softhebb presets`); default: "
                       + ", ".join(f"{k}: {v}" for k, v in DEFAULT_PRESET.items()))
    dataset: str = _opt("cifar10", "dataset to train and test on", choices=tuple(sorted(PROTOCOLS)))
    mode: str = _opt("successive", "successive: train Hebbian layers one after another (the paper); simultaneous: "
                     "all in one pass; hybrid: Hebbian updates and classifier steps from the same batches, for "
                     "--probe-epochs at --probe-batch, tested after every epoch (the original's 'simultaneous' mode, "
                     "Fig. B.3.B; --hebb-batch and --eval-every do not apply)", choices=RUN_MODES)
    seed: int = _opt(0, "sets the initial weights, data order and dropout masks")
    hebb_epochs: int = _opt(1, "Hebbian epochs per layer (0 = random untrained features)")
    # None (the next three): the preset's protocol if it has one, else the dataset's (PROTOCOLS); see __post_init__
    hebb_batch: int | None = _opt(None, "Hebbian batch size (default: the preset's protocol if it names one, e.g. 32 "
                                  "for the MNIST MLPs, else the dataset's: 10; 32 on STL-10)")
    probe_epochs: int | None = _opt(None, "linear-probe epochs (default: the preset's protocol if it names one, e.g. 10 "
                                    "for the MNIST MLPs, else the dataset's: 50; STL-10 100; ImageNette/ImageNet 200)")
    probe_batch: int | None = _opt(None, "linear-probe batch size (default: the preset's protocol if it names one, "
                                   "e.g. 32 for the MNIST MLPs, else the dataset's: 64; ImageNette/ImageNet 32)")
    probe_lr: float = _opt(1e-3, "linear-probe Adam learning rate (halved on the paper's schedule)")
    eval_every: int = _opt(10, "evaluate on the test set every N probe epochs (and the last)")
    train_limit: int | None = _opt(None, "use a seeded random subset of N training images (also caps the Hebbian "
                                   "split where it is another one, e.g. STL-10's unlabeled images)")
    test_limit: int | None = _opt(None, "use a seeded random subset of N test images")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    precision: str = _opt("fp32", "bf16: Hebbian phase and feature extraction under bf16 autocast (updates "
                          "accumulate in fp32)", choices=PRECISIONS)
    block_overrides: dict | None = _opt(None, "fields set on every Hebbian block, e.g. {'t_invert': 0.5, 'rule': 'soft'}")
    random_bn: str = _opt("identity", "with --hebb-epochs 0: keep the hidden BatchNorms at identity (the paper's "
                          "Random) or set them from the data", choices=RANDOM_BN)
    bp_mode: str = _opt("end-to-end", "backprop presets (*Cnn*): train all layers together, or one block at a time as "
                        "the original's commands did; --probe-epochs/--probe-batch/--probe-lr set its epochs, batch "
                        "and Adam rate", choices=BP_MODES)
    # never changes results, so run names leave it out
    workers: int | None = _opt(None, "processes decoding image-folder datasets (ImageNette, ImageNet); default: up to 8")
    probe_augment: str | None = _opt(None, _PROBE_AUGMENT_HELP, choices=PROBE_AUGMENTS)
    probe_dropout: float | None = _opt(None, "dropout on the classifier's input while it trains (the probe, or BP "
                                       "presets' training; default: the preset's, 0.5 on the CNNs)")
    # each probe epoch draws one view per image (features.feature_views) instead of running the network every epoch
    probe_views: int = _opt(1, "with --probe-augment (or an augmented protocol): compute the features of K augmented "
                            "copies of every training image once, and train each probe epoch on one of them per image, "
                            "instead of recomputing the features every epoch. K forward passes instead of one per "
                            "epoch, K times the features' memory (default: 1, recompute every epoch)", metavar="K")

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, expected: str) -> None:
            if not cond:
                raise RunError(f"config field {name!r} = {getattr(self, name)!r}: expected {expected}")

        need(self.dataset in PROTOCOLS, "dataset", f"one of {sorted(PROTOCOLS)}")
        preset_protocol = get_preset(self.preset).get("protocol", {})
        for f in PROTOCOL_FIELDS:
            if getattr(self, f) is None:
                setattr(self, f, preset_protocol.get(f, getattr(self.protocol, f)))
        need(self.workers is None or (isinstance(self.workers, int) and self.workers >= 0), "workers",
             "None or an integer >= 0")
        need(self.probe_augment is None or self.probe_augment in PROBE_AUGMENTS, "probe_augment",
             f"None or one of {PROBE_AUGMENTS}")
        if self.probe_augmentation == self.protocol.probe_augment:
            self.probe_augment = None  # the protocol's own: the same run, under the same name
        need(self.mode in RUN_MODES, "mode", f"one of {RUN_MODES}")
        for f in ("hebb_epochs", "probe_epochs"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 0, f, "an integer >= 0")
        for f in ("hebb_batch", "probe_batch", "eval_every"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "an integer > 0")
        need(isinstance(self.probe_lr, (int, float)) and math.isfinite(self.probe_lr) and self.probe_lr > 0, "probe_lr",
             "a finite number > 0 (the paper uses 1e-3)")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0, "seed", "an integer >= 0")
        for f in ("train_limit", "test_limit"):
            v = getattr(self, f)
            need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0), f, "None or an integer > 0")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", "auto, cpu or cuda[:N]")
        need(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        need(self.random_bn in RANDOM_BN, "random_bn", f"one of {RANDOM_BN}")
        need(self.bp_mode in BP_MODES, "bp_mode", f"one of {BP_MODES}")
        need(self.block_overrides is None or isinstance(self.block_overrides, dict), "block_overrides",
             "None or a dict of block fields")
        self._check_preset(need)

    def _check_preset(self, need: Callable[[bool, str, str], None]) -> None:
        """The checks that need the preset: probe dropout, block overrides, views, input shape, hybrid mode."""
        need(self.probe_dropout is None or (isinstance(self.probe_dropout, (int, float))
                                            and not isinstance(self.probe_dropout, bool) and 0 <= self.probe_dropout < 1),
             "probe_dropout", "None or a number in [0, 1)")
        if self.probe_dropout is not None:
            self.probe_dropout = float(self.probe_dropout)  # 0 and 0.0: one run, one name
            if self.probe_dropout == get_preset(self.preset)["classifier"]["dropout"]:
                self.probe_dropout = None  # the preset's own: the same run, under the same name
        overrides = self.block_overrides or {}
        need("type" not in overrides and overrides.get("rule") != "bp", "block_overrides",
             "fields of the Hebbian blocks other than 'type', with a Hebbian rule (backprop has its own *Cnn* presets)")
        preset = self.resolved_preset()  # unknown preset or bad override → PresetError
        backprop = {b["rule"] == "bp" for b in preset["blocks"]}
        if len(backprop) > 1:
            raise RunError(f"preset {preset['name']!r} mixes backprop ('rule': 'bp') and Hebbian blocks; "
                           "a run trains either all blocks by backprop or all by the Hebbian rule")
        need(isinstance(self.probe_views, int) and not isinstance(self.probe_views, bool) and self.probe_views >= 1,
             "probe_views", "an integer >= 1")
        need(self.probe_views == 1 or (self.probe_augmentation and True not in backprop), "probe_views",
             "1 here: views are augmented copies of the probe's features, so they need probe augmentation "
             "(--probe-augment) and a Hebbian preset")
        feature_shapes(preset, DATASETS[self.dataset].shape)  # bad groups or too small an input → PresetError here
        if preset["classifier"]["rule"] == "hebbian":
            need(self.mode != "hybrid" and not self.probe_augmentation and True not in backprop, "mode",
                 "successive or simultaneous, without probe augmentation, with a Hebbian preset: the supervised "
                 "Hebbian classifier trains on features computed once")
        if self.mode == "hybrid":  # train_hybrid: images in memory, fp32, Hebbian blocks that learn from them alone
            need(self.dataset in IN_MEMORY and not self.probe_augmentation and self.precision == "fp32"
                 and self.hebb_epochs > 0 and self.probe_epochs > 0 and True not in backprop
                 and not preset["classifier"]["mirror"], "mode",
                 f"successive or simultaneous for this run: hybrid needs an in-memory dataset ({', '.join(IN_MEMORY)}), "
                 "no probe augmentation, fp32, a Hebbian preset without a mirrored classifier, hebb_epochs > 0 and "
                 "probe_epochs > 0 (it runs probe_epochs epochs at probe_batch)")

    @property
    def protocol(self) -> Protocol:
        return PROTOCOLS[self.dataset]

    @property
    def probe_augmentation(self) -> Augment:
        """What the probe (or BP) trains on: ``batching.Augment``, from ``probe_augment`` or the protocol."""
        if self.probe_augment is None:
            return self.protocol.probe_augment
        return {"none": False, "dataset": True}.get(self.probe_augment, self.probe_augment)

    @property
    def backprop(self) -> bool:
        return any(b["rule"] == "bp" for b in self.resolved_preset()["blocks"])

    def resolved_preset(self) -> dict:
        """The preset with ``block_overrides`` (Hebbian blocks) and ``probe_dropout`` applied, validated."""
        preset = get_preset(self.preset)
        if self.probe_dropout is not None:
            preset["classifier"] = {**preset["classifier"], "dropout": self.probe_dropout}
        if not self.block_overrides:
            return preset
        blocks = [{**b, **self.block_overrides} if b["rule"] != "bp" else b for b in preset["blocks"]]
        return resolve_preset({**preset, "blocks": blocks, "name": preset["name"]})


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else the CPU; a CUDA device on a machine without one is a RunError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
    return torch.device(device)
