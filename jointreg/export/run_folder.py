"""The layout of a run folder, in one place: every writer and reader goes through :class:`RunPaths`.

::

    RUN/recipe.yaml                 the resolved recipe (what --resume checks against)
    RUN/train.log                   the step lines
    RUN/tensorboard/                scalars and panels
    RUN/checkpoints/last|best/      resume state / selected weights (safetensors + JSON)
    RUN/export/registration|segmentor/   self-describing model folders
    RUN/export/torchscript|onnx/    standalone exports (``jointreg export``)
    RUN/predictions/  RUN/evaluation/  RUN/evaluation_raw/ (without post-processing)  RUN/summary.json
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

MODEL_KINDS = ("registration", "segmentor")


@dataclass(frozen=True)
class RunPaths:
    """The files and folders of the run folder ``root``."""

    root: Path

    def __init__(self, root: str | PathLike[str]):
        object.__setattr__(self, "root", Path(root))

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def model(self, kind: str) -> Path:
        """The exported model folder of ``kind`` (``registration`` or ``segmentor``)."""
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}; got {kind!r}")
        return self.export / kind

    def standalone(self, fmt: str) -> Path:
        """Where ``jointreg export`` writes the ``fmt`` (torchscript / onnx) files by default."""
        return self.export / fmt

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def evaluation_raw(self) -> Path:
        """The evaluation without the segmentor's post-processing (when it has any)."""
        return self.root / "evaluation_raw"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def lock(self) -> Path:
        """Locked (``flock``) by the ``jointreg train`` working in the folder; kept afterwards."""
        return self.root / ".lock"

    def is_run(self) -> bool:
        """Whether ``root`` looks like a run folder (it holds a recipe.yaml)."""
        return self.recipe.is_file()

    def can_resume(self) -> bool:
        return self.is_run() and self.last.is_dir()

    def exported_models(self) -> dict[str, Path]:
        """The model folders present under ``export/`` (kind → folder), in :data:`MODEL_KINDS` order."""
        return {kind: self.model(kind) for kind in MODEL_KINDS if self.model(kind).is_dir()}
