"""``softhebb search``: an Optuna study of the per-layer Hebbian hyper-parameters (``softhebb.search``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import IN_MEMORY
from ..hebbian import MODES
from ..network import get_preset
from ..search import PARAMS, PRUNERS, SearchConfig, search
from .args import HelpFormatter, add_common, add_config_options, config_from_args, positive_int


def _names(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p)


# What the command line says about each SearchConfig field (the library class carries no CLI text);
# the defaults stay SearchConfig's.
_SPECS = {
    "dataset": {"help": "dataset to search on", "choices": sorted(IN_MEMORY)},
    "preset": {"help": "network preset whose values centre the search"},
    "params": {"help": f"comma-separated subset of {','.join(PARAMS)}", "type": _names},
    "val_fraction": {"help": "fraction of the training set that validates"},
    "train_limit": {"help": "search on a seeded subset of N training images (before the split)"},
    "seed": {"help": "model init, data order, split and sampler seed"},
    "mode": {"help": "Hebbian training mode of every trial", "choices": MODES},
    "hebb_epochs": {"help": "Hebbian epochs per layer in every trial"},
    "hebb_batch": {"help": "Hebbian batch size"},
    "probe_epochs": {"help": "probe epochs per trial (pruning may stop earlier)"},
    "probe_batch": {"help": "linear-probe batch size"},
    "probe_lr": {"help": "linear-probe Adam learning rate"},
    "pruner": {"help": "how unpromising trials are stopped early", "choices": PRUNERS},
    "trials": {"help": "finished (completed or pruned) trials to reach in total", "type": positive_int},
    "timeout": {"help": "stop starting new trials after this many seconds"},
    "device": {"help": "auto, cpu, cuda or cuda:N"},
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``search`` on the main parser's subcommands."""
    s = sub.add_parser("search", help="Optuna search of per-layer Hebbian hyper-parameters on a 20 %% validation split",
                       formatter_class=HelpFormatter,
                       description="Search t_invert, lr, power_lr and the triangle power of every Hebbian layer with "
                       "Optuna (TPE, median pruning on the per-epoch validation accuracy of the probe). The test set is "
                       "never used. Re-run the same command to continue the study.")
    add_config_options(s, SearchConfig, specs=_SPECS)
    s.add_argument("--study-name", default=None, help="study name (default: <dataset>-<preset>)")
    s.add_argument("--storage", default=None, help="database URL, e.g. sqlite:///search.db or postgresql://user@host/db "
                   "to share a study between machines (default: study.db in --out)")
    s.add_argument("--out", default=None, help="folder for study.db, trials.csv, trials.md, best_preset.json "
                   "(default: runs/search-<study>)")
    add_common(s, "data_dir", "threads")
    s.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(SearchConfig, args)
    name = args.study_name or f"{cfg.dataset}-{get_preset(cfg.preset)['name']}"
    out = Path(args.out or f"runs/search-{name}")
    study = search(cfg, out, name, args.storage, args.data_dir)
    complete = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if complete:
        best = max(complete, key=lambda t: t.value)
        print(f"best validation accuracy {best.value:.2f} % (trial {best.number}); tables in {out}/trials.md, "
              f"preset in {out}/best_preset.json")
    return 0
