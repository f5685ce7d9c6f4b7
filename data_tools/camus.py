"""Convert CAMUS (2D echocardiography, 2- and 4-chamber views) into a 2D+t dataset.

Expected layout (the official downloads, MetaImage or NIfTI; --input may point at the folder of
patient folders, at database_nifti/ or its parent, or at the folder holding training/ and
testing/):

  patient0001/Info_2CH.cfg                      ED: 1, ES: 17, NbFrame: 17, Sex, Age, ImageQuality,
                                                EF (or LVef, LVedv, LVesv), FrameRate (when given)
  patient0001/patient0001_2CH_half_sequence.mhd (+ .raw; or .nii.gz; or _sequence) the frames
  patient0001/patient0001_2CH_ED.mhd            the end-diastolic frame
  patient0001/patient0001_2CH_ED_gt.mhd         its ground truth (and _ES, _ES_gt)
  patient0001/Info_4CH.cfg, patient0001_4CH_... the same for the 4-chamber view

Every patient and view becomes one case, patientXXXX_2CH and patientXXXX_4CH, whose image is the
sequence as a 2D+t volume: array[:, :, k] is frame k + 1 of the cfg's numbering (the cfg counts
from 1), the frames being the slices along axis 2, so the slice workflow (sparsify, train,
pseudolabel, evaluate) runs on them unchanged. In-plane geometry comes from the sequence file
(ElementSpacing, Offset, TransformMatrix, read as ITK reads them; or the NIfTI affine). The
third spacing is the frame interval in milliseconds, 1000 / FrameRate (the cfg's FrameRate, else
--fps); without either it is 1 per frame, and dataset.json says that the interval is unknown.

Labels: 0 background, 1 lv (LV blood pool), 2 myocardium, 3 atrium (left atrium), 4 ignore. The
ED and ES frames named by the cfg hold their ground truth; every other frame is ignore. The ED/ES
images are compared with those frames of the sequence: a difference is recorded in dataset.json
(with the closest frame) and the ground truth is used anyway. The cfg fields are kept there too.

training/ goes to imagesTr/labelsTr and testing/ to imagesTs/labelsTs (--split chooses), a plain
folder of patients to imagesTr; --test-cases/--test-fraction move patients (both views) to the
test split. --views converts one view only.

Example:
  jointreg prepare camus --input ~/data/CAMUS_public/database_nifti --out data/camus
  jointreg prepare camus --input ~/data/CAMUS/training --views 4CH --fps 50 --out data/camus_4ch
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_tools import _common
from data_tools._common.cfg import ed_es_frames, positive_number, read_key_values
from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

SOURCE = "camus"
HELP = "CAMUS 2D echo (2CH/4CH sequences with ED/ES ground truth), as 2D+t volumes"

CAMUS_LABELS = {"background": 0, "lv": 1, "myocardium": 2, "atrium": 3, "ignore": 4}
VIEWS = ("2CH", "4CH")
SEQUENCE_NAMES = ("half_sequence", "sequence")
SUFFIXES = (".mhd", ".mha", ".nii.gz", ".nii")
TIME_UNIT = "ms"
_PATIENT = re.compile(r"^patient\d+$")


@dataclass(frozen=True)
class ViewInfo:
    """The content of one ``Info_2CH.cfg`` / ``Info_4CH.cfg``.

    Attributes:
        ed, es: end-diastolic / end-systolic frame numbers in the sequence, counted from 1.
        num_frames: ``NbFrame``, ``None`` when absent.
        frame_rate: ``FrameRate`` (frames per second), ``None`` when absent.
        fields: every ``Key: value`` as given.
    """

    ed: int
    es: int
    num_frames: int | None = None
    frame_rate: float | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: _number_or_text(v) for k, v in self.fields.items()}


def _number_or_text(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def read_info(path: str | Path) -> ViewInfo:
    """Parse a CAMUS ``Info_<view>.cfg`` (``Key: value`` lines).

    Raises:
        InputError: missing file, a line that is not ``Key: value``, ED/ES missing or not whole
            numbers >= 1, ED equal to ES, a frame beyond NbFrame, a FrameRate that is not a
            positive number.
    """
    path = Path(path)
    fields = read_key_values(path, "every CAMUS patient folder has an Info_<view>.cfg per view")
    ed, es, frames = ed_es_frames(fields, path)
    rate = None
    if "FrameRate" in fields:
        rate = positive_number(fields["FrameRate"])
        if rate is None:
            raise InputError(path, f"'FrameRate: {fields['FrameRate']}' is not a positive number")
    return ViewInfo(ed, es, frames, rate, fields)


def find_patients(root: str | Path, split: str = "all") -> dict[Path, str]:
    """Patient folders to convert, each with its split (``"Tr"`` or ``"Ts"``).

    Args:
        root: a folder of ``patientXXXX`` folders, ``database_nifti/`` or its parent, or the
            folder holding ``training/`` and ``testing/``.
        split: ``"all"``, ``"training"`` or ``"testing"``.

    Raises:
        InputError: no patient folders where expected.
    """
    return _common.find_patient_folders(root, split, database="database_nifti", patients=_patient_dirs,
                                        source="CAMUS", pattern="patientXXXX")


def _patient_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _PATIENT.match(p.name)), key=lambda p: _common.natural_key(p.name))


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


# --------------------------------------------------------------------------------------------
# reading either format
# --------------------------------------------------------------------------------------------
def read_frames(path: Path, ndim: int, *, label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An image (float32) or label (int16) of ``ndim`` dimensions and its 4×4 RAS affine.

    ``.mhd``/``.mha`` are read with :mod:`data_tools._common.metaimage`, NIfTI with
    :mod:`jointreg.data.nifti`; trailing axes of length 1 are dropped.

    Raises:
        InputError: unreadable file, another number of dimensions, NaN intensities, label
            values that are not whole numbers >= 0.
    """
    import numpy as np

    from data_tools._common.metaimage import read_metaimage
    from jointreg.data.nifti import read_image, read_label

    if not path.name.endswith((".mhd", ".mha")):
        volume = (read_label if label else read_image)(path, ndim=ndim)
        return volume.array, volume.affine
    image = read_metaimage(path)
    array = image.array
    while array.ndim > ndim and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != ndim:
        raise InputError(path, f"expected a {ndim}D image, found DimSize {' '.join(map(str, image.array.shape))}")
    if label:
        if array.dtype.kind == "f":
            if not np.isfinite(array).all() or not np.array_equal(array, np.rint(array)):
                raise InputError(path, "label map holds values that are not whole numbers")
        if array.size and array.min() < 0:
            raise InputError(path, f"label map holds negative values (min {array.min()})")
        return array.astype(np.int16), image.affine
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise InputError(path, f"{int((~np.isfinite(values)).sum())} voxel(s) are NaN or infinite")
    return values, image.affine


def _pick_sequence(folder: Path, stem: str, info: ViewInfo, cfg: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The sequence file whose frame count matches NbFrame (half_sequence first)."""
    candidates = [p for p in (_find(folder, f"{stem}_{n}") for n in SEQUENCE_NAMES) if p is not None]
    if not candidates:
        raise InputError(folder / f"{stem}_half_sequence.nii.gz", "no sequence file (_half_sequence or _sequence, .mhd or .nii.gz)")
    first = None
    for path in candidates:
        array, affine = read_frames(path, 3)
        if info.num_frames is None or array.shape[2] == info.num_frames:
            return path, array, affine
        first = first or (path, array.shape[2])
    raise InputError(first[0], f"holds {first[1]} frames but {cfg.name} says NbFrame {info.num_frames}")


def _compare(image: np.ndarray, frames: np.ndarray, frame: int) -> dict[str, Any]:
    """How the ED/ES image compares with sequence frame ``frame`` (0-based)."""
    import numpy as np

    if image.shape != frames.shape[:2]:
        return {"identical": False, "note": f"image shape {image.shape} differs from the frames' {frames.shape[:2]}"}
    differences = np.abs(frames - image[:, :, None]).max(axis=(0, 1))
    if differences[frame] == 0:
        return {"identical": True}
    return {
        "identical": False,
        "max_difference": float(differences[frame]),
        "closest_frame": int(np.argmin(differences)) + 1,
    }


def _label_volume(
    patient: Path, view: str, info: ViewInfo, frames: np.ndarray, seq_affine: np.ndarray, cfg: Path,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(X, Y, T)`` label (ground truth on the ED and ES frames, ignore elsewhere), checks."""
    import numpy as np

    count = frames.shape[2]
    if max(info.ed, info.es) > count:
        raise InputError(cfg, f"ED {info.ed} / ES {info.es} beyond the {count} frames of the sequence")
    label = np.full(frames.shape, CAMUS_LABELS["ignore"], dtype=np.int16)
    classes = sorted(v for n, v in CAMUS_LABELS.items() if n != "ignore")
    checks: dict[str, Any] = {}
    notes: list[str] = []
    for phase, frame in (("ED", info.ed), ("ES", info.es)):
        stem = f"{patient.name}_{view}_{phase}"
        gt_path = _find(patient, f"{stem}_gt")
        if gt_path is None:
            raise InputError(patient / f"{stem}_gt.mhd", f"ground truth of the {phase} frame {frame} not found (.mhd or .nii.gz)")
        gt, gt_affine = read_frames(gt_path, 2, label=True)
        if gt.shape != frames.shape[:2]:
            raise InputError(gt_path, f"shape {gt.shape} differs from the frames of the sequence {frames.shape[:2]}")
        bad = sorted(set(np.unique(gt).tolist()) - set(classes))
        if bad:
            raise InputError(gt_path, f"label values {bad} are not CAMUS classes (0 background, 1 lv, 2 myocardium, 3 atrium)")
        if not np.allclose(np.linalg.norm(gt_affine[:3, :2], axis=0), np.linalg.norm(seq_affine[:3, :2], axis=0), rtol=1e-3):
            notes.append(f"{gt_path.name} has another pixel spacing than the sequence; the sequence's is kept")
        label[:, :, frame - 1] = gt
        image_path = _find(patient, stem)
        if image_path is None:
            checks[phase] = {"identical": None, "note": f"{stem} image not found, not compared"}
        else:
            checks[phase] = _compare(read_frames(image_path, 2)[0], frames, frame - 1)
    return label, {"checks": checks, "notes": notes}


def convert_camus(
    input_dir: str | Path,
    out: str | Path,
    *,
    split: str = "all",
    views: Sequence[str] = VIEWS,
    fps: float | None = None,
    test_cases: Sequence[str] = (),
    test_fraction: float = 0.0,
    seed: int = 0,
    name: str = "",
    overwrite: bool = False,
) -> Path:
    """Convert CAMUS sequences with their ED/ES ground truth into a 2D+t dataset.

    Args:
        input_dir: see :func:`find_patients`.
        out: dataset folder to create.
        split: which official folders to convert (``all``, ``training``, ``testing``).
        views: ``2CH`` and/or ``4CH``.
        fps: frame rate for views whose cfg has no ``FrameRate``.
        test_cases: patients (``patient0007``) or cases (``patient0007_2CH``) moved from the
            training to the test split, with both views.
        test_fraction: or a random fraction of the training patients, drawn with ``seed``.
        name: dataset name (default: the folder name).
        overwrite: replace an existing ``out``.

    Returns:
        The dataset folder.

    Raises:
        InputError: a missing or malformed cfg, sequence or ground truth; a ground truth that
            does not fit the frames or holds values other than 0-3; a frame beyond the sequence;
            unreadable files (a MetaImage whose data do not match its DimSize, ...).
        ConfigError: unknown views, a non-positive fps, a bad split.
    """
    import numpy as np
    from tqdm import tqdm

    from data_tools._common.video import time_series_volume
    from jointreg.data.slices import through_plane_axis

    out = Path(out)
    views = [v.upper() for v in views]
    if not views or any(v not in VIEWS for v in views):
        raise ConfigError(f"--views must name some of {', '.join(VIEWS)}, got {', '.join(views) or 'nothing'}")
    if fps is not None and not fps > 0:
        raise ConfigError(f"--fps must be positive, got {fps}")
    patients = find_patients(input_dir, split)
    _common.check_new_output(out, overwrite=overwrite, inputs=[input_dir])
    infos = {(p, v): read_info(p / f"Info_{v}.cfg") for p in patients for v in views}

    # Splits are drawn per patient so that its two views never straddle them.
    training = [p.name for p, s in patients.items() if s == "Tr"]
    by_case = {f"{pid}_{v}": pid for pid in training for v in VIEWS}
    wanted = [by_case.get(c, c) for c in test_cases]
    unknown = [c for c in wanted if c not in training]
    if unknown:
        raise ConfigError(f"--test-cases: '{unknown[0]}' is not a training patient or case")
    moved = _common.split_cases(training, test_cases=wanted, test_fraction=test_fraction, seed=seed) if training else {}
    cases: dict[str, dict[str, Any]] = {}
    extra = {
        "conversion": {
            "source": SOURCE,
            "layout": "2D+t: axis 2 is time, slice k = frame k + 1 of the cfg's numbering",
            "time_spacing_unit": TIME_UNIT,
            "frame_interval": "1000 / FrameRate of the cfg, else 1000 / --fps; frame_interval_ms null: unknown, "
                              "time spacing 1 per frame",
            "cases": cases,
        }
    }
    unknown_rate = misordered = 0
    with _common.dataset_output(out, modality="echo", name=name, labels=CAMUS_LABELS, extra=extra, overwrite=overwrite) as ds:
        for patient, official in tqdm(list(patients.items()), desc="camus", unit="patient", disable=None):
            target = moved.get(patient.name, official)
            for view in views:
                info, cfg = infos[(patient, view)], patient / f"Info_{view}.cfg"
                seq_path, frames, seq_affine = _pick_sequence(patient, f"{patient.name}_{view}", info, cfg)
                label, found = _label_volume(patient, view, info, frames, seq_affine, cfg)
                rate = info.frame_rate or fps
                interval = None if rate is None else 1000.0 / rate
                volume = time_series_volume(frames, seq_affine, interval)
                case = f"{patient.name}_{view}"
                cases[case] = {
                    "patient": patient.name,
                    "view": view,
                    "sequence": seq_path.name,
                    "frames": int(frames.shape[2]),
                    "ed_frame": info.ed,
                    "es_frame": info.es,
                    "frame_interval_ms": None if interval is None else round(interval, 6),
                    "frame_rate_from": "cfg" if info.frame_rate else "--fps" if fps else None,
                    "source_time_spacing": round(float(np.linalg.norm(seq_affine[:3, 2])), 6),
                    "info": info.to_json(),
                    **found,
                }
                if interval is None:
                    unknown_rate += 1
                if through_plane_axis(volume.spacing) != 2:
                    found["notes"].append("the frame interval is not the largest spacing: slice along axis 2 explicitly")
                    misordered += 1
                if not found["notes"]:
                    del cases[case]["notes"]
                ds.add(case, volume.array, reference=volume, label=label, split=target, label_source=cfg)
    # Said after the conversion: a failed one prints its one error line and nothing else.
    if unknown_rate:
        logger.warning("%d case(s) without a frame rate (no FrameRate in the cfg, no --fps): time spacing 1 per frame", unknown_rate)
    if misordered:
        logger.warning("%d case(s) whose frame interval is not their largest spacing: set the slice axis to 2", misordered)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, metavar="DIR", help="CAMUS patients folder (or database_nifti/, or training/testing parent)")
    parser.add_argument("--split", choices=("all", "training", "testing"), default="all", help="official folders to convert (default all)")
    parser.add_argument("--views", nargs="+", type=str.upper, choices=VIEWS, default=list(VIEWS), help="views to convert (default both)")
    parser.add_argument("--fps", type=float, metavar="F", help="frame rate where the cfg has no FrameRate (default: interval unknown, 1 per frame)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to create")
    _common.add_split_arguments(parser, cases="training patients (or cases) moved to imagesTs/labelsTs",
                                fraction="random fraction of training patients for the test split")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    out = convert_camus(
        args.input, args.out, split=args.split, views=args.views, fps=args.fps, test_cases=args.test_cases,
        test_fraction=args.test_fraction, seed=args.seed, name=args.name, overwrite=args.overwrite,
    )
    print(_common.describe(out))
    return 0
