"""Run code as an unprivileged user, so that permission cases mean something under root.

Root ignores file permissions: a read-only folder is writable to it, a 0600 file of another user
readable. Tests of such cases run their commands in a child process that, when the test runner
is root, runs as the user ``nobody``; a runner that is not root is unprivileged already and runs
the child as itself. The switch uses ``setpriv`` (util-linux) where it exists, else
``preexec_fn`` (``setgroups``, ``setgid``, ``setuid``). ``setpriv`` keeps root's capabilities
until the ``exec`` (they are dropped by the ``exec`` itself, the child has none), so an
interpreter installed under a private ``/root`` can still be started; with ``preexec_fn`` the
``exec`` already runs as ``nobody``. Where neither works, :func:`require_unprivileged` skips.

The child can only reach what the user can: build the test's files in :func:`shared_folder`
(world-readable, under the system's temporary folder, not in pytest's private ``tmp_path``) and
hand the folders the child must write to :func:`give_to_user`.

Example:
    >>> with shared_folder() as root:                                     # doctest: +SKIP
    ...     give_to_user(root / "out")
    ...     done = run_unprivileged([sys.executable, "-c", "..."], cwd=root)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

NOBODY = "nobody"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def unprivileged_ids() -> tuple[int, int] | None:
    """``(uid, gid)`` the child switches to: ``nobody``'s under root, ``None`` (stay) otherwise."""
    if not is_root():
        return None
    import pwd

    try:
        entry = pwd.getpwnam(NOBODY)
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def _drop_privileges(ids: tuple[int, int]):
    uid, gid = ids

    def switch() -> None:  # runs in the child, between fork and exec
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return switch


def run_unprivileged(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
                     timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``argv`` as the unprivileged user (text output captured; ``HOME`` set to ``cwd``)."""
    ids = unprivileged_ids()
    environment = {**os.environ, "HOME": str(cwd), "MPLCONFIGDIR": str(cwd / ".matplotlib"), **(env or {})}
    argv, switch = list(argv), None
    if ids and shutil.which("setpriv"):
        argv = ["setpriv", f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups", *argv]
    elif ids:
        switch = _drop_privileges(ids)
    return subprocess.run(argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=switch)


def can_run_unprivileged() -> str | None:
    """``None`` when :func:`run_unprivileged` works here, else why not."""
    if not hasattr(os, "geteuid"):
        return "no POSIX users on this platform"
    with shared_folder() as root:
        give_to_user(root)
        probe = root / "probe"
        try:
            done = run_unprivileged(
                [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(str(os.geteuid()))", str(probe)],
                cwd=root, timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot start a process as an unprivileged user ({exc})"
        if done.returncode != 0:
            return f"the unprivileged user cannot run Python here: {done.stderr.strip()[-300:]}"
        if probe.read_text() == "0":
            return "the child still runs as root"
    return None


def require_unprivileged() -> None:
    """Skip the calling test where nothing can run unprivileged."""
    import pytest

    reason = can_run_unprivileged()
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def shared_folder(prefix: str = "jointreg-perm-") -> Iterator[Path]:
    """A fresh folder that every user can read and traverse (removed afterwards)."""
    root = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    try:
        os.chmod(root, 0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def give_to_user(path: Path) -> Path:
    """Create ``path`` as a folder the unprivileged user owns (under root) or that is ours."""
    path.mkdir(parents=True, exist_ok=True)
    ids = unprivileged_ids()
    if ids:
        os.chown(path, *ids)
    os.chmod(path, 0o755)
    return path


def read_only_folder(path: Path) -> Path:
    """Create ``path`` as a folder the unprivileged user can read but not write."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o555)  # owned by the runner: root, or the (unprivileged) user itself
    return path


# One unprivileged child runs every command in turn (one interpreter start, not one per case).
_CLI_DRIVER = """
import contextlib, io, json, sys
from jointreg.cli.main import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            import traceback
            traceback.print_exc(file=err)
            code = 1
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


def run_cli_unprivileged(cases: dict[str, list[str]], *, cwd: Path, repo: Path, timeout: float = 300) -> dict[str, tuple[int, str]]:
    """Run ``jointreg`` in-process for each ``{name: argv}`` as the unprivileged user.

    Returns:
        ``{name: (exit code, stderr)}``; a traceback is in stderr with exit code 1.
    """
    import json

    done = run_unprivileged([sys.executable, "-c", _CLI_DRIVER, json.dumps(cases)], cwd=cwd,
                            env={"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return {name: (code, err) for name, (code, err) in json.loads(done.stdout.strip().splitlines()[-1]).items()}
