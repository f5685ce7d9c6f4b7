"""Resume checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``tensors.safetensors`` (model weights, optimizer moments, torch RNG
states) and ``state.json`` (step counters, scheduler state, NumPy/Python RNG states, history, the
recipe digest). Arbitrary nested state (an optimizer's ``state_dict``) is split by
:func:`split_tensors`: every tensor is replaced by a ``{"__tensor__": key}`` reference and
non-string dictionary keys are preserved, so :func:`join_tensors` rebuilds it exactly.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from jointreg.errors import InputError
from jointreg.utils.atomic import atomic_dir, write_json
from jointreg.utils.tensor_files import save_tensors

TENSORS = "tensors.safetensors"
STATE = "state.json"


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
    """Write ``state`` (nested dicts/lists of tensors and JSON values) atomically to ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, "s", tensors)
    folder = Path(folder)
    with atomic_dir(folder, overwrite=True) as tmp:
        save_tensors(tmp / TENSORS, tensors)
        write_json(tmp / STATE, skeleton, indent=1)
    return folder


def load_checkpoint(folder: str | PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no unpickling)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / STATE).is_file() or not (folder / TENSORS).is_file():
        raise InputError(folder, f"not a checkpoint ({STATE} and {TENSORS} expected)")
    try:
        skeleton = json.loads((folder / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TENSORS))
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise InputError(folder, f"unreadable checkpoint ({exc})") from None
    return join_tensors(skeleton, tensors)


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
