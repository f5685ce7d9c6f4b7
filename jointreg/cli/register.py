"""Register a moving image onto a fixed image with a trained registration model.

Examples:
  jointreg register --model RUN/export/registration moving.nii.gz fixed.nii.gz --out reg/
  jointreg register --model MODEL vol.nii.gz vol.nii.gz --labels vol_label.nii.gz \\
      --slice-map 17:11-23 --out propagated/

2D models register volumes slice by slice along the model's slicing axis: fixed slice k from
moving slice k (equal slice counts needed), or as a slice map says (M:F = moving slice M onto
fixed slice F; M:F1-F2 for a range; indices from 0; fixed slices not in the map are left 0).
A 2D NIfTI is accepted only with --axis (2 = treat it as one slice X×Y×1). 3D models register
whole volumes. Slices/volumes are resampled to the model's training grid and the result is
carried back to the FIXED image's grid, where everything is written with its affine and header:

  warped.nii.gz         the moving image (its own intensities) warped onto the fixed grid
  warped_labels.nii.gz  the --labels map warped (one-hot + linear + argmax; --nearest)
  displacement.nii.gz   the displacement field d, pull convention warped(x) = moving(x + d(x));
                        --field ants (default): X×Y×Z×1×3, mm, ITK's LPS frame, intent VECTOR
                        (antsApplyTransforms -t displacement.nii.gz); --field nifti: mm, RAS,
                        intent DISPVECT; --field voxel: X×Y×Z×3 in fixed-grid voxels
  register.json         pairs, per-pair NCC / folding % / SDlogJ on the model grid, units

Details (grids, units, axis conventions): the docstring of jointreg.inference.register.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jointreg.cli._options import add_backend_option, add_inference_options

NAME = "register"
HELP = "warp a moving image (and its labels) onto a fixed image with a registration model"
ORDER = 45

FIELD_FORMATS = ("ants", "nifti", "voxel")  # jointreg.inference.register_output.FIELD_FORMATS (kept import-free)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("moving", type=Path, help="moving image (NIfTI)")
    parser.add_argument("fixed", type=Path, help="fixed image (NIfTI): the outputs take its grid")
    parser.add_argument("--model", type=Path, required=True, metavar="MODEL",
                        help="registration model folder, e.g. RUN/export/registration")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder to create")
    parser.add_argument("--labels", type=Path, metavar="LABELS", help="label map of the moving image, warped along")
    parser.add_argument("--slice-map", action="append", default=[], metavar="M:F[,M:F...]",
                        help="moving slice M onto fixed slice F (M:F1-F2 for a range; repeatable); 2D models")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2),
                        help="slicing axis (default: the model's); needed for 2D images (2 = X×Y as one slice)")
    parser.add_argument("--nearest", action="store_true", help="warp labels by nearest neighbour (default: one-hot + linear + argmax)")
    parser.add_argument("--field", choices=FIELD_FORMATS, default="ants",
                        help="displacement field format (default ants: mm, LPS, 5D vector NIfTI)")
    add_inference_options(parser, batch_unit="slice pairs")
    add_backend_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    from jointreg.inference.register import register_files
    from jointreg.inference.register_inputs import parse_slice_map
    from jointreg.utils.atomic import check_writable_output

    check_writable_output(args.out, atomic=True)
    slice_map = parse_slice_map(args.slice_map) if args.slice_map else None
    summary = register_files(
        args.model, args.moving, args.fixed, args.out, labels=args.labels, slice_map=slice_map,
        axis=args.axis, label_mode="nearest" if args.nearest else "linear", field_format=args.field,
        device=args.device, batch_size=args.batch_size, overwrite=args.overwrite, backend=args.backend,
    )
    metrics = summary["metrics_on_model_grid"]
    line = f"registered {metrics.get('pairs', 0)} pair(s)"
    if metrics.get("pairs"):
        line += (
            f": NCC {metrics['identity_ncc']:.3f} -> {metrics['ncc']:.3f}, "
            f"folding {metrics['folding_percent']:.2f} %, SDlogJ {metrics['sdlogj']:.3f}"
        )
    if summary["unregistered_fixed_slices"]:
        line += f"; {len(summary['unregistered_fixed_slices'])} fixed slice(s) not in the slice map (left 0)"
    print(line)
    print(f"wrote {', '.join(summary['files'])} to {args.out}")
    return 0
