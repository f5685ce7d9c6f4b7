"""Write files and folders so that a crash never leaves a half-written result.

Every output of jointreg goes through these helpers: data is written to a temporary name in the
destination folder (same file system, so the final rename is atomic) and renamed into place only
when complete. Temporary names start with ``.tmp-`` and keep the final suffix, so that libraries
that choose a format from the extension (nibabel's ``.nii.gz``) behave as for the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


def temporary_sibling(final: Path) -> Path:
    """A unique temporary path next to ``final`` with the same (compound) suffix."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{final.name}")


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
