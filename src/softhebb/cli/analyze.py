"""``softhebb analyze``: figures and the numbers behind them for run directories (``softhebb.analysis.report``)."""

from __future__ import annotations

import argparse

from ..analysis.report import SIGMAS, WHAT, analyze
from ..analysis.robustness import LOSSES
from ..data import DATASETS
from .args import HelpFormatter, add_common, call_with_args, defaults_of, positive_int


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def _strings(s: str) -> list[str]:
    return s.split(",")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``analyze``; every option's dest is a parameter of ``report.analyze``, and its default analyze's."""
    d = defaults_of(analyze)
    a = sub.add_parser("analyze", help="figures + numbers: filters, receptive fields, dynamics, representations, robustness",
                       formatter_class=HelpFormatter,
                       description="Write PNG figures and the numbers behind them (CSV/JSON) for one or more run "
                       "directories. filters and robustness compare all runs in one figure; the other analyses write "
                       "one sub-folder per run when several runs are given.")
    a.add_argument("what", choices=[*WHAT, "all"], help="which analysis")
    a.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `softhebb train`")
    a.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis for one run, else ./analysis)")
    a.add_argument("--labels", type=_strings, default=None, help="comma-separated names for the runs (default: folder names)")
    add_common(a, "data_dir")
    a.add_argument("--dataset", default=None, choices=sorted(DATASETS), help="dataset to analyse on (default: each run's own)")
    a.add_argument("--limit", type=positive_int, default=None,
                   help="images to use (seeded subset; default: dynamics 5000 train, representations 2000 and robustness 1000 test)")
    a.add_argument("--seed", type=int, default=d["seed"], help="image subset, neuron choice, noise and attack starts")
    a.add_argument("--device", default=d["device"], help="cpu, cuda or cuda:N")
    add_common(a, "threads")
    a.add_argument("--neurons", type=positive_int, default=d["neurons"], help="receptive-fields: neurons per block")
    a.add_argument("--am-steps", type=int, default=d["am_steps"], help="receptive-fields: activation-maximisation steps")
    a.add_argument("--budget", type=float, default=d["budget"],
                   help="receptive-fields: L2 budget as an RMS pixel change from grey")
    a.add_argument("--every", type=int, default=None, help="dynamics: record every N batches (default: ~200 records per block)")
    a.add_argument("--no-schedules", dest="schedules", action="store_false",
                   help="dynamics: skip the radius vs linear-decay comparison")
    a.add_argument("--schedule-blocks", type=int, default=d["schedule_blocks"],
                   help="dynamics: blocks trained in the schedule comparison")
    a.add_argument("--depths", type=_ints, default=None, help="representations: comma-separated block indices (default: all)")
    a.add_argument("--top-neurons", type=positive_int, default=d["top_neurons"],
                   help="representations: neurons shown with top patches")
    a.add_argument("--top-k", type=positive_int, default=d["top_k"], help="representations: patches per neuron")
    a.add_argument("--no-tsne", dest="tsne", action="store_false", help="representations: PCA only")
    a.add_argument("--sigmas", type=_floats, default=None, help=f"robustness: Gaussian σ list (default {SIGMAS})")
    a.add_argument("--eps-linf", type=_floats, default=None, help="robustness: L∞ ε list (default by dataset)")
    a.add_argument("--eps-l2", type=_floats, default=None, help="robustness: L2 ε list (default by dataset)")
    a.add_argument("--pgd-steps", type=int, default=d["pgd_steps"], help="robustness: PGD iterations")
    a.add_argument("--attack-loss", default=d["attack_loss"], choices=LOSSES,
                   help="robustness: loss the attacks ascend (cross-entropy saturates on SoftHebb's large logits)")
    a.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    for f in call_with_args(analyze, args):
        print(f)
    return 0
