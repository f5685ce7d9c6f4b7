"""Resume checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``tensors.safetensors`` (model weights, optimizer moments, torch RNG
states) and ``state.json`` (step counters, scheduler state, NumPy/Python RNG states, history, the
recipe digest). Arbitrary nested state (an optimizer's ``state_dict``) is split by
:func:`split_tensors`: every tensor is replaced by a ``{"__tensor__": key}`` reference and
non-string dictionary keys are preserved, so :func:`join_tensors` rebuilds it exactly.

A checkpoint is replaced without a moment where neither the old nor the new one is complete:
the new folder is built under a temporary name, the old one is renamed aside (``.previous``),
the new one renamed into place, and only then is the old one deleted. A kill between the two
renames leaves the old checkpoint aside; :func:`recover_checkpoint` puts it back (a resume from
it is as exact as from the newer one, only a few steps earlier).
"""

from __future__ import annotations

import json
import os
import shutil
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from jointreg.errors import InputError
from jointreg.utils.atomic import TMP_PREFIX, temporary_sibling, write_json
from jointreg.utils.tensor_files import save_tensors

TENSORS = "tensors.safetensors"
STATE = "state.json"
PREVIOUS = ".previous"  # suffix of the checkpoint moved aside while its successor is renamed in


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-ready copy of ``obj`` with tensors moved into ``tensors`` under ``prefix`` keys."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save_checkpoint(folder: str | PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and JSON values) atomically to ``folder``.

    An existing checkpoint at ``folder`` is replaced; at every instant either it or the new one
    is complete on disk (module docstring).
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, "s", tensors)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(folder)
    aside = tmp.with_name(tmp.name + PREVIOUS)
    tmp.mkdir()
    try:
        save_tensors(tmp / TENSORS, tensors)
        write_json(tmp / STATE, skeleton, indent=1)  # last: its presence means the folder is complete
        if folder.exists():
            os.replace(folder, aside)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not folder.exists():
            os.replace(aside, folder)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return folder


def recover_checkpoint(folder: str | PathLike[str]) -> bool:
    """Put back the checkpoint a kill left aside while ``folder`` was being replaced.

    Returns:
        Whether ``folder`` holds a checkpoint now. Leftover temporaries are not deleted here
        (:func:`jointreg.utils.atomic.remove_stale_temporaries` does that, after this).
    """
    folder = Path(folder)
    if folder.is_dir():
        return True
    if not folder.parent.is_dir():
        return False
    aside = sorted(folder.parent.glob(f"{TMP_PREFIX}*-{folder.name}{PREVIOUS}"), key=lambda p: p.stat().st_mtime)
    aside = [p for p in aside if (p / STATE).is_file() and (p / TENSORS).is_file()]
    if not aside:
        return False
    os.replace(aside[-1], folder)
    return True


def read_state(folder: str | PathLike[str]) -> dict[str, Any]:
    """The JSON part of a checkpoint (``state.json``): counters, RNG states, the recipe record;
    tensors appear as ``{"__tensor__": key}`` references. Cheap: no tensor is read."""
    folder = Path(folder)
    if not (folder / STATE).is_file() or not (folder / TENSORS).is_file():
        raise InputError(folder, f"not a checkpoint ({STATE} and {TENSORS} expected)")
    try:
        return json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise InputError(folder, f"unreadable checkpoint ({exc})") from None


def load_checkpoint(folder: str | PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no unpickling)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    skeleton = read_state(folder)
    try:
        tensors = load_file(str(Path(folder) / TENSORS))
    except (SafetensorError, OSError) as exc:
        raise InputError(folder, f"unreadable checkpoint ({exc})") from None
    try:
        return join_tensors(skeleton, tensors)
    except KeyError as exc:
        raise InputError(folder, f"inconsistent checkpoint (tensor {exc} missing from {TENSORS})") from None


def rng_state() -> dict[str, Any]:
    """torch CPU (and CUDA) generator states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
