"""``softhebb train``, ``softhebb eval`` and ``softhebb presets``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import distributed
from ..config import RunConfig, default_preset
from ..data import DATASETS
from ..network import get_preset, list_presets
from ..rundir import RunError
from ..run import evaluate_run, run, run_name
from .args import HelpFormatter, add_common, add_config_options, config_from_args, key_value, positive_int

# --set fills block_overrides; --preset's default depends on the dataset (config.DEFAULT_PRESET)
_NOT_GENERATED = ("block_overrides",)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``eval`` and ``presets`` on the main parser's subcommands."""
    t = sub.add_parser("train", help="Hebbian phase + linear probe + test accuracy; writes a run directory",
                       formatter_class=HelpFormatter,
                       description="Train the Hebbian layers of a preset without labels (one epoch by default), "
                       "then a dropout + linear classifier on the frozen features, and report test accuracy.")
    add_config_options(t, RunConfig, skip=_NOT_GENERATED)
    t.add_argument("--set", dest="block_sets", type=key_value, action="append", default=None, metavar="FIELD=VALUE",
                   help="override a field of every Hebbian block (repeatable), e.g. --set t_invert=0.5 --set rule=soft")
    add_common(t, "data_dir")
    t.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<preset>-s<seed>; with options "
                   "other than the dataset's protocol, runs/<dataset>-<preset>-<digest of the options>-s<seed>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_common(t, "threads", "progress")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="checkpoint every N Hebbian batches and after every probe, backprop or hybrid epoch (0 = never)")
    t.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its checkpoint "
                   "(same options as when it started); reaches the same weights as an uninterrupted run")
    t.set_defaults(handler=train)

    e = sub.add_parser("eval", help="test accuracy of a saved run", formatter_class=HelpFormatter)
    e.add_argument("run_dir", help="a run directory written by `softhebb train`")
    e.add_argument("--dataset", default=None, choices=sorted(DATASETS), help="dataset to test on (default: the run's own)")
    add_common(e, "data_dir")
    e.add_argument("--limit", type=positive_int, default=None, help="evaluate on a seeded subset of N test images")
    e.add_argument("--device", default="auto", help=RunConfig.__dataclass_fields__["device"].metadata["help"])
    e.set_defaults(handler=evaluate)

    pr = sub.add_parser("presets", help="list the network presets")
    pr.add_argument("name", nargs="?", help="show one preset in full")
    pr.set_defaults(handler=presets)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of a ``train`` command line; the preset, when not given, is the dataset's default."""
    dataset = args.dataset or RunConfig.dataset  # the dataclass's default, not a copy of it
    return config_from_args(RunConfig, args, preset=args.preset or default_preset(dataset),
                            block_overrides=dict(args.block_sets) if args.block_sets else None)


def train(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    out = Path(args.out or Path("runs") / run_name(cfg, short_if_default=True))
    try:
        par = distributed.init_from_env(cfg.device)  # under torchrun: join the group; rank 0 alone writes and prints
    except ValueError as e:
        raise RunError(str(e)) from None
    try:
        result = run(cfg, out, args.data_dir, overwrite=args.overwrite, progress=not args.no_progress,
                     echo=par is None or par.rank == 0, resume=args.resume, checkpoint_every=args.checkpoint_every)
    finally:
        distributed.shutdown()
    if par is None or par.rank == 0:
        print(f"test accuracy {result['test_acc']:.2f} %  ({result['preset']} on {result['dataset']}, seed {result['seed']}); "
              f"wall {result['seconds']['total']:.0f} s; run directory {out}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    print(json.dumps(evaluate_run(args.run_dir, args.dataset, args.data_dir, args.device, args.limit), indent=2))
    return 0


def presets(args: argparse.Namespace) -> int:
    if args.name:
        print(json.dumps(get_preset(args.name), indent=2))
    else:
        for name in list_presets():
            print(f"{name:34s} {get_preset(name).get('description', '')}")
    return 0
