"""The volumes ``jointreg segment`` is given: files, folders of NIfTI files, dataset folders.

:func:`collect_inputs` expands them into named cases (:class:`SegmentInput`);
:func:`check_output_folder` refuses an output folder that would mix outputs with inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from jointreg.errors import ConfigError, InputError


@dataclass(frozen=True)
class SegmentInput:
    """One volume to segment.

    Attributes:
        case: output name (``{case}.nii.gz``).
        path: the image file.
        modality: the channel name of the dataset it comes from, or ``None`` (use the model's).
    """

    case: str
    path: Path
    modality: str | None = None


def _case_name(path: Path) -> str:
    from jointreg.data.dataset import CHANNEL_SUFFIX
    from jointreg.data.nifti import strip_nifti_suffix

    name = strip_nifti_suffix(path.name)
    # nnU-Net image names carry the channel: case_0000.nii.gz is case "case".
    return name[: -len(CHANNEL_SUFFIX)] if name.endswith(CHANNEL_SUFFIX) and len(name) > len(CHANNEL_SUFFIX) else name


def _nifti_files(folder: Path) -> list[Path]:
    from jointreg.data.nifti import is_nifti
    from jointreg.utils.atomic import TMP_PREFIX

    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith((".", TMP_PREFIX)))


def collect_inputs(inputs: Sequence[str | PathLike[str]]) -> list[SegmentInput]:
    """Expand files, folders of NIfTI files and dataset folders into volumes to segment.

    A dataset folder (with ``dataset.json``) contributes the cases of ``imagesTr`` and
    ``imagesTs`` with its channel name; a plain folder contributes its ``.nii``/``.nii.gz``
    files (not recursive); ``{case}_0000.nii.gz`` is named ``{case}``.

    Raises:
        InputError: a missing path, a file that is not NIfTI, an empty folder, or two inputs
            with the same case name.
    """
    from jointreg.data.dataset import Dataset
    from jointreg.data.nifti import is_nifti

    found: list[SegmentInput] = []
    if not inputs:
        raise ConfigError("no input given")
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(path, "not found")
        if path.is_file():
            if not is_nifti(path):
                raise InputError(path, "not a NIfTI file (.nii or .nii.gz)")
            found.append(SegmentInput(_case_name(path), path))
        elif (path / "dataset.json").is_file():
            dataset = Dataset.open(path)
            before = len(found)
            for split in ("Tr", "Ts"):
                for case in dataset.cases(split):
                    found.append(SegmentInput(case, dataset.image_path(case, split), dataset.spec.modality))
            if len(found) == before:
                raise InputError(path, "dataset has no images in imagesTr/ or imagesTs/")
        else:
            files = _nifti_files(path)
            if not files:
                raise InputError(path, "folder holds no .nii or .nii.gz file")
            found += [SegmentInput(_case_name(p), p) for p in files]
    seen: dict[str, Path] = {}
    for item in found:
        if item.case in seen:
            raise InputError(item.path, f"case name {item.case!r} is also given by {seen[item.case]}; outputs would collide")
        seen[item.case] = item.path
    return found


def _is_same_or_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_output_folder(out: Path, inputs: Sequence[SegmentInput], input_roots: Sequence[Path] = ()) -> None:
    """Refuse an output folder that is an input folder (outputs would mix with, or replace, inputs).

    Raises:
        InputError: ``out`` is the folder of an input file, or an input folder / dataset folder.
    """
    folders = {p.parent.resolve() for p in (i.path for i in inputs)} | {Path(r).resolve() for r in input_roots if Path(r).is_dir()}
    for folder in sorted(folders):
        if out.resolve() == folder:
            raise InputError(out, "the output folder is an input folder; choose another --out")
    for root in input_roots:
        root = Path(root)
        if root.is_dir() and (root / "dataset.json").is_file() and _is_same_or_inside(out, root):
            raise InputError(out, f"the output folder lies inside the input dataset {root}; choose another --out")
