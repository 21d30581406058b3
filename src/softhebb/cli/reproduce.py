"""``softhebb reproduce``: a figure or table of the paper as a resumable grid of runs (``softhebb.reproduce``)."""

from __future__ import annotations

import argparse

from .. import reproduce as experiments
from .args import HelpFormatter, add_common, key_value, positive_int


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``reproduce`` on the main parser's subcommands."""
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
    add_common(r, "data_dir")
    r.add_argument("--option", dest="overrides", type=key_value, action="append", default=None, metavar="FIELD=VALUE",
                   help="override a run option for every run, e.g. --option probe_epochs=10 --option train_limit=10000 "
                   "(a non-paper protocol; such runs get their own directories)")
    r.add_argument("--summary-only", action="store_true", help="run nothing; tabulate the runs that have finished")
    r.add_argument("--jobs", type=positive_int, default=1, help="runs at once, each in its own process, spread over the visible "
                   "GPUs (a GPU is mostly idle with one run at batch 10); CPU threads are shared among them, and "
                   "on a CPU a different thread count can change results in the last digits")
    add_common(r, "threads", "progress")
    r.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    if args.list or not args.experiment:
        print(experiments.list_experiments())
        return 0
    experiments.reproduce(args.experiment, args.out, args.dataset, args.seeds, args.data_dir, dict(args.overrides or []),
                          progress=not args.no_progress, summary_only=args.summary_only,
                          methods=args.methods.split(",") if args.methods else None, jobs=args.jobs)
    return 0
