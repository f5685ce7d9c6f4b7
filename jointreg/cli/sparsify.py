"""Simulate few labels: keep k slices per volume (or n whole volumes), the rest 'ignore'.

Writes a complete new dataset OUT: the images (hard links when possible), labelsTr/ with every
voxel outside the kept slices set to the 'ignore' label, labelsTr_full/ with the original
labels (for evaluation), the test split unchanged, dataset.json with 'ignore' added, and a
sparsify.json manifest (strategy, seed, axis and kept slices per case).

Strategies: 'largest' keeps the slices with the largest foreground area, 'even' spreads them
evenly over the foreground extent (one slice: the middle), 'random' draws them among the
foreground slices with --seed, 'extremes' takes the largest and the smallest area in turn (on a
cine loop with --classes lv and 2 slices: the end-diastolic and end-systolic frames).

Example:
    jointreg sparsify data/liver --out data/liver_1slice --slices-per-volume 1
    jointreg sparsify data/liver --out data/liver_2vol --volumes 2 --seed 3
    jointreg sparsify data/echo --out data/echo_ed_es --slices-per-volume 2 --strategy extremes --classes lv
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sparsify"
HELP = "keep a few annotated slices (or volumes) per dataset, mark the rest 'ignore'"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, metavar="DATASET", help="fully labelled source dataset")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="new dataset folder")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--slices-per-volume", type=int, metavar="K", help="annotated slices kept per volume")
    amount.add_argument("--volumes", type=int, metavar="N", help="fully annotated volumes kept (the others unlabelled)")
    parser.add_argument("--strategy", choices=("largest", "even", "random", "extremes"), default="largest",
                        help="how slices are chosen (default: largest; extremes: largest and smallest area, "
                             "e.g. ED and ES frames with --classes lv)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                        help="slicing axis (default: each volume's through-plane axis)")
    parser.add_argument("--seed", type=int, default=0, help="seed for 'random' and --volumes (default: 0)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS", default=None,
                        help="foreground classes that count when choosing slices (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from jointreg.data.sparsify import sparsify_dataset
    from jointreg.utils.atomic import check_writable_output

    check_writable_output(args.out, atomic=True)
    manifest = sparsify_dataset(
        args.dataset, args.out, slices_per_volume=args.slices_per_volume, volumes=args.volumes,
        strategy=args.strategy, axis=args.axis, seed=args.seed, classes=args.classes, overwrite=args.overwrite,
    )
    cases = manifest["cases"]
    if manifest["mode"] == "slices":
        kept = sum(len(entry.get("slices", [])) for entry in cases.values())
        print(f"{args.out}: kept {kept} slice(s) in {len(cases)} case(s) ({manifest['strategy']}, "
              f"{manifest['slices_per_volume']} per volume)")
        if manifest["no_foreground"]:
            print(f"  no foreground, nothing kept: {', '.join(manifest['no_foreground'])}")
    else:
        print(f"{args.out}: kept {len(manifest['kept_volumes'])} of {len(cases)} volume(s) fully annotated: "
              f"{', '.join(manifest['kept_volumes'])}")
    if manifest["unlabelled"]:
        print(f"  unlabelled in the source: {', '.join(manifest['unlabelled'])}")
    return 0
