"""Evaluate predicted label maps against ground truth: Dice, HD, HD95, ASSD in millimetres.

  jointreg evaluate --pred PRED_DIR --gt GT --out REPORT [--labels dataset.json]
  jointreg evaluate --compare REPORT_A REPORT_B [...] --out DIR [--names A B ...]

Files are matched by case id ({case}.nii.gz in both folders). GT is a labels folder or a dataset
folder (then labelsTs/, else labelsTr_full/, else labelsTr/: the first holding a predicted case).
Voxels labelled 'ignore' in the ground truth are excluded. A structure present in only one of
prediction and ground truth is 'missed': Dice 0, distances NaN, counted in every summary.

REPORT gets per_case.csv, summary.json, summary.md, boxplot_<metric>.png, and montages/{case}.png
with montages.md: per case a few slices with ground-truth and predicted contours, worst case
first, linked from summary.md. Classes that the predictions' label map (segmentation.json or
dataset.json in --pred, as `segment`, a run and `pseudolabel` write) lacks are listed as not
scored, never as missed. A case without a
prediction gets 'missing' rows and makes the command fail (exit 2) unless --allow-missing.
--compare writes comparison.md/.json and paired_differences.csv: per-case paired differences
against the first report and a paired Wilcoxon signed-rank test per class and metric.
Definitions: docs/metrics.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "evaluate"
HELP = "Dice / HD / HD95 / ASSD (mm) of predictions against ground truth; compare reports"
ORDER = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", type=Path, metavar="DIR", help="folder of predicted label maps {case}.nii.gz")
    parser.add_argument("--gt", type=Path, metavar="DIR", help="ground-truth labels folder or dataset folder")
    parser.add_argument(
        "--labels", type=Path, metavar="JSON",
        help="dataset.json (or dataset folder) with the label map; default: found next to the data",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder to create")
    parser.add_argument(
        "--classes", nargs="+", metavar="NAME", help="evaluate only these classes (names or ids); default: all foreground"
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="succeed even if some cases have no prediction"
    )
    parser.add_argument(
        "--montage-slices", type=int, default=4, metavar="N",
        help="slices per case in the montages (default 4; 0: no montages)",
    )
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="processes evaluating cases in parallel (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument(
        "--compare", nargs="+", type=Path, metavar="REPORT",
        help="compare two or more report folders (the first is the baseline) instead of evaluating",
    )
    parser.add_argument("--names", nargs="+", metavar="NAME", help="display names of the --compare reports")


def _check_out(args: argparse.Namespace) -> None:
    from jointreg.errors import InputError
    from jointreg.utils.atomic import check_writable_output

    check_writable_output(args.out, atomic=True)
    if args.out.exists() and not args.overwrite:
        raise InputError(args.out, "already exists (pass --overwrite to replace it)")


def _run_compare(args: argparse.Namespace) -> int:
    from jointreg.errors import ConfigError
    from jointreg.metrics.compare import compare_reports, write_comparison

    if args.pred or args.gt or args.labels or args.classes:
        raise ConfigError("--compare takes report folders; do not combine it with --pred/--gt/--labels/--classes")
    _check_out(args)
    comparison = compare_reports(args.compare, args.names)
    write_comparison(comparison, args.out, overwrite=args.overwrite)
    names = [r["name"] for r in comparison["reports"]]
    for class_name, entry in comparison["classes"].items():
        dice = entry["dice"]
        for other in names[1:]:
            d = dice["differences"][other]
            diff = "–" if d["mean_difference"] is None else f"{d['mean_difference']:+.3f}"
            p = "–" if d["p_value"] is None else f"{d['p_value']:.3g}"
            print(f"{class_name}: Dice {other} − {names[0]} = {diff} (n={d['n_pairs']}, p={p})")
    print(f"comparison written to {args.out}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from jointreg.errors import ConfigError, JointregError
    from jointreg.metrics.folders import evaluate_folders
    from jointreg.metrics.report import write_report

    if args.pred is None or args.gt is None:
        raise ConfigError("give --pred DIR and --gt DIR (or --compare REPORT REPORT ...)")
    if args.names:
        raise ConfigError("--names only applies to --compare")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.montage_slices < 0:
        raise ConfigError(f"--montage-slices must be at least 0, got {args.montage_slices}")
    _check_out(args)
    result = evaluate_folders(
        args.pred, args.gt, labels=args.labels, classes=args.classes, workers=args.workers, progress=True,
        montage_slices=args.montage_slices,
    )
    summary = write_report(result.rows, args.out, info=result.info, overwrite=args.overwrite, montages=result.montages)
    not_predicted = result.info.get("classes_not_predicted")
    if not_predicted:
        print(f"not scored (not in the predictions' label map {result.info['prediction_label_map']}): "
              f"{', '.join(not_predicted)}")
    for class_name, entry in summary["classes"].items():
        dice, hd95 = entry["dice"], entry["hd95"]
        dice_text = "–" if dice["mean"] is None else f"{dice['mean']:.3f} ± {dice['std']:.3f}"
        hd95_text = "–" if hd95["mean"] is None else f"{hd95['mean']:.2f} mm"
        print(f"{class_name}: Dice {dice_text}, HD95 {hd95_text}, missed {entry['missed']}, missing {entry['missing']}")
    print(f"report written to {args.out}")
    if result.missing_cases and not args.allow_missing:
        shown = ", ".join(result.missing_cases[:5]) + (" ..." if len(result.missing_cases) > 5 else "")
        raise JointregError(
            f"{len(result.missing_cases)} case(s) have no prediction ({shown}); they are listed as "
            f"'missing' in {args.out / 'per_case.csv'}; pass --allow-missing to accept this"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _run_compare(args)
    return _run_evaluate(args)
