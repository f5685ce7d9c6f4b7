"""Options shared by the commands that run networks (segment, pseudolabel, register).

Not a subcommand (no ``NAME``); argparse only, so importing it keeps ``jointreg --help`` instant.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_inference_options(parser: argparse.ArgumentParser, *, batch_unit: str) -> None:
    """``--batch-size N`` (``batch_unit`` per forward pass, default 16) and ``--device``."""
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                        help=f"{batch_unit} per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
