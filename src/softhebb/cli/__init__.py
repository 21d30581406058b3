"""Command line: ``softhebb train | eval | presets | reproduce | search | analyze``.

One module per command group registers its subcommands (``add_parsers``) and their handlers; the
library modules hold no argparse code and never import this package.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..data import DatasetError
from ..network import PresetError
from ..rundir import RunError
from . import analyze, reproduce, search, train
from .args import HelpFormatter, positive_int

__all__ = ["HelpFormatter", "main", "parser", "positive_int"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softhebb", description="SoftHebb: Hebbian deep learning without feedback. "
                                "Train a network without labels, then measure it with a linear probe.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (train, reproduce, search, analyze):  # the order of `softhebb --help`
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.handler(args)
    except (DatasetError, PresetError, RunError) as e:  # the user's mistake: one line, no traceback
        print(f"softhebb: error: {e}", file=sys.stderr)
        return 2
