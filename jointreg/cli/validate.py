"""Check a dataset folder before training on it.

Reads every file of DATASET (canonical nnU-Net v2 raw layout) and reports, one line per
problem as 'path: problem' on stderr, everything that would break training or evaluation:
missing dataset.json or folders, unpaired images and labels, unreadable or truncated NIfTI
files, colour, complex or unknown datatypes, zero or non-finite voxel spacing, scaled label maps,
non-3D arrays, image/label shape or affine mismatches, NaN intensities, label values not
declared in dataset.json, a wrong numTraining, label ids with gaps (nnU-Net refuses them),
files longer than their header says (a damaged dim, datatype or vox_offset).
Warnings (legal but worth knowing, e.g. images whose header scales their stored values,
scl_slope/scl_inter) go to stderr as 'path: warning: ...'. A short summary (cases, slices per
annotation status, voxels per class, spacing) goes to stdout. Exit code 2 when there is any
problem.

Example:
    jointreg validate data/liver --json liver_report.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "validate"
HELP = "check a dataset: files, pairing, geometry, label values"
ORDER = 15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder (with dataset.json)")
    parser.add_argument("--json", type=Path, metavar="REPORT", dest="json_report", help="also write the full report as JSON")


def run(args: argparse.Namespace) -> int:
    from jointreg.data.validate import validate_dataset
    from jointreg.utils.atomic import write_json

    report = validate_dataset(args.dataset)
    for path, message in report.warnings:
        print(f"{path}: warning: {message}", file=sys.stderr)
    for path, message in report.problems:
        print(f"{path}: {message}", file=sys.stderr)
    print(report.format_summary())
    if args.json_report is not None:
        write_json(args.json_report, report.to_dict())
    return 2 if report.problems else 0
