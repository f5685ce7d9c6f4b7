"""User-facing errors.

Anything a user can cause (a bad file, a wrong option, an inconsistent dataset) raises
:class:`JointregError`. The command-line entry point prints it as one line and exits with
code 2, without a traceback. Programming errors keep their tracebacks.
"""

from __future__ import annotations

from os import PathLike


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


class JointregError(Exception):
    """A problem with the user's input or environment, printable as one line.

    The message is made one line here, once for all: it often quotes a library's own message
    (nibabel's "Expected 1024 bytes ... \\n - could the file be damaged?"), which may not be.
    """

    exit_code = 2

    def __init__(self, message: str = "", *args):
        super().__init__(one_line(message), *args)


class InputError(JointregError):
    """A problem with one input file or folder; the message starts with its path."""

    def __init__(self, path: str | PathLike[str] | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = one_line(problem)
        super().__init__(self.problem if path is None else f"{path}: {self.problem}")

    def __reduce__(self):
        # Rebuilt from (path, problem), not from the message: an error raised in a worker
        # process must cross back to the parent (pickle calls the class with these arguments).
        return type(self), (self.path, self.problem)


class ConfigError(JointregError):
    """A recipe or option that cannot be used as given."""
