"""How long evaluation takes: 20 synthetic volumes of 256x256x40 with 4 foreground classes.

Prints one JSON object: seconds for the in-memory path (``evaluate_arrays``), for the folder path
(``evaluate_folders`` reading .nii.gz files, serial and with worker processes) and for writing the
report (CSV, JSON, Markdown, box plots), plus the machine it ran on. The issue asks for "well under
a minute on 2 cores".

    .venv/bin/python benchmarks/evaluate_speed.py [--cases 20] [--shape 256 256 40] [--workers 2]

The synthetic data: per case, four ellipsoid organs of different sizes (a liver-sized one, two
kidney-sized, one small) on 0.8 x 0.8 x 2.5 mm voxels; the prediction is the truth shifted by a
few voxels with spurious islands added, so that every distance computation has real work to do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING = (0.8, 0.8, 2.5)
CLASSES = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "lesion": 4}


def synthetic_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` int16 label maps of ``shape`` with four ellipsoid classes."""
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    size = np.asarray(shape, dtype=np.float64)
    organs = [  # centre and radii as fractions of the volume size
        ((0.45, 0.42, 0.5), (0.28, 0.24, 0.35)),
        ((0.30, 0.72, 0.5), (0.09, 0.09, 0.25)),
        ((0.70, 0.72, 0.5), (0.09, 0.09, 0.25)),
        ((0.60, 0.25, 0.5), (0.06, 0.05, 0.15)),
    ]

    def draw(offset: np.ndarray) -> np.ndarray:
        label = np.zeros(shape, np.int16)
        for class_id, (centre, radii) in enumerate(organs, start=1):
            c = np.asarray(centre) * size + offset + rng.uniform(-1, 1, 3)
            r = np.asarray(radii) * size * rng.uniform(0.9, 1.1, 3)
            inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1.0
            label[inside] = class_id
        return label

    gt = draw(np.zeros(3))
    pred = draw(rng.uniform(-4, 4, 3) * np.array([1, 1, 0.3]))
    for _ in range(6):  # spurious islands
        corner = [int(rng.integers(0, s - 6)) for s in shape]
        pred[tuple(slice(c, c + 5) for c in corner)] = int(rng.integers(1, 5))
    return pred, gt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 40))
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel folder run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)

    import monai.metrics.utils  # noqa: F401  (import cost measured separately below)

    from jointreg.data.nifti import write_volume
    from jointreg.metrics.folders import evaluate_folders
    from jointreg.metrics.report import write_report
    from jointreg.metrics.segmentation import evaluate_arrays

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    cases = [(f"case{i:03d}", *synthetic_case(rng, shape), SPACING) for i in range(args.cases)]
    generate_s = time.perf_counter() - start

    start = time.perf_counter()
    rows = evaluate_arrays(cases, CLASSES)
    in_memory_s = time.perf_counter() - start

    affine = np.diag([*SPACING, 1.0])
    with tempfile.TemporaryDirectory(prefix="jointreg-evalbench-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"}, "numTraining": 0, "file_ending": ".nii.gz",
            "labels": {"background": 0, **CLASSES},
        }))
        for case, pred, gt, _ in cases:
            write_volume(tmp_path / "pred" / f"{case}.nii.gz", pred, affine=affine, is_label=True)
            write_volume(tmp_path / "labelsTs" / f"{case}.nii.gz", gt, affine=affine, is_label=True)
        start = time.perf_counter()
        serial = evaluate_folders(tmp_path / "pred", tmp_path, progress=False)
        folder_serial_s = time.perf_counter() - start
        start = time.perf_counter()
        parallel = evaluate_folders(tmp_path / "pred", tmp_path, workers=args.workers, progress=False)
        folder_parallel_s = time.perf_counter() - start
        if parallel.rows != serial.rows:
            raise SystemExit("parallel and serial evaluation disagree")
        start = time.perf_counter()
        write_report(serial.rows, tmp_path / "report", info=serial.info)
        report_s = time.perf_counter() - start

    missed = sum(r.missed for r in rows)
    result = {
        "benchmark": "evaluate_speed",
        "cases": args.cases,
        "shape": list(shape),
        "spacing_mm": list(SPACING),
        "classes": len(CLASSES),
        "rows": len(rows),
        "missed_rows": int(missed),
        "generate_data_s": round(generate_s, 3),
        "evaluate_in_memory_s": round(in_memory_s, 3),
        "evaluate_in_memory_s_per_case": round(in_memory_s / max(args.cases, 1), 4),
        "evaluate_folders_serial_s": round(folder_serial_s, 3),
        f"evaluate_folders_{args.workers}_workers_s": round(folder_parallel_s, 3),
        "write_report_s": round(report_s, 3),
        "total_cli_equivalent_serial_s": round(folder_serial_s + report_s, 3),
        "mean_liver_dice": round(float(np.mean([r.dice for r in rows if r.class_id == 1])), 4),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "note": "wall-clock; excludes interpreter start and the MONAI import (about 2-3 s once per process)",
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
