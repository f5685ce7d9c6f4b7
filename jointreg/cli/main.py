"""The ``jointreg`` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from jointreg.version import __version__
from jointreg.errors import JointregError
from jointreg.utils.atomic import describe_os_error

_DESCRIPTION = (
    "jointreg trains medical image segmenters from a few labelled slices by joint multiscale "
    "registration (FMIRNet) and segmentation."
)
_EPILOG = "Run 'jointreg COMMAND --help' for the options of one command. Docs: README.md."


def _command_modules() -> list[ModuleType]:
    import jointreg.cli as package

    modules = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"jointreg.cli.{info.name}")
        if hasattr(module, "NAME"):
            modules.append(module)
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: ``jointreg CMD: error: ...`` and exit code 2,
    without the usage block (``--help`` shows it). Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jointreg",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jointreg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in _command_modules():
        doc = (module.__doc__ or module.HELP).strip()
        child = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(child)
        child.set_defaults(_run=module.run)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    try:
        code = args._run(args)
    except JointregError as exc:
        print(f"jointreg {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"jointreg {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a closed reader (e.g. `| head`); not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # The one place where a file that cannot be written (or read) becomes the one-line error:
        # only OSErrors naming a path, with an errno of the environment (permissions, read-only
        # or full file systems, a parent that is a file, a name too long). Others are bugs and
        # keep their traceback.
        message = describe_os_error(exc)
        if message is None:
            raise
        print(f"jointreg {args.command}: error: {message}", file=sys.stderr)
        return JointregError.exit_code
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
