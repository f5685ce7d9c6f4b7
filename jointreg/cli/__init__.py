"""Command-line interface: one console script, one module per subcommand.

Each module in this package that defines ``NAME`` is a subcommand. It must stay cheap to import
(argparse only): heavy imports happen inside its ``run`` so that ``jointreg --help`` is instant.

Module protocol::

    NAME = "validate"                     # the subcommand
    HELP = "check a dataset folder"       # one line for ``jointreg --help``
    ORDER = 20                            # position in the help listing
    def add_arguments(parser): ...        # argparse options
    def run(args) -> int | None: ...      # calls one library function; returns the exit code
"""
