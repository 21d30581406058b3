"""The run directory on disk: its files, the weights and the checkpoint format.

A run directory holds:
    config.json      the resolved configuration (preset with every default filled in)
    metrics.jsonl    one JSON object per Hebbian epoch / probe epoch (hybrid runs: per batch, and per epoch)
    model.safetensors the trained weights (Hebbian weights, BatchNorm statistics, classifier)
    result.json      final test accuracy and wall times; its presence marks the run finished
    checkpoint.safetensors  while unfinished, with checkpointing on: everything needed to continue
config.json, model.safetensors, result.json and the checkpoint are written atomically (temp file +
rename), and result.json comes last, so an interrupted run never looks complete; metrics.jsonl is
an append-only log, cut back to the checkpoint's length when a run resumes.

A checkpoint is one safetensors file: the tensors (weights, BatchNorm statistics, num_updates,
win counters, Adam moments, generator and RNG states) plus a JSON header (phase, data position
stage/epoch/batch, probe epoch or backprop stage/epoch, schedule and optimiser settings, metrics
length). Nothing is ever unpickled. The Hebbian phase draws no random numbers after its seeded data
orders, so its checkpoints hold no RNG state; the probe's and backprop's hold the data-order
generator and the RNG (every rank's, for the probe).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from .network import SoftHebbNet, resolve_preset

CHECKPOINT = "checkpoint.safetensors"
RUN_FILES = ("result.json", "metrics.jsonl", "model.safetensors", "config.json", CHECKPOINT)


class RunError(RuntimeError):
    """A run directory or configuration that cannot be used as asked."""


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: changing it later, even briefly, would race with other threads creating files


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, rename over ``path``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide shared results from other users
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse to silently overwrite: a used directory is kept unless ``overwrite`` is given.

    Nothing is created here; the directory appears with the first file, after the data loaded.
    """
    if out.exists() and not out.is_dir():
        raise RunError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / "result.json").exists():
            raise RunError(f"output directory {out} already holds a finished run; choose another --out or pass --overwrite")
        raise RunError(f"output directory {out} already holds files from an unfinished run; pass --resume to continue "
                       "it (same options), --overwrite to start over, or choose another --out")
    check_writable(out)
    if out.exists():
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        remove_temp_files(out)


def check_writable(out: Path) -> None:
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f"cannot create the run directory {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"cannot write the run directory {out}: {existing} is not writable")


def remove_temp_files(out: Path) -> None:
    """Temp files of writes a kill interrupted (atomic_write and checkpoints name them .<name>.*.tmp)."""
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def save_model(model: SoftHebbNet, path: Path, config: dict) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, save(state, metadata={"softhebb_config": json.dumps(config)}))


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SoftHebbNet, dict]:
    """Rebuild a trained network from a run directory (safetensors only; nothing is unpickled)."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise RunError(f"{p} not found: {run_dir} is not a finished softhebb run directory")
    try:
        config = json.loads(cfg_path.read_text())
        model = SoftHebbNet(resolve_preset(config["preset"]), tuple(config["in_shape"]), config["num_classes"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RunError(f"{cfg_path} is not a valid run config ({type(e).__name__}: {e})") from None
    try:
        state = load_file(weights, device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise RunError(f"{weights} is not a readable safetensors file ({e})") from None
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise RunError(f"{weights} does not match {cfg_path}: mismatched tensors {sorted(missing)[:5]}")
    model.load_state_dict(state)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), config


# -- checkpoints --------------------------------------------------------------------------------

def _pack(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON-able form of ``obj`` with every tensor moved into ``tensors`` under a path-like key."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"$tensor": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _pack(v, tensors, f"{key}/{k}") for k, v in obj.items()}
        return {"$items": [[k, _pack(v, tensors, f"{key}/{k}")] for k, v in obj.items()]}  # Adam's int keys
    if isinstance(obj, (list, tuple)):
        return [_pack(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
    return obj


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "$tensor" in obj:
            return tensors[obj["$tensor"]]
        if "$items" in obj:
            return {k: _unpack(v, tensors) for k, v in obj["$items"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


# where each phase keeps its place in a checkpoint
PHASE_STATE = {"hebbian": "position", "probe": "probe", "backprop": "backprop", "hybrid": "hybrid"}


def save_checkpoint(path: Path, state: dict) -> None:
    """One safetensors file (tensors + the rest as JSON metadata), fsynced, then renamed into place."""
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_pack(state, tensors, ""))
    atomic_write(path, save(tensors, metadata={"softhebb_checkpoint": meta}))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by ``save_checkpoint``; anything else (a pickle, a torch.save file) is refused."""
    hint = f"Delete {path} to start the run over, or pass --overwrite."
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for foreign or corrupt files
        raise RunError(f"{path} is not a readable softhebb checkpoint: it must be a safetensors file, and nothing is "
                       f"unpickled ({type(e).__name__}: {e}). {hint}") from None
    try:
        state = _unpack(json.loads(meta["softhebb_checkpoint"]), tensors)
        if state["format"] != 1:
            raise ValueError(f"format {state['format']!r}")
        if state["phase"] not in PHASE_STATE:
            raise ValueError(f"phase {state['phase']!r}")
        for key in ("run", "model", "stats", "metrics_bytes", PHASE_STATE[state["phase"]]):
            state[key]  # noqa: B018 — a missing key is a KeyError, reported below
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path} is a safetensors file but not a softhebb checkpoint ({type(e).__name__}: {e}). {hint}") from None
    return state
