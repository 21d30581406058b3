"""Shared pieces of the command line: the help formatter, argument types, and options made from dataclass fields.

``add_config_options`` / ``config_from_args`` turn every field of a config dataclass (``RunConfig``,
``SearchConfig``) into a ``--field-name`` option and back, so a field is declared, defaulted and
documented once, in its dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from typing import Any, Callable, Mapping, TypeVar

from ..data import DATA_ENV

T = TypeVar("T")

DATA_DIR_HELP = f"data root (default: ${DATA_ENV}, else ~/.cache/softhebb/data)"
THREADS_HELP = "CPU threads (default: PyTorch's choice)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends an option's default unless its help already explains it or there is none to show (flags:
    ``--no-tsne``'s default True says nothing the flag's name does not)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.nargs == 0 or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
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


def key_value(text: str) -> tuple[str, object]:
    """argparse type of ``--set`` / ``--option``: ``FIELD=VALUE``, the value read as JSON where it parses."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE (e.g. t_invert=0.5), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string such as rule=soft


def add_common(parser: argparse.ArgumentParser, *names: str) -> None:
    """Options several commands share, with one wording: ``data_dir``, ``threads``, ``progress``."""
    if "data_dir" in names:
        parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    if "threads" in names:
        parser.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    if "progress" in names:
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


_SCALARS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def _scalar_type(annotation: Any) -> Callable[[str], Any]:
    """``int``, ``float`` or ``str`` from a field's annotation (a string under ``from __future__ import annotations``)."""
    names = [t.strip() for t in str(getattr(annotation, "__name__", annotation)).split("|") if t.strip() != "None"]
    if len(names) != 1 or names[0] not in _SCALARS:
        raise TypeError(f"no command-line type for a field annotated {annotation!r}; give one in its spec")
    return _SCALARS[names[0]]


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def add_config_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                       specs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls`` (except ``skip``).

    Help, choices and metavar come from the field's ``metadata``, updated by ``specs[name]`` (which may
    also give a ``type``; otherwise the field's annotation decides). Every option defaults to None,
    meaning "the dataclass's default", which the help shows, so ``config_from_args`` passes only what
    the command line set and the defaults stay in the dataclass.
    """
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        spec = {**f.metadata, **(specs or {}).get(f.name, {})}
        text = spec["help"]  # KeyError: a field without documentation is a bug in its dataclass or spec
        if "default" not in text and f.default not in (None, dataclasses.MISSING):
            text += f" (default: {_shown(f.default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": text,
                                  "type": spec.get("type") or _scalar_type(f.type)}
        if "choices" in spec:
            kwargs["choices"] = list(spec["choices"])
        if "metavar" in spec:
            kwargs["metavar"] = spec["metavar"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_args(cls: Callable[..., T], args: argparse.Namespace, **values: Any) -> T:
    """``cls`` from the options ``add_config_options`` made: the fields set on the command line, then ``values``."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**{**given, **values})


def call_with_args(fn: Callable[..., T], args: argparse.Namespace, **values: Any) -> T:
    """``fn(**...)`` with every parameter that ``args`` has an option of the same name (dest) for, then ``values``."""
    params = inspect.signature(fn).parameters
    return fn(**{**{k: v for k, v in vars(args).items() if k in params}, **values})


def defaults_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The parameter defaults of ``fn``: the options that feed it show its own defaults, not copies."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}
