"""Shards of a bulk job: several processes, or cluster jobs, share the cases of one output folder.

``jointreg pseudolabel`` and ``jointreg segment`` take ``--shard I/N``: the job's case names are
sorted and the case at position ``k`` belongs to shard ``k % N`` (round robin, so that shards
get as many cases, and a mix of the whole list, when case size or difficulty follows the names).
The split depends on the job's full case list only, never on which cases are already finished,
so a shard that is rerun processes the same cases. Without ``--shard``, a process started by
``torchrun`` (``RANK`` and ``WORLD_SIZE`` set, ``WORLD_SIZE > 1``) takes shard
``RANK/WORLD_SIZE`` (:func:`resolve_shard`); no process group is joined.

Every shard writes into the same folder, so the shared files follow three rules, kept here:

* the settings file is created once, by whichever shard comes first (:func:`claim_json`: a
  hard link of a complete temporary file, which fails when another shard was first); the others
  read it and go on only when it is identical to theirs;
* a shard removes only the leftovers (``.tmp-*``) of its own cases
  (:func:`remove_temporaries_of`), never a file another shard may be writing;
* the step that makes the folder complete (``dataset.json``, the final manifest) is taken under
  :func:`folder_lock`, so that two shards finishing at the same moment take it one after the
  other. Its writes are atomic and give the same bytes whoever takes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jointreg.errors import ConfigError

log = logging.getLogger(__name__)

SHOWN_MISSING = 5  # case names quoted in a message about missing cases


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``).

    Example:
        >>> Shard(1, 3).select(["e", "d", "c", "b", "a"])
        ['b', 'e']
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        problem = _problem(self.index, self.count)
        if problem:
            raise ConfigError(f"shard {self.index!r}/{self.count!r}: {problem}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, cases: Iterable[str]) -> list[str]:
        """This shard's cases: positions ``index, index + count, ...`` of the sorted names."""
        return [case for k, case in enumerate(sorted(cases)) if k % self.count == self.index]


def parse_shard(text: str) -> Shard:
    """``"I/N"`` → :class:`Shard`; anything else is a one-line :class:`ConfigError` naming ``--shard``."""
    parts = str(text).split("/")
    try:
        index, count = int(parts[0]), int(parts[-1])
    except ValueError:
        parts = []
    if len(parts) != 2:
        raise ConfigError(f"--shard must be I/N, two integers with 0 <= I < N (e.g. 0/4), got {text!r}")
    problem = _problem(index, count)
    if problem:
        raise ConfigError(f"--shard {text}: {problem}")
    return Shard(index, count)


def _problem(index: Any, count: Any) -> str | None:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (index, count)):
        return "the index and the count must be integers"
    if count < 1:
        return "the shard count must be >= 1"
    if not 0 <= index < count:
        return f"the index must be in 0..{count - 1} (shards are numbered from 0)"
    return None


def resolve_shard(arg: str | None, env: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard a process works on: ``--shard`` when given, else torchrun's, else ``None`` (all cases).

    Args:
        arg: the ``--shard`` text (``"I/N"``) or ``None``.
        env: the environment; torchrun sets ``RANK`` and ``WORLD_SIZE`` for every process it
            starts. ``WORLD_SIZE`` absent or 1 means one process: no shard.

    Raises:
        ConfigError: a malformed ``--shard``, or torchrun variables that are not integers or
            put ``RANK`` outside ``0 .. WORLD_SIZE - 1``.

    Example:
        >>> resolve_shard(None, {"RANK": "2", "WORLD_SIZE": "4"})
        Shard(index=2, count=4)
    """
    if arg is not None:
        return parse_shard(arg)
    world_text, rank_text = env.get("WORLD_SIZE"), env.get("RANK")
    if world_text is None:
        return None
    try:
        world = int(world_text)
        rank = int(rank_text) if world > 1 else 0
    except (TypeError, ValueError):
        raise ConfigError(
            f"torchrun environment: RANK={rank_text!r} and WORLD_SIZE={world_text!r} must be integers "
            "(or pass --shard I/N)"
        ) from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ConfigError(f"torchrun environment: RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    log.info("torchrun: this process takes shard %d/%d", rank, world)
    return Shard(rank, world)


def refuse_overwrite(shard: Shard | None, overwrite: bool) -> None:
    """A sharded job deletes nothing: ``overwrite`` with a shard is a :class:`ConfigError`."""
    if shard is not None and overwrite:
        raise ConfigError(
            "--overwrite cannot be combined with a sharded job (--shard, or torchrun's RANK/WORLD_SIZE): it would "
            "delete the other shards' results; start over without --shard, or choose another --out"
        )


def describe_missing(missing: Sequence[str], total: int) -> str:
    """``"2 of 5 case(s) are not finished (b, d)"``, quoting at most :data:`SHOWN_MISSING` names."""
    shown = ", ".join(missing[:SHOWN_MISSING]) + (f" and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else "")
    return f"{len(missing)} of {total} case(s) are not finished ({shown})"


# --------------------------------------------------------------------------------------------
# the shared folder
# --------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def claim_json(path: str | os.PathLike[str], data: Any) -> Any:
    """Create ``path`` with ``data`` (as :func:`~jointreg.utils.atomic.write_json` writes it)
    unless it exists; returns ``None`` when this call created it, else the content found there.

    Race-free between processes: the data is written completely under a temporary name and
    hard-linked to ``path``, which fails when ``path`` exists, so readers never see a partial
    file and of two concurrent callers exactly one creates it. On a file system without hard
    links it falls back on an existence check and a rename (a short window remains there).
    The parent folder must exist.
    """
    from jointreg.utils.atomic import temporary_sibling, write_json

    path = Path(path)
    if path.exists():
        return _read_json(path)
    tmp = temporary_sibling(path)
    try:
        write_json(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_json(path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if path.exists():
                return _read_json(path)
            os.replace(tmp, path)
        return None
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries_of(folder: str | os.PathLike[str], names: Iterable[str]) -> int:
    """Delete the leftovers of interrupted atomic writes of the files ``names`` in ``folder``.

    Unlike :func:`~jointreg.utils.atomic.remove_stale_temporaries` it leaves the temporaries of
    other files alone: another shard may be writing them. (A temporary whose name was shortened
    because the final name is near the file system's limit is not recognised and stays.)

    Returns:
        The number of files removed.
    """
    from jointreg.utils.atomic import TMP_PREFIX

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    wanted = set(names)
    removed = 0
    for entry in folder.iterdir():
        # .tmp-{12 hex digits}-{final name} (jointreg.utils.atomic.temporary_sibling)
        name = entry.name
        if name.startswith(TMP_PREFIX) and name[len(TMP_PREFIX) + 13:] in wanted and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold an exclusive advisory lock (``flock``) on ``folder`` itself while the block runs.

    Locking the folder leaves no lock file behind, and the lock dies with its process, so a
    killed shard never blocks the others. Yields whether the lock was taken: without ``fcntl``
    (Windows) or where the file system refuses (some network file systems) the block runs
    unlocked, which only matters if two shards finish at the same moment.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield False
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError:
            log.debug("could not lock %s; finishing without the lock", folder)
            locked = False
        yield locked
    finally:
        os.close(fd)  # releases the lock
