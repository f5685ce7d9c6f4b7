"""Fixtures of the bad-input corpus: valid inputs built once, and a scratch copy per test.

Every case of ``test_bad_inputs.py`` spoils one thing of an otherwise valid input; the valid
inputs (a liver-CT phantom of 2 volumes of 32 × 32 × 8, its one-slice-per-volume copy, and a run
folder with small untrained networks, ``benchmarks/kill_bulk.py``) are built once per session and
never modified: a test copies what it spoils into its own ``tmp_path`` (:class:`Workspace`).
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# A recipe that trains in seconds on the phantom (only the corrected reruns ever train).
TINY_RECIPE = {
    "name": "bad_inputs",
    "threads": 1,
    "data": {"size": [32, 32]},
    "pairs": {"radius": 4},
    "registration": {"batch_size": 2, "arguments": {"features": [4, 8, 8]}},
    "segmentation": {"architecture": "fcn", "batch_size": 2,
                     "arguments": {"features": [4, 8, 8, 8, 8], "head_channels": 8}},
    "schedule": {"registration_warmup": 1, "segmentation_warmup": 1, "rounds": 1,
                 "registration_steps": 1, "segmentation_steps": 1},
    "logging": {"image_every": 0, "log_every": 0, "progress": False, "tensorboard": False},
    "evaluation": {"enabled": False},
}


# The benchmark scripts the trials share (benchmarks/kill_*.py) and the helpers of this folder
# (_unprivileged.py) are imported by name: `from benchmarks import kill_bulk`, `import _unprivileged`.
for _path in (str(REPO), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


@pytest.fixture(scope="session")
def valid_inputs(tmp_path_factory) -> dict[str, Path]:
    """``{"full", "sparse", "run"}`` (see the module docstring); read-only by convention."""
    from benchmarks import kill_bulk

    return kill_bulk.build_inputs(tmp_path_factory.mktemp("valid_inputs"), cases=2, shape=(32, 32, 8))


class Workspace:
    """The valid inputs, and helpers that make a spoilt copy of one of them under ``tmp``.

    Attributes:
        tmp: this test's own folder; everything a case writes goes there.
        full, sparse, run: the shared valid inputs (never written to).
        image, label: the first case's image and label of ``full``.
        registration, segmentor: the run's model folders.
    """

    def __init__(self, inputs: dict[str, Path], tmp: Path):
        self.tmp = tmp
        self.full, self.sparse, self.run = inputs["full"], inputs["sparse"], inputs["run"]
        self.image = sorted((self.full / "imagesTr").iterdir())[0]
        self.label = sorted((self.full / "labelsTr").iterdir())[0]
        self.registration = self.run / "export" / "registration"
        self.segmentor = self.run / "export" / "segmentor"

    def out(self, name: str = "out") -> Path:
        """An output path that does not exist yet."""
        return self.tmp / name

    def copy(self, source: Path, name: str | None = None) -> Path:
        """A copy of a file or folder in ``tmp`` (``name`` defaults to the source's)."""
        target = self.tmp / (name or source.name)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return target

    def dataset(self, which: str = "full") -> Path:
        """A copy of the full or sparse dataset."""
        return self.copy(self.full if which == "full" else self.sparse, which)

    def text(self, name: str, content: str = "this is not what it should be\n") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return path

    def nifti(self, name: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        """``array`` saved with nibabel (no jointreg writer, so any content can be made)."""
        path = name if isinstance(name, Path) else self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
        return path

    def edit_json(self, path: Path, change: Callable[[Any], Any]) -> Path:
        """Rewrite a JSON file with ``change(content)`` (a str result is written as it is)."""
        made = change(json.loads(path.read_text(encoding="utf-8")))
        path.write_text(made if isinstance(made, str) else json.dumps(made), encoding="utf-8")
        return path

    def recipe(self, name: str = "recipe.yaml", dataset: Path | None = None, text: str | None = None, **sections) -> Path:
        """A recipe file: the tiny recipe on ``dataset`` (default: the sparse phantom) with
        sections replaced, or ``text`` as it is."""
        import yaml

        path = self.tmp / name
        if text is None:
            data = {**TINY_RECIPE, "output": str(self.tmp / "runs"),
                    "data": {**TINY_RECIPE["data"], "dataset": str(dataset or self.sparse)}, **sections}
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    def spec(self, change: Callable[[dict], Any], which: str = "full") -> Path:
        """A copy of a dataset whose ``dataset.json`` is ``change(content)``."""
        root = self.dataset(which)
        self.edit_json(root / "dataset.json", change)
        return root

    def like_image(self, path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        """``array`` written over ``path`` with the affine of :attr:`image` (or ``affine``)."""
        return self.nifti(path, array, nib.load(self.image).affine if affine is None else affine)

    @staticmethod
    def first(root: Path, folder: str = "imagesTr") -> Path:
        return sorted((root / folder).iterdir())[0]

    @staticmethod
    def put_back(source: Path, target: Path) -> Callable[[], object]:
        """A fix that restores ``target`` from its valid ``source``."""
        return lambda: target.write_bytes(source.read_bytes())

    @staticmethod
    def truncate(path: Path, keep: float = 0.5) -> Path:
        """Cut a file to a fraction of its bytes (a gzip stream then ends early)."""
        data = path.read_bytes()
        path.write_bytes(data[: max(1, int(len(data) * keep))])
        return path

    @staticmethod
    def garbage(path: Path, *, compressed: bool = True) -> Path:
        """Replace a file by bytes that are no NIfTI (gzip-compressed or not)."""
        data = bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8))
        path.write_bytes(gzip.compress(data) if compressed else data)
        return path


@pytest.fixture
def ws(valid_inputs, tmp_path) -> Workspace:
    return Workspace(valid_inputs, tmp_path)


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv, command)``: run the CLI in-process, assert exit 2 and exactly one stderr
    line ``jointreg COMMAND: error: ...`` without a traceback, and return the text after the prefix."""
    from jointreg.cli.main import main

    def run(argv, command):
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, captured
        assert "Traceback" not in captured.err + captured.out
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, lines
        prefix = f"jointreg {command}: error: "
        assert lines[0].startswith(prefix), lines
        return lines[0][len(prefix):]

    return run
