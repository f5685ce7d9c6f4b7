"""Run the whole pipeline on a synthetic liver-CT phantom: data, few labels, UNet alone vs
IUNet (the same labelling rules, no registration) vs RUNet (UNet + FMIRNet, joint),
evaluation table. About 7 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "end-to-end demo on a synthetic liver-CT phantom (minutes on a CPU)"
ORDER = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="jointreg-demo", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed")
    parser.add_argument("--train-cases", type=int, default=10, help="training phantoms (default: %(default)s)")
    parser.add_argument("--test-cases", type=int, default=4, help="test phantoms (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds); numbers are meaningless")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from jointreg.demo import DemoSettings, run_demo
    from jointreg.utils.atomic import check_writable_output

    check_writable_output(args.out)
    settings = DemoSettings(train_cases=args.train_cases, test_cases=args.test_cases, seed=args.seed, quick=args.quick)
    run_demo(args.out, settings, overwrite=args.overwrite, progress=not args.no_progress)
    return 0
