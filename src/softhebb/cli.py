"""Command line: ``softhebb train | eval | presets | reproduce | search | analyze``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .data import DATA_ENV, DATASETS, DatasetError
from .network import PresetError, get_preset, list_presets
from .run import PROBE_AUGMENTS, RunConfig, RunError, evaluate_run, run, run_name
from . import distributed, reproduce, search as search_cli
from .analysis import report as analysis_report

DEFAULT_PRESET = {"mnist": "SoftHebbCnnMNIST", "fashion-mnist": "SoftHebbCnnMNIST", "cifar10": "4SoftHebbCnnCIFAR",
                  "cifar100": "4SoftHebbCnnCIFAR", "stl10": "5SoftHebbCnnSTL", "imagenette": "6SoftHebbCnnImNet",
                  "imagenet": "6SoftHebbCnnImNet"}


def _block_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE (e.g. t_invert=0.5), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string such as rule=soft


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends an option's default unless its help already explains it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action) or text


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (threads, seeds, limits, jobs)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softhebb", description="SoftHebb: Hebbian deep learning without feedback. "
                                "Train a network without labels, then measure it with a linear probe.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="Hebbian phase + linear probe + test accuracy; writes a run directory",
                       formatter_class=HelpFormatter,
                       description="Train the Hebbian layers of a preset without labels (one epoch by default), "
                       "then a dropout + linear classifier on the frozen features, and report test accuracy.")
    t.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS), help="dataset to train and test on")
    t.add_argument("--preset", default=None, help="network preset (see `softhebb presets`); default: "
                   + ", ".join(f"{k}: {v}" for k, v in DEFAULT_PRESET.items()))
    t.add_argument("--mode", default="successive", choices=["successive", "simultaneous", "hybrid"],
                   help="successive: train Hebbian layers one after another (the paper); simultaneous: all in one pass; "
                   "hybrid: Hebbian updates and classifier steps from the same batches, for --probe-epochs at --probe-batch, "
                   "tested after every epoch (the original's 'simultaneous' mode, Fig. B.3.B; --hebb-batch and "
                   "--eval-every do not apply)")
    t.add_argument("--seed", type=int, default=0, help="sets the initial weights, data order and dropout masks")
    t.add_argument("--hebb-epochs", type=int, default=1, help="Hebbian epochs per layer (0 = random untrained features)")
    t.add_argument("--hebb-batch", type=int, default=None,
                   help="Hebbian batch size (default: the dataset's protocol: 10; 32 on STL-10)")
    t.add_argument("--probe-epochs", type=int, default=None,
                   help="linear-probe epochs (default: the dataset's protocol: 50; STL-10 100; ImageNette/ImageNet 200)")
    t.add_argument("--probe-batch", type=int, default=None,
                   help="linear-probe batch size (default: the dataset's protocol: 64; ImageNette/ImageNet 32)")
    t.add_argument("--probe-lr", type=float, default=1e-3, help="linear-probe Adam learning rate (halved on the paper's schedule)")
    t.add_argument("--probe-augment", default=None, choices=PROBE_AUGMENTS,
                   help="train the probe on augmented images, recomputing the features every epoch: dataset = its own "
                   "(crop + flip; RandomResizedCrop + flip for image folders), shift = random translation by up to 2 px, "
                   "affine = random rotation (±10°), scaling (0.9-1.1) and translation (±2 px), "
                   "noise = + N(0, 1) (the original's MNIST augmentation). Default: the dataset's protocol "
                   "(none on CIFAR and MNIST, dataset on STL-10, ImageNette, ImageNet)")
    t.add_argument("--probe-views", type=positive_int, default=1, metavar="K",
                   help="with --probe-augment (or an augmented protocol): compute the features of K augmented copies of "
                   "every training image once, and train each probe epoch on one of them per image, instead of "
                   "recomputing the features every epoch. K forward passes instead of one per epoch, K times the "
                   "features' memory (default: 1, recompute every epoch)")
    t.add_argument("--probe-dropout", type=float, default=None,
                   help="dropout on the classifier's input while it trains (the probe, or BP presets' "
                   "training; default: the preset's, 0.5 on the CNNs)")
    t.add_argument("--eval-every", type=int, default=10, help="evaluate on the test set every N probe epochs (and the last)")
    t.add_argument("--set", dest="block_overrides", type=_block_override, action="append", default=None, metavar="FIELD=VALUE",
                   help="override a field of every Hebbian block (repeatable), e.g. --set t_invert=0.5 --set rule=soft")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: Hebbian phase and feature extraction under bf16 autocast (updates accumulate in fp32)")
    t.add_argument("--random-bn", default="identity", choices=["identity", "data"],
                   help="with --hebb-epochs 0: keep the hidden BatchNorms at identity (the paper's Random) or set them from the data")
    t.add_argument("--bp-mode", default="end-to-end", choices=["end-to-end", "layerwise"],
                   help="backprop presets (*Cnn*): train all layers together, or one block at a time as the original's commands did; "
                   "--probe-epochs/--probe-batch/--probe-lr set its epochs, batch and Adam rate")
    t.add_argument("--train-limit", type=int, default=None, help="use a seeded random subset of N training images "
                   "(also caps the Hebbian split where it is another one, e.g. STL-10's unlabeled images)")
    t.add_argument("--test-limit", type=int, default=None, help="use a seeded random subset of N test images")
    t.add_argument("--data-dir", default=None, help=f"data root (default: ${DATA_ENV}, else ~/.cache/softhebb/data)")
    t.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<preset>-s<seed>; with options "
                   "other than the dataset's protocol, runs/<dataset>-<preset>-<digest of the options>-s<seed>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: PyTorch's choice)")
    t.add_argument("--workers", type=int, default=None,
                   help="processes decoding image-folder datasets (ImageNette, ImageNet); default: up to 8")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="checkpoint every N Hebbian batches and after every probe, backprop or hybrid epoch (0 = never)")
    t.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its checkpoint "
                   "(same options as when it started); reaches the same weights as an uninterrupted run")

    e = sub.add_parser("eval", help="test accuracy of a saved run", formatter_class=HelpFormatter)
    e.add_argument("run_dir", help="a run directory written by `softhebb train`")
    e.add_argument("--dataset", default=None, choices=sorted(DATASETS), help="dataset to test on (default: the run's own)")
    e.add_argument("--data-dir", default=None, help=f"data root (default: ${DATA_ENV}, else ~/.cache/softhebb/data)")
    e.add_argument("--limit", type=positive_int, default=None, help="evaluate on a seeded subset of N test images")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    pr = sub.add_parser("presets", help="list the network presets")
    pr.add_argument("name", nargs="?", help="show one preset in full")

    r = sub.add_parser("reproduce", help="regenerate a figure or table of the paper (resumable grid of runs)",
                       formatter_class=HelpFormatter,
                       description="Run every (dataset, method, x, seed) of a paper experiment, skipping finished runs, "
                       "then write runs.csv, a markdown table with the paper's numbers and a plot under OUT/EXPERIMENT/.")
    r.add_argument("experiment", nargs="?", help="experiment name (see --list)")
    r.add_argument("--list", action="store_true", help="list the experiments")
    r.add_argument("--dataset", action="append", default=None, help="dataset(s) of the experiment (default: its first)")
    r.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (default: the paper's, usually 4)")
    r.add_argument("--methods", default=None, metavar="M1,M2",
                   help="run only these methods, e.g. softhebb,hard,random (default: all of the experiment's)")
    r.add_argument("--out", default="runs/reproduce", help="root folder of the experiment's runs and tables")
    r.add_argument("--data-dir", default=None, help=f"data root (default: ${DATA_ENV}, else ~/.cache/softhebb/data)")
    r.add_argument("--option", dest="overrides", type=_block_override, action="append", default=None, metavar="FIELD=VALUE",
                   help="override a run option for every run, e.g. --option probe_epochs=10 --option train_limit=10000 "
                   "(a non-paper protocol; such runs get their own directories)")
    r.add_argument("--summary-only", action="store_true", help="run nothing; tabulate the runs that have finished")
    r.add_argument("--jobs", type=positive_int, default=1, help="runs at once, each in its own process, spread over the visible "
                   "GPUs (a GPU is mostly idle with one run at batch 10); CPU threads are shared among them, and "
                   "on a CPU a different thread count can change results in the last digits")
    r.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: PyTorch's choice)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")

    search_cli.add_parser(sub)  # `softhebb search`; its options live beside the search

    analysis_report.add_parser(sub)  # `softhebb analyze`; its options live beside the analyses
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "analyze":
            return analysis_report.main(args)
        if args.command == "search":
            return search_cli.main(args)
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        if args.command == "reproduce":
            if args.list or not args.experiment:
                print(reproduce.list_experiments())
                return 0
            reproduce.reproduce(args.experiment, args.out, args.dataset, args.seeds, args.data_dir,
                                dict(args.overrides or []), progress=not args.no_progress, summary_only=args.summary_only,
                                methods=args.methods.split(",") if args.methods else None, jobs=args.jobs)
            return 0
        if args.command == "presets":
            if args.name:
                print(json.dumps(get_preset(args.name), indent=2))
            else:
                for name in list_presets():
                    print(f"{name:34s} {get_preset(name).get('description', '')}")
            return 0
        if args.command == "eval":
            print(json.dumps(evaluate_run(args.run_dir, args.dataset, args.data_dir, args.device, args.limit), indent=2))
            return 0
        preset = args.preset or DEFAULT_PRESET.get(args.dataset)
        if preset is None:
            raise RunError(f"no default preset for {args.dataset}; pass --preset")
        cfg = RunConfig(preset=preset, dataset=args.dataset, mode=args.mode, seed=args.seed, hebb_epochs=args.hebb_epochs,
                        hebb_batch=args.hebb_batch, probe_epochs=args.probe_epochs, probe_batch=args.probe_batch,
                        probe_lr=args.probe_lr, eval_every=args.eval_every, train_limit=args.train_limit,
                        test_limit=args.test_limit, device=args.device, precision=args.precision,
                        block_overrides=dict(args.block_overrides) if args.block_overrides else None,
                        random_bn=args.random_bn, bp_mode=args.bp_mode, workers=args.workers,
                        probe_augment=args.probe_augment, probe_dropout=args.probe_dropout,
                        probe_views=args.probe_views)
        out = Path(args.out or Path("runs") / run_name(cfg, short_if_default=True))
        try:
            par = distributed.init_from_env(args.device)  # under torchrun: join the group; rank 0 alone writes and prints
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
    except (DatasetError, PresetError, RunError) as e:
        print(f"softhebb: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
