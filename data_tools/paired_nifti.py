"""Convert image/label NIfTI pairs found by two globs into a dataset.

Each glob holds one '*' that stands for the case id: with
--images 'data/image_*.nii.gz' --labels 'data/label_*.nii.gz', image_3.nii.gz pairs with
label_3.nii.gz and becomes case "003" ("chaos_003" with --case-prefix chaos_). Numeric ids are
zero-padded to a common width so that they sort like numbers.

Labels: --map SRC=NAME:ID maps each source value to a class (e.g. 200=myocardium:2 500=lv:3
600=rv:1); 0 is background unless mapped. Values missing from the map stop the conversion with
the file and the values named, unless --unmapped background. Without --map the values are kept
and named label_<value>. Without --labels the cases are unlabelled: each training case gets a
label that is "ignore" everywhere (as jointreg sparsify writes for unlabelled volumes).

Images are stored as float32 and labels as integers, both with the image's affine and header; a
label whose shape or affine differs from its image (beyond --tolerance mm) is an error.

Examples:
  jointreg prepare paired-nifti --images '../shared/data/ms_cmr/image_*.nii.gz' \\
      --labels '../shared/data/ms_cmr/label_*.nii.gz' --map 200=myocardium:2 500=lv:3 600=rv:1 \\
      --modality MR --case-prefix mscmr_ --out data/ms_cmr
  jointreg prepare paired-nifti --images '../shared/data/chaos_t2/image_*.nii.gz' \\
      --labels '../shared/data/chaos_t2/label_*.nii.gz' --modality T2 --case-prefix chaos_ \\
      --map 1=liver:1 2=kidney_right:2 3=kidney_left:3 4=spleen:4 --out data/chaos_t2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data_tools import _common

SOURCE = "paired-nifti"
HELP = "image/label NIfTI pairs matched by two globs (e.g. CHAOS MR, MS-CMRSeg)"


def convert_paired_nifti(
    images: str,
    out: str | Path,
    *,
    modality: str,
    labels: str | None = None,
    label_map: _common.LabelMap | None = None,
    unmapped: str = "error",
    case_prefix: str = "",
    test_cases: Sequence[str] = (),
    test_fraction: float = 0.0,
    seed: int = 0,
    name: str = "",
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> Path:
    """Convert NIfTI image/label pairs into a canonical dataset.

    Args:
        images: glob with one ``*`` (the case id), e.g. ``data/image_*.nii.gz``.
        out: dataset folder to create.
        modality: channel name for ``dataset.json`` (``CT``, ``MR``, ``T2``, ...).
        labels: glob for the label files, with the same ``*``; ``None`` for images only.
        label_map: source value -> class; ``None`` keeps the values.
        unmapped: ``"error"`` or ``"background"`` for source values missing from the map.
        case_prefix: text in front of every case id.
        test_cases: case ids (raw or final) that go to ``imagesTs``/``labelsTs``.
        test_fraction: or a random fraction of the cases, drawn with ``seed``.
        name: dataset name (default: the folder name).
        tolerance: largest affine difference (mm) accepted between an image and its label.
        overwrite: replace an existing ``out``.

    Returns:
        The dataset folder.

    Raises:
        InputError: unreadable, truncated, 4D or NaN images; labels that do not fit their image
            or hold unmapped values; globs that match nothing; unpaired files; an existing
            ``out``.
        ConfigError: a malformed glob, label map or split.
    """
    from tqdm import tqdm

    from jointreg.data.nifti import read_image, read_label, same_geometry
    from jointreg.errors import InputError

    out = Path(out)
    image_files = _common.match_glob(images, what="images")
    label_files = _common.match_glob(labels, what="labels") if labels is not None else {}
    inputs = [p.parent for p in [*image_files.values(), *label_files.values()]]
    _common.check_new_output(out, overwrite=overwrite, inputs=set(inputs))
    raw_ids = _common.pair_files(image_files, label_files) if labels is not None else list(image_files)
    case_ids = _common.make_case_ids(raw_ids, case_prefix)
    split = _common.split_cases(
        list(case_ids.values()), test_cases=test_cases, test_fraction=test_fraction, seed=seed, aliases=case_ids
    )
    extra = {
        "conversion": {
            "source": SOURCE,
            "label_map": label_map.to_json() if label_map else None,
            "cases": {case_ids[r]: image_files[r].name for r in raw_ids},
        }
    }
    declared = label_map.labels if label_map is not None else None
    with _common.dataset_output(out, modality=modality, name=name, labels=declared, extra=extra, overwrite=overwrite) as ds:
        for raw in tqdm(raw_ids, desc="paired-nifti", unit="case", disable=None):
            image = read_image(image_files[raw])
            label_array = None
            label_path = label_files.get(raw)
            if label_path is not None:
                label = read_label(label_path)
                problem = same_geometry(image, label, atol=tolerance)
                if problem:
                    raise InputError(label_path, f"does not fit its image {image_files[raw].name}: {problem}")
                label_array = label.array
                if label_map is not None:
                    label_array = label_map.apply(label_array, unmapped=unmapped, source=label_path)
            ds.add(case_ids[raw], image.array, reference=image, label=label_array, split=split[case_ids[raw]], label_source=label_path)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, metavar="GLOB", help="image files, one '*' for the case id (quote it)")
    parser.add_argument("--labels", metavar="GLOB", help="label files, same '*' (omit for an unlabelled dataset)")
    _common.add_label_map_arguments(parser)
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, metavar="MM",
        help="largest affine difference accepted between an image and its label (default 0.001 mm)",
    )
    _common.add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    out = convert_paired_nifti(
        args.images,
        args.out,
        modality=args.modality,
        labels=args.labels,
        label_map=_common.label_map_from_args(args),
        unmapped=args.unmapped,
        case_prefix=args.case_prefix,
        test_cases=args.test_cases,
        test_fraction=args.test_fraction,
        seed=args.seed,
        name=args.name,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
    )
    print(_common.describe(out))
    return 0
