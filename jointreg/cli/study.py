"""Run a comparison study (FCN/UNet alone, RFCN/RUNet, VFCN/VUNet, FCN*/UNet*) from a study YAML.

Runs that already finished with the same recipe are reused; an interrupted run is resumed. A run
whose registration warm-up is the same as one another run of the study already did (RUNet and
RFCN: only the segmentor differs) starts after it, with exactly the weights its own would give.
A run that finished with other settings (an edited recipe) is refused unless --retrain.
Example:
  jointreg study recipes/study_chaos_t2_liver.yaml
  jointreg study recipes/study_chaos_t2_liver.yaml --only RUNet --set "seeds=[0, 1]"
"""

from __future__ import annotations

import argparse

NAME = "study"
HELP = "run the comparison table of several methods (and seeds) from a study YAML"
ORDER = 35


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study YAML (see recipes/study_*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study field, e.g. --set output=runs/s2 (repeatable)")
    parser.add_argument("--only", nargs="+", metavar="METHOD", help="train only these methods (others are reused if finished)")
    parser.add_argument("--retrain", action="store_true",
                        help="train again (replacing them) the runs that finished with other settings than the study's "
                             "now; without it such a run is refused before anything trains")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from jointreg.training.study import load_study, run_study
    from jointreg.utils.atomic import check_writable_output

    study, _ = load_study(args.study, args.overrides)
    check_writable_output(study.output)  # before hours of training, not when the table is written
    run_study(args.study, overrides=args.overrides, progress=not args.no_progress, only=args.only,
              retrain=args.retrain)
    return 0
