"""Convert raw data into a canonical jointreg dataset (nnU-Net v2 raw layout).

Each source has its own converter in the ``data_tools`` package; run
``jointreg prepare SOURCE --help`` for its options. The output folder is written under a
temporary name and appears only when the conversion is complete.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

NAME = "prepare"
HELP = "convert raw data (NIfTI pairs, DICOM, ACDC, phantoms) into a dataset"
ORDER = 10


def _converters():
    import data_tools

    found = []
    for info in pkgutil.iter_modules(data_tools.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"data_tools.{info.name}")
        if hasattr(module, "SOURCE"):
            found.append(module)
    return sorted(found, key=lambda m: m.SOURCE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", title="sources", required=True)
    for module in _converters():
        child = sub.add_parser(
            module.SOURCE,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(child)
        child.set_defaults(_convert=module.run)


def run(args: argparse.Namespace) -> int | None:
    from jointreg.utils.atomic import check_writable_output

    check_writable_output(args.out, atomic=True)  # every converter has --out, built beside and renamed
    return args._convert(args)
