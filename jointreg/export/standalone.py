"""Standalone exports (TorchScript, ONNX) of a run's networks, for deployment without jointreg.

:func:`export_run` finds the model folders of a run (or takes one model folder), loads them and
hands each to the format's exporter (:mod:`jointreg.export.torchscript`,
:mod:`jointreg.export.onnx`). The wrappers, the fixed-size caveat and the ``{name}.json``
metadata both formats share are in :mod:`jointreg.export.common`.
"""

from __future__ import annotations

import logging

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from jointreg.errors import ConfigError, InputError
from jointreg.export.model_folder import CONFIG_NAME, load_model_folder
from jointreg.export.onnx import export_onnx
from jointreg.export.run_folder import MODEL_KINDS, RunPaths
from jointreg.export.torchscript import export_torchscript

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


def model_folders(path: str | PathLike[str]) -> list[Path]:
    """The model folders to export: ``path`` itself, or those under ``RUN/export``.

    Raises:
        InputError: nothing exportable found.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found")
    if (path / CONFIG_NAME).is_file():
        return [path]
    run = RunPaths(path)
    found = [folder for folder in run.exported_models().values() if (folder / CONFIG_NAME).is_file()]
    if not found:
        expected = ", ".join(run.model(kind).relative_to(run.root).as_posix() for kind in MODEL_KINDS)
        raise InputError(
            path, f"neither a model folder nor a run folder with exports ({expected}); "
            "finish the run first ('jointreg train --resume RUN')"
        )
    return found


def export_run(
    path: str | PathLike[str],
    fmt: str,
    *,
    out: str | PathLike[str] | None = None,
    size: Sequence[int] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Export a run's networks (or one model folder) as TorchScript or ONNX.

    Args:
        path: a run folder (exports ``export/registration`` and ``export/segmentor``) or a model
            folder.
        fmt: ``torchscript`` or ``onnx``.
        out: output folder (default: ``RUN/export/{fmt}``, or ``MODEL/../{fmt}`` for a model folder).
        size: ``(H, W)`` to trace at (default: each model's training size).
        overwrite: replace existing files.

    Returns:
        The exported files (``{kind}.pt`` / ``{kind}.onnx``; each with a ``{kind}.json``).

    Raises:
        ConfigError: unknown format or bad size.
        InputError: nothing to export, broken model folders, existing outputs without ``overwrite``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    folders = model_folders(path)
    if out is not None:
        target = Path(out)
    elif folders == [Path(path)]:  # one model folder: its siblings
        target = folders[0].parent / fmt
    else:
        target = RunPaths(path).standalone(fmt)
    loaded = [load_model_folder(f, device="cpu") for f in folders]
    if len(loaded) > 1 and any(m.spatial_dims == 3 for m in loaded):
        # A 3D-mode run: its registration registers whole volumes (use it through jointreg register
        # or pseudolabel); the slice segmentor still exports.
        for m in loaded:
            if m.spatial_dims == 3:
                log.warning("%s: a 3D network, not exported (only 2D networks can be); the others are", m.path)
        loaded = [m for m in loaded if m.spatial_dims != 3]
    files = [target / f"{m.kind}{SUFFIX[fmt]}" for m in loaded]
    existing = [p for f in files for p in (f, f.with_suffix(".json")) if p.exists()]
    if existing and not overwrite:
        raise InputError(existing[0], "already exists (pass --overwrite to replace it)")
    exporter = export_torchscript if fmt == "torchscript" else export_onnx
    return [exporter(model, file, size=size) for model, file in zip(loaded, files)]
