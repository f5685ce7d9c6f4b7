"""Write files and folders so that a crash never leaves a half-written result.

Every output of jointreg goes through these helpers: data is written to a temporary name in the
destination folder (same file system, so the final rename is atomic) and renamed into place only
when complete. Temporary names start with ``.tmp-`` and keep the final suffix, so that libraries
that choose a format from the extension (nibabel's ``.nii.gz``) behave as for the real name.

Where an output cannot be written at all (a read-only folder, a parent that is a file, a name the
file system refuses), :func:`check_writable_output` says so before any work, and
:func:`describe_os_error` turns the ``OSError`` that a write raises anyway into the one-line
``PATH: problem`` the command line prints (:func:`jointreg.cli.main.main`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def _full_suffix(name: str) -> str:
    # ".nii.gz" must survive as a whole; a plain suffix is enough otherwise.
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


_TMP_PATTERN = re.compile(re.escape(TMP_PREFIX) + r"[0-9a-f]{12}-")
NAME_MAX = 255  # bytes per path component on the usual file systems (ext4, xfs, btrfs, APFS, NTFS)


def temporary_sibling(final: Path) -> Path:
    """A unique temporary path next to ``final`` with the same (compound) suffix.

    The prefix adds 18 bytes; when that would exceed :data:`NAME_MAX`, the middle of the name is
    shortened (the suffix is kept), so that any name the file system accepts can be written.
    """
    final = Path(final)
    prefix = f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-"
    name = final.name
    excess = len(os.fsencode(prefix + name)) - NAME_MAX
    if excess > 0:
        suffix = _full_suffix(name)
        stem = os.fsencode(name[: len(name) - len(suffix)] if suffix else name)
        name = stem[: max(0, len(stem) - excess)].decode("utf-8", errors="ignore") + suffix
    return final.with_name(prefix + name)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it onto ``final``, on error delete it.

    Example:
        >>> with atomic_path(out / "case_0000.nii.gz") as tmp:   # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to the temporary file for {final}")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``final`` only when complete.

    Args:
        final: the folder to create.
        overwrite: replace an existing ``final``; without it an existing folder is an error
            raised by the caller before any work (see :func:`check_new_output`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} appeared while it was being written")
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 2) -> None:
    """Write JSON atomically, with a trailing newline."""
    write_text(path, json.dumps(data, indent=indent, sort_keys=False) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete leftovers of interrupted atomic writes in ``folder`` (not recursive).

    Returns:
        The number of entries removed.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed += 1
    return removed


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (a copy across file systems), atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(source, target):
        # Already linked by an earlier (interrupted) run. rename() onto a hard link of the same
        # file would do nothing and leave the temporary name behind.
        return
    tmp = temporary_sibling(target)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# outputs that cannot be written: said before any work, and in one line when a write fails
# --------------------------------------------------------------------------------------------
# The errors of the user's environment (the path chosen, its permissions, its file system), in
# words. Anything else (ENOENT included: the commands check their inputs themselves, so a
# missing file that gets this far is a bug) keeps its traceback.
_OS_PROBLEMS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",
    errno.ENAMETOOLONG: "name too long",
    errno.ENOTDIR: "not a folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.EEXIST: "already exists",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error (a failing disk or network share?)",
}


def _user_path(name: str | bytes | int) -> Path:
    """The path the user knows: a temporary sibling is named by its final name."""
    path = Path(os.fsdecode(name) if not isinstance(name, int) else str(name))
    return path.with_name(_TMP_PATTERN.sub("", path.name, count=1)) if _TMP_PATTERN.match(path.name) else path


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` or ``None`` where nothing can be found (missing, or below a file)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            return None
        raise


def _nearest_existing(path: Path) -> tuple[Path, os.stat_result] | None:
    for candidate in (path, *path.parents):
        found = _stat(candidate)
        if found is not None:
            return candidate, found
    return None


def _name_limit(path: Path) -> int:
    found = _nearest_existing(path.absolute())
    try:
        return int(os.pathconf(found[0] if found else ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def _too_long(path: Path) -> str | None:
    limit = _name_limit(path)
    longest = max(path.parts, key=lambda part: len(os.fsencode(part)), default="")
    size = len(os.fsencode(longest))
    if size > limit:
        shown = longest if len(longest) <= 40 else f"{longest[:20]}...{longest[-12:]}"
        return f"name too long: '{shown}' has {size} bytes, the file system allows {limit}"
    return None


def _explain(code: int, path: Path) -> str:
    """The problem of ``path`` for an errno of :data:`_OS_PROBLEMS`, with what can be found out."""
    words = _OS_PROBLEMS[code]
    if code == errno.ENAMETOOLONG:
        return _too_long(path) or f"path too long ({len(os.fsencode(str(path)))} bytes)"
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EROFS):
        try:
            found = _nearest_existing(path)
        except OSError:
            found = None
        if code == errno.ENOTDIR and found is not None and not _is_dir(found[1]):
            return "is a file, not a folder" if found[0] == path else f"cannot be created: {found[0]} is a file, not a folder"
        if code == errno.EEXIST and found is not None and found[0] == path and not _is_dir(found[1]):
            return "exists and is not a folder"
        if code in (errno.EACCES, errno.EROFS) and found is not None and found[0] != path:
            return f"{words} (cannot create anything in {found[0]})"
    return words


def _is_dir(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode)


def describe_os_error(exc: BaseException) -> str | None:
    """``"PATH: problem"`` for an ``OSError`` about a path and its environment, else ``None``.

    Only errors that name a path and whose errno is one of the environment's problems
    (permission denied, read-only file system, a parent that is a file, a name too long, no space
    left, ...) qualify; a temporary name (``.tmp-...``) is reported under its final name.

    Example:
        >>> describe_os_error(PermissionError(13, "Permission denied", "/srv/ro/seg"))  # doctest: +SKIP
        '/srv/ro/seg: permission denied (cannot create anything in /srv/ro)'
    """
    if not isinstance(exc, OSError) or exc.errno not in _OS_PROBLEMS or exc.filename is None:
        return None
    name = exc.filename
    if exc.filename2 is not None and isinstance(name, (str, bytes)) and _TMP_PATTERN.match(Path(os.fsdecode(name)).name):
        name = exc.filename2  # a rename of a temporary onto its final name: the final one
    path = _user_path(name)
    if exc.errno == errno.ENAMETOOLONG:
        path = _through_longest(path)  # name the output the user chose, not a file inside it
    return f"{path}: {_explain(exc.errno, path)}"


def _through_longest(path: Path) -> Path:
    """``path`` cut after its first component longer than the file system allows (unchanged if none)."""
    limit = _name_limit(path)
    parts = path.parts
    for index, part in enumerate(parts):
        if len(os.fsencode(part)) > limit:
            return Path(*parts[: index + 1])
    return path


def check_writable_output(folder: str | os.PathLike[str], *, atomic: bool = False) -> None:
    """Refuse, before any work, an output folder that cannot be created or written.

    Args:
        folder: the output folder (existing or not).
        atomic: the folder is built under a temporary sibling and renamed into place
            (:func:`atomic_dir`), so its parent must be writable too.

    Raises:
        InputError: a name longer than the file system allows, a path below a file, an
            existing file in the folder's place, a read-only or not writable location.
    """
    from jointreg.errors import InputError

    folder = Path(folder)
    problem = _too_long(folder)
    if problem:
        raise InputError(folder, problem)
    try:
        found = _nearest_existing(folder)
    except OSError as exc:
        raise InputError(folder, _explain(exc.errno, folder) if exc.errno in _OS_PROBLEMS else str(exc)) from None
    if found is None:
        return
    where, info = found
    if not _is_dir(info):
        raise InputError(folder, "exists and is not a folder" if where == folder else f"cannot be created: {where} is a file, not a folder")
    places = [where]
    if atomic and where == folder:
        places.append(folder.parent)
    for place in places:
        _check_writable_folder(folder, place)


def _check_writable_folder(folder: Path, place: Path) -> None:
    from jointreg.errors import InputError

    read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY) if hasattr(os, "statvfs") else False
    if read_only or not os.access(place, os.W_OK | os.X_OK):
        words = "read-only file system" if read_only else "permission denied"
        raise InputError(folder, words if place == folder else f"{words} (cannot create anything in {place})")
