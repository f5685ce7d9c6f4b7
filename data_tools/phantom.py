"""Generate a dataset of synthetic phantoms with exact labels (no input data needed).

Kinds (see jointreg.data.phantoms):
  liver-ct     axial portal-venous abdominal CT in HU, 128x128x44 at 2.8x2.8x5 mm;
               labels background 0, liver 1, kidney_right 2, kidney_left 3, spleen 4 (CHAOS ids)
  cardiac-mr   short-axis bSSFP cine stack, 128x128x12 at 1.8x1.8x8 mm;
               labels background 0, rv 1, myocardium 2, lv 3 (ACDC ids)
  echo-a4c     apical four-chamber echo cine loop (2D + time), 112x112x32 at 1.5x1.5 mm x 33 ms:
               axis 2 is time, its spacing the frame interval in ms;
               labels background 0, lv 1, myocardium 2, atrium 3 (CAMUS ids)

Anatomy changes smoothly and non-rigidly from slice to slice and from case to case; each case is
exactly reproducible from --seed. Training cases go to imagesTr/labelsTr, test cases to
imagesTs/labelsTs. --shape alone keeps the kind's field of view (coarser or finer voxels);
--shape with --spacing sets both.

Examples:
  jointreg prepare phantom --kind liver-ct --out data/liver_phantom
  jointreg prepare phantom --kind cardiac-mr --cases 20 --test-cases 5 --seed 7 --out data/heart
  jointreg prepare phantom --kind liver-ct --shape 64 64 22 --cases 4 --test-cases 0 --out data/tiny
  jointreg prepare phantom --kind echo-a4c --out data/echo   # then, ED/ES annotated only:
  jointreg sparsify data/echo --out data/echo_ed_es --slices-per-volume 2 --strategy extremes --classes lv
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

SOURCE = "phantom"
HELP = "synthetic CT liver / cardiac MR / echo phantoms with exact labels"


def convert_phantom(
    out: str | Path,
    *,
    kind: str = "liver-ct",
    cases: int = 12,
    test_cases: int = 4,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a phantom dataset; see :func:`jointreg.data.phantoms.generate_phantom_dataset`.

    Args:
        out: dataset folder to create.
        kind: ``liver-ct``, ``cardiac-mr`` or ``echo-a4c``.
        cases: training cases.
        test_cases: test cases (0: no test split).
        seed: dataset seed.
        shape: grid ``(X, Y, Z)``; default the kind's.
        spacing: voxel size in millimetres (``echo-a4c``: the third is the frame interval in
            ms); default keeps the kind's field of view.
        overwrite: replace an existing ``out``.
        progress: show a progress bar (only on a terminal).

    Returns:
        The dataset folder.

    Raises:
        InputError: ``out`` exists (without ``overwrite``).
        ConfigError: unknown kind, bad counts, shape or spacing.
    """
    from jointreg.data.phantoms import generate_phantom_dataset

    return generate_phantom_dataset(
        out, kind, n_train=cases, n_test=test_cases, seed=seed,
        shape=tuple(shape) if shape is not None else None,  # type: ignore[arg-type]
        spacing=tuple(spacing) if spacing is not None else None,  # type: ignore[arg-type]
        overwrite=overwrite, progress=progress,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", default="liver-ct", help="phantom kind: liver-ct, cardiac-mr or echo-a4c (default liver-ct)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--cases", type=int, default=12, metavar="N", help="training cases (default 12)")
    parser.add_argument("--test-cases", type=int, default=4, metavar="M", help="test cases (default 4; 0 for none)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="grid size in voxels")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="voxel size in mm (echo-a4c: SZ is the frame interval in ms)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    out = convert_phantom(
        args.out, kind=args.kind, cases=args.cases, test_cases=args.test_cases, seed=args.seed,
        shape=args.shape, spacing=args.spacing, overwrite=args.overwrite,
    )
    split = f"{args.cases} training" + (f" + {args.test_cases} test" if args.test_cases else "")
    print(f"wrote {split} {args.kind} phantom cases to {out}")
    return 0
