"""User-facing errors.

Anything a user can cause (a bad file, a wrong option, an inconsistent dataset) raises
:class:`JointregError`. The command-line entry point prints it as one line and exits with
code 2, without a traceback. Programming errors keep their tracebacks.
"""

from __future__ import annotations

from os import PathLike


class JointregError(Exception):
    """A problem with the user's input or environment, printable as one line."""

    exit_code = 2


class InputError(JointregError):
    """A problem with one input file or folder; the message starts with its path."""

    def __init__(self, path: str | PathLike[str] | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ConfigError(JointregError):
    """A recipe or option that cannot be used as given."""
