"""``jointreg prepare dicom``: cases, options and the conversion loop."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from data_tools import _common
from data_tools.dicom.masks import PNG_ORDERS, PngLabels, align_mask, read_png_masks
from data_tools.dicom.series import read_dicom_series

# The converter's entry in ``jointreg prepare`` (re-exported by data_tools.dicom).
SOURCE = "dicom"
HELP = "DICOM series, one folder per case, with optional NIfTI or PNG masks (CHAOS CT layout)"


def find_cases(input_dir: str | Path | None, series_dir: str | Path | None, case_id: str | None = None) -> dict[str, Path]:
    """Raw case id -> series folder, from ``--input`` (one folder per case) or ``--series``.

    ``--input`` may be a glob whose ``*`` is the case id, to reach one series inside each case
    (CHAOS MR: ``MR/*/T2SPIR``).

    Raises:
        ConfigError: both or neither given.
        InputError: missing folder, or an input folder without case folders.
    """
    from jointreg.errors import ConfigError, InputError

    if (input_dir is None) == (series_dir is None):
        raise ConfigError("give --input (one folder per case) or --series (one series), not both")
    if series_dir is not None:
        series_dir = Path(series_dir)
        if not series_dir.is_dir():
            raise InputError(series_dir, "folder not found")
        return {case_id or series_dir.resolve().name: series_dir}
    if "*" in str(input_dir):
        return _common.match_glob(str(input_dir), what="input", folders=True)
    root = Path(input_dir)  # type: ignore[arg-type]
    if not root.is_dir():
        raise InputError(root, "folder not found")
    cases = {p.name: p for p in sorted(root.iterdir(), key=lambda p: _common.natural_key(p.name)) if p.is_dir() and not p.name.startswith(".")}
    if not cases:
        raise InputError(root, "holds no case folders (expected one folder per case; use --series for a single series)")
    return cases


def _mask_for(pattern: str, raw: str, single: bool) -> Path:
    from jointreg.errors import ConfigError

    if "*" in pattern:
        if pattern.count("*") != 1:
            raise ConfigError(f"--masks-nifti '{pattern}' may hold one '*' (the case folder name)")
        return Path(os.path.expanduser(pattern.replace("*", raw)))
    if not single:
        raise ConfigError("--masks-nifti needs a '*' standing for the case folder name when converting several cases")
    return Path(os.path.expanduser(pattern))


def convert_dicom(
    out: str | Path,
    *,
    input_dir: str | Path | None = None,
    series_dir: str | Path | None = None,
    case_id: str | None = None,
    modality: str | None = None,
    masks_nifti: str | None = None,
    png_masks: str | None = None,
    png_labels: PngLabels | None = None,
    png_order: str = "name",
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
    """Convert DICOM series (with optional masks) into a canonical dataset.

    Args:
        out: dataset folder to create.
        input_dir: folder with one subfolder per case (give this or ``series_dir``).
        series_dir: a single series' folder.
        case_id: case id for ``series_dir`` (default: the folder name).
        modality: channel name; default the DICOM Modality tag (must agree across cases).
        masks_nifti: NIfTI mask path pattern, ``*`` = case folder name (plain path with
            ``series_dir``).
        png_masks: name of the PNG folder inside each case folder (CHAOS: ``Ground``).
        png_labels: how PNG values become classes (required with ``png_masks``).
        png_order: PNG ↔ slice pairing, see :func:`read_png_masks`.
        label_map: source value -> class for NIfTI masks; ``None`` keeps the values.
        unmapped: ``"error"`` or ``"background"`` for values missing from a map.
        case_prefix, test_cases, test_fraction, seed, name, overwrite: as for paired-nifti.
        tolerance: largest mask/series affine difference in mm.

    Returns:
        The dataset folder.

    Raises:
        InputError: see :func:`read_dicom_series`, :func:`read_png_masks`, :func:`align_mask`.
        ConfigError: inconsistent options.
    """
    from tqdm import tqdm

    from jointreg.errors import ConfigError, InputError

    out = Path(out)
    if masks_nifti and png_masks:
        raise ConfigError("give --masks-nifti or --png-masks, not both")
    if png_masks and png_labels is None:
        raise ConfigError("--png-masks needs --png-label (e.g. --png-label liver:1)")
    if png_labels is not None and not png_masks:
        raise ConfigError("--png-label is only used with --png-masks")
    if label_map is not None and not masks_nifti:
        raise ConfigError("--map applies to --masks-nifti; PNG masks use --png-label")
    folders = find_cases(input_dir, series_dir, case_id)
    _common.check_new_output(out, overwrite=overwrite, inputs=list(folders.values()))
    case_ids = _common.make_case_ids(folders, case_prefix)
    masks: dict[str, Path] = {}
    if masks_nifti:
        masks = {raw: _mask_for(masks_nifti, raw, series_dir is not None) for raw in folders}
        for raw, path in masks.items():
            if not path.is_file():
                raise InputError(path, f"mask of case '{raw}' not found (--masks-nifti)")
    split = _common.split_cases(list(case_ids.values()), test_cases=test_cases, test_fraction=test_fraction, seed=seed, aliases=case_ids)

    if png_labels is not None:
        declared: dict[str, int] | None = png_labels.labels
    elif label_map is not None:
        declared = label_map.labels
    elif not masks_nifti:
        declared = {_common.BACKGROUND: 0}
    else:
        declared = None
    extra = {
        "conversion": {
            "source": SOURCE,
            "label_map": label_map.to_json() if label_map else None,
            "cases": {case_ids[r]: str(p) for r, p in folders.items()},
        }
    }
    with _common.dataset_output(out, modality=modality, name=name, labels=declared, extra=extra, overwrite=overwrite) as ds:
        for raw, folder in tqdm(list(folders.items()), desc="dicom", unit="case", disable=None):
            exclude = [folder / png_masks] if png_masks else []
            series = read_dicom_series(folder, exclude=exclude)
            if modality is None:
                if ds.modality not in (None, series.modality):
                    raise ConfigError(f"cases have different DICOM modalities ({ds.modality}, {series.modality} in {folder}); pass --modality")
                if not series.modality:
                    raise InputError(folder, "the DICOM files carry no Modality tag; pass --modality")
                ds.modality = series.modality
            label = None
            label_source: Path | None = None
            if masks_nifti:
                label_source = masks[raw]
                label = align_mask(label_source, series, tolerance=tolerance)
                if label_map is not None:
                    label = label_map.apply(label, unmapped=unmapped, source=label_source)
            elif png_masks:
                label_source = folder / png_masks
                values = read_png_masks(label_source, series, order=png_order)
                label = png_labels.apply(values, unmapped=unmapped, source=label_source)  # type: ignore[union-attr]
            ds.add(case_ids[raw], series.array, affine=series.affine, label=label, split=split[case_ids[raw]], label_source=label_source)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="DIR", help="folder with one folder per case, or a glob like 'MR/*/T2SPIR' ('*' = case id)")
    source.add_argument("--series", type=Path, metavar="DIR", help="one series' folder (a single case)")
    parser.add_argument("--case-id", metavar="ID", help="case id for --series (default: the folder name)")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--masks-nifti", metavar="GLOB", help="NIfTI mask per case, '*' = case folder name")
    masks.add_argument("--png-masks", metavar="SUBDIR", help="folder of one PNG per slice inside each case folder (CHAOS CT: Ground)")
    parser.add_argument("--png-label", nargs="+", action="extend", default=[], metavar="[VALUE=]NAME:ID", help="PNG classes: liver:1 (non-zero = liver) or 63=liver:1 126=kidney_right:2 ...")
    parser.add_argument("--png-order", choices=PNG_ORDERS, default="name", help="PNG n <-> DICOM file n by name (default), InstanceNumber, or slice n by position")
    _common.add_label_map_arguments(parser)
    parser.add_argument("--tolerance", type=float, default=1e-3, metavar="MM", help="largest mask/series affine difference (default 0.001 mm)")
    _common.add_output_arguments(parser, modality_required=False)


def run(args: argparse.Namespace) -> int:
    out = convert_dicom(
        args.out,
        input_dir=args.input,
        series_dir=args.series,
        case_id=args.case_id,
        modality=args.modality,
        masks_nifti=args.masks_nifti,
        png_masks=args.png_masks,
        png_labels=PngLabels.parse(args.png_label) if args.png_label else None,
        png_order=args.png_order,
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
