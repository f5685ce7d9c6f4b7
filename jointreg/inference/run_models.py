"""The model folders that inference commands take from a run folder (layout: :class:`~jointreg.export.run_folder.RunPaths`).

* :func:`resolve_model_folder` (``jointreg segment --model``): a model folder given directly,
  or the run folder it was exported to.
* :func:`find_run_models` (``jointreg pseudolabel --run``): every exported network of a run.
* :func:`for_inference`: a loaded registration network in the layout inference runs fastest in.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from jointreg.errors import InputError
from jointreg.export.run_folder import MODEL_KINDS, RunPaths

_FINISH_HINT = "finish it with 'jointreg train --resume RUN'"


def _relative(paths: RunPaths, folder: Path) -> str:
    """``folder`` as written in messages: relative to the run folder, with forward slashes."""
    return folder.relative_to(paths.root).as_posix()


def resolve_model_folder(path: str | PathLike[str], kind: str) -> Path:
    """A model folder of ``kind``, given the folder itself or a run folder (its exported ``kind``).

    A folder with a model ``config.json``, or without a run's recipe, is taken as the model
    folder itself (:func:`jointreg.export.model_folder.load_model_folder` checks it).

    Raises:
        InputError: a missing path, or a run folder without that export.
    """
    from jointreg.export.model_folder import CONFIG_NAME

    path = Path(path)
    if not path.exists():
        raise InputError(path, "model folder not found")
    run = RunPaths(path)
    if (path / CONFIG_NAME).exists() or not run.is_run():
        return path
    exported = run.model(kind)
    if not exported.is_dir():
        raise InputError(
            path, f"run folder has no exported {kind} ({_relative(run, exported)} is missing: the run did not finish, "
            f"or it trained no such network); {_FINISH_HINT}"
        )
    return exported


@dataclass(frozen=True)
class RunModels:
    """The exported model folders of a run (``None`` where the run trained no such network)."""

    registration: Path | None
    segmentor: Path | None


def find_run_models(run: str | PathLike[str]) -> RunModels:
    """The exported model folders of a run (checked: format, version, files, kind, 2D).

    Raises:
        InputError: not a run folder, no exports, a broken model folder, a model of the wrong
            kind, or a 3D network other than a 3D-mode registration (pseudo-labelling works on
            slices, or registers whole cases from the atlases in 3D mode).
        PermissionError: weights that cannot be read (the command line prints it as
            ``PATH: permission denied``), found here rather than in a worker process.
    """
    from jointreg.export.model_folder import WEIGHTS_NAME, read_model_config

    run = Path(run)
    if not run.is_dir():
        raise InputError(run, "run folder not found" if not run.exists() else "not a folder")
    paths = RunPaths(run)
    found = paths.exported_models()
    if not found:
        what = "a jointreg run folder" if paths.is_run() else "a folder"
        expected = ", ".join(_relative(paths, paths.model(kind)) for kind in MODEL_KINDS)
        raise InputError(run, f"is {what} without exported models ({expected}): the run has not finished; {_FINISH_HINT}")
    for kind, folder in found.items():
        config = read_model_config(folder)
        if config["kind"] != kind:
            raise InputError(folder, f"holds a {config['kind']} model, expected a {kind} model")
        box = (config.get("preprocessing") or {}).get("box")
        if int(config.get("spatial_dims", 2)) != 2 and not (kind == "registration" and box):
            # A 3D registration of 3D mode (its box in preprocessing) labels whole cases from the atlases.
            raise InputError(folder, "pseudolabel needs 2D (slice) networks, or the 3D registration of a 3D-mode run")
        with open(folder / WEIGHTS_NAME, "rb"):
            pass
    return RunModels(found.get("registration"), found.get("segmentor"))


def for_inference(net):
    """``net`` with its 2D convolution weights in the channels-last layout that oneDNN prefers:
    FMIRNet registers 1.09-1.15x more pairs per second on a CPU (results/registration_speed.md,
    "Peers"), with the same outputs to float rounding. 3D networks keep their layout (a
    channels-last layout needs 4D weights). Used by ``register`` and ``pseudolabel``; a model
    folder itself loads unchanged."""
    import torch

    if getattr(net, "spatial_dims", 2) == 2:
        net.to(memory_format=torch.channels_last)
    return net

