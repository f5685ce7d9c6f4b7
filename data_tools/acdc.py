"""Convert the ACDC cardiac MR challenge (official layout) into a dataset.

Expected layout (the official download; --input may point at database/, at the folder holding
training/ and testing/, or at a folder of patient folders):

  training/patient001/Info.cfg                   ED: 1, ES: 12, Group: DCM, Height, NbFrame, Weight
  training/patient001/patient001_frame01.nii.gz  end-diastolic frame
  training/patient001/patient001_frame01_gt.nii.gz
  training/patient001/patient001_frame12.nii.gz  end-systolic frame (+ _gt)
  training/patient001/patient001_4d.nii.gz       whole cine series: ignored
  testing/patient101/...

The ED and ES frames of every patient become cases patientXXX_ED and patientXXX_ES, with labels
0 background, 1 rv (right-ventricle cavity), 2 myocardium, 3 lv (left-ventricle cavity); modality
MR. training/ goes to imagesTr/labelsTr and testing/ to imagesTs/labelsTs (--split chooses which
to convert); a plain folder of patients goes to imagesTr. --test-cases/--test-fraction move
training cases to the test split (both frames of a patient move together when given by patient).
Info.cfg values (group, height, weight, frames) are kept in dataset.json under "conversion".

Example:
  jointreg prepare acdc --input ~/data/ACDC/database --out data/acdc
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_tools import _common

SOURCE = "acdc"
HELP = "ACDC cardiac cine MR, official layout (ED/ES frames with ground truth)"

ACDC_LABELS = {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
_PATIENT = re.compile(r"^patient\d+$")


@dataclass(frozen=True)
class PatientInfo:
    """The content of one ``Info.cfg``.

    Attributes:
        ed: end-diastolic frame number (1-based, as in the file names).
        es: end-systolic frame number.
        group: pathology group (NOR, MINF, DCM, HCM, RV), "" when absent.
        height_cm, weight_kg: ``None`` when absent.
        num_frames: frames in the cine series, ``None`` when absent.
    """

    ed: int
    es: int
    group: str = ""
    height_cm: float | None = None
    weight_kg: float | None = None
    num_frames: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "ed_frame": self.ed, "es_frame": self.es, "group": self.group,
            "height_cm": self.height_cm, "weight_kg": self.weight_kg, "num_frames": self.num_frames,
        }


def read_info(path: str | Path) -> PatientInfo:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines).

    Raises:
        InputError: missing file, a line that is not ``Key: value``, ED/ES missing or not
            positive integers, ED equal to ES, a frame beyond NbFrame, non-numeric
            Height/Weight/NbFrame.
    """
    from jointreg.errors import InputError

    from data_tools._common.cfg import ed_es_frames, read_key_values

    path = Path(path)
    fields = read_key_values(path, "every ACDC patient folder has an Info.cfg")

    def real(key: str) -> float | None:
        if key not in fields:
            return None
        try:
            return float(fields[key])
        except ValueError:
            raise InputError(path, f"'{key}: {fields[key]}' is not a number") from None

    ed, es, frames = ed_es_frames(fields, path)
    return PatientInfo(ed, es, fields.get("Group", ""), real("Height"), real("Weight"), frames)


def find_patients(root: str | Path, split: str = "all") -> dict[Path, str]:
    """Patient folders to convert, each with its split (``"Tr"`` or ``"Ts"``).

    Args:
        root: ``database/``, its parent, the folder holding ``training/``/``testing/``, or a
            folder of ``patientXXX`` folders.
        split: ``"all"``, ``"training"`` or ``"testing"``.

    Raises:
        InputError: no patient folders where expected.
    """
    return _common.find_patient_folders(root, split, database="database", patients=_patient_dirs,
                                        source="ACDC", pattern="patientXXX")


def _patient_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _PATIENT.match(p.name)), key=lambda p: _common.natural_key(p.name))


def _frame_file(patient: Path, frame: int, gt: bool) -> Path:
    stem = f"{patient.name}_frame{frame:02d}{'_gt' if gt else ''}"
    for suffix in (".nii.gz", ".nii"):
        if (patient / f"{stem}{suffix}").exists():
            return patient / f"{stem}{suffix}"
    return patient / f"{stem}.nii.gz"


def convert_acdc(
    input_dir: str | Path,
    out: str | Path,
    *,
    split: str = "all",
    test_cases: Sequence[str] = (),
    test_fraction: float = 0.0,
    seed: int = 0,
    name: str = "",
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> Path:
    """Convert ACDC's ED and ES frames with their ground truth into a dataset.

    Args:
        input_dir: see :func:`find_patients`.
        out: dataset folder to create.
        split: which official folders to convert (``all``, ``training``, ``testing``).
        test_cases: patients (``patient007``) or cases (``patient007_ED``) moved from the
            training to the test split.
        test_fraction: or a random fraction of the training patients, drawn with ``seed``.
        name: dataset name (default: the folder name).
        tolerance: largest affine difference (mm) accepted between a frame and its ground truth.
        overwrite: replace an existing ``out``.

    Returns:
        The dataset folder.

    Raises:
        InputError: a missing or malformed Info.cfg, a missing frame or ground truth, a ground
            truth that does not fit its frame or holds values other than 0-3, unreadable files.
    """
    from tqdm import tqdm

    from jointreg.data.nifti import read_image, read_label, same_geometry
    from jointreg.errors import ConfigError, InputError

    out = Path(out)
    patients = find_patients(input_dir, split)
    _common.check_new_output(out, overwrite=overwrite, inputs=[input_dir])
    infos = {p: read_info(p / "Info.cfg") for p in patients}

    # Splits are drawn per patient so that a patient's ED and ES frames never straddle them.
    training = [p.name for p, s in patients.items() if s == "Tr"]
    by_case = {f"{pid}_{phase}": pid for pid in training for phase in ("ED", "ES")}
    wanted = [by_case.get(c, c) for c in test_cases]
    unknown = [c for c in wanted if c not in training]
    if unknown:
        raise ConfigError(f"--test-cases: '{unknown[0]}' is not a training patient or case")
    moved = _common.split_cases(training, test_cases=wanted, test_fraction=test_fraction, seed=seed) if training else {}
    extra = {"conversion": {"source": SOURCE, "patients": {p.name: infos[p].to_json() for p in patients}}}
    with _common.dataset_output(out, modality="MR", name=name, labels=ACDC_LABELS, extra=extra, overwrite=overwrite) as ds:
        for patient, official in tqdm(list(patients.items()), desc="acdc", unit="patient", disable=None):
            target = moved.get(patient.name, official)
            for phase, frame in (("ED", infos[patient].ed), ("ES", infos[patient].es)):
                image_path, label_path = _frame_file(patient, frame, False), _frame_file(patient, frame, True)
                if not image_path.exists():
                    raise InputError(image_path, f"{phase} frame {frame} (from Info.cfg) not found")
                if not label_path.exists():
                    raise InputError(label_path, f"ground truth of the {phase} frame {frame} not found")
                image, label = read_image(image_path), read_label(label_path)
                problem = same_geometry(image, label, atol=tolerance)
                if problem:
                    raise InputError(label_path, f"does not fit its frame {image_path.name}: {problem}")
                ds.add(f"{patient.name}_{phase}", image.array, reference=image, label=label.array, split=target, label_source=label_path)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, metavar="DIR", help="ACDC database/ (or training/testing parent, or patients folder)")
    parser.add_argument("--split", choices=("all", "training", "testing"), default="all", help="official folders to convert (default all)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to create")
    _common.add_split_arguments(parser, cases="training patients (or cases) moved to imagesTs/labelsTs",
                                fraction="random fraction of training patients for the test split")
    parser.add_argument("--tolerance", type=float, default=1e-3, metavar="MM", help="largest frame/ground-truth affine difference (default 0.001 mm)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    out = convert_acdc(
        args.input, args.out, split=args.split, test_cases=args.test_cases, test_fraction=args.test_fraction,
        seed=args.seed, name=args.name, tolerance=args.tolerance, overwrite=args.overwrite,
    )
    print(_common.describe(out))
    return 0
