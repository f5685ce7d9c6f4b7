"""Command-line options shared by the converters."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_tools._common.labels import UNMAPPED_CHOICES, LabelMap


def add_output_arguments(parser: argparse.ArgumentParser, *, modality_required: bool = True) -> None:
    """``--out``, ``--modality``, ``--name``, ``--case-prefix``, split options, ``--overwrite``."""
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to create")
    parser.add_argument(
        "--modality", required=modality_required, metavar="NAME",
        help="channel name written to dataset.json: CT (HU windowing) or MR/T1/T2/echo (percentile "
        "normalisation)" + ("" if modality_required else "; default: the DICOM Modality tag"),
    )
    parser.add_argument("--case-prefix", default="", metavar="P", help="put P in front of every case id (e.g. chaos_)")
    add_split_arguments(parser, cases="cases for imagesTs/labelsTs", fraction="random fraction of cases for the test split")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def add_split_arguments(parser: argparse.ArgumentParser, *, cases: str, fraction: str) -> None:
    """``--name``, ``--test-cases`` or ``--test-fraction`` (with ``--seed``); ``cases`` and
    ``fraction`` are the help texts of the two split options."""
    parser.add_argument("--name", default="", help="dataset name for dataset.json (default: the folder name)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--test-cases", nargs="+", default=[], metavar="ID", help=cases)
    group.add_argument("--test-fraction", type=float, default=0.0, metavar="F", help=fraction)
    parser.add_argument("--seed", type=int, default=0, help="seed of --test-fraction's draw (default 0)")


def add_label_map_arguments(parser: argparse.ArgumentParser) -> None:
    """``--map SRC=NAME:ID ...`` and ``--unmapped error|background``."""
    parser.add_argument(
        "--map", nargs="+", action="extend", default=[], metavar="SRC=NAME:ID",
        help="source label value -> class name and id, e.g. 200=myocardium:2 500=lv:3 600=rv:1; "
        "0 is background unless mapped; without --map the values are kept (named label_<value>)",
    )
    parser.add_argument(
        "--unmapped", choices=UNMAPPED_CHOICES, default="error",
        help="source values missing from --map: stop with an error (default) or make them background",
    )


def label_map_from_args(args: argparse.Namespace) -> LabelMap | None:
    """The :class:`LabelMap` of ``--map``, or ``None`` when no ``--map`` was given."""
    return LabelMap.parse(args.map) if args.map else None
