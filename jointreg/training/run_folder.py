"""Creating, checking, locking and tidying a run folder (its layout: :mod:`jointreg.export.run_folder`).

When a folder is a run, and what a rerun may do with it:

* A folder **has started** once it holds a resume checkpoint (``checkpoints/last``) or a
  finished run's ``summary.json``. Only such a folder is protected: the same command refuses it
  ("run folder already exists") unless ``--overwrite``; ``--resume`` continues it.
* A folder with a ``recipe.yaml`` but neither (a run that failed or was killed before its first
  checkpoint: bad data, a typo in the recipe, a crash during warm-up) has lost nothing worth
  keeping. Rerunning the command, with the same or a corrected recipe, replaces it without
  ``--overwrite``; ``--resume`` on it starts at step 0 with the folder's recipe.
* A folder without ``recipe.yaml`` that holds anything is not ours: only ``--overwrite``
  replaces it.

While ``train`` works in a folder it holds an ``flock`` on ``RUN/.lock`` (released by the
kernel even on ``kill -9``), so a second ``train`` on the same folder is refused instead of
deleting a run that has not reached its first checkpoint yet.

The resume checkpoint records the resolved recipe and its SHA-256 (:func:`recipe_record`);
``--resume`` refuses a recipe that differs from it, naming every changed key with its old and
new value, because the promise of exactly the weights of an uninterrupted run only holds for
the same settings.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jointreg.errors import ConfigError, InputError
from jointreg.export.run_folder import RunPaths
from jointreg.training.checkpoint import read_state, recover_checkpoint
from jointreg.training.config import Recipe, dump_recipe, recipe_from_dict
from jointreg.utils.atomic import TMP_PREFIX, remove_stale_temporaries, temporary_sibling, write_text

log = logging.getLogger(__name__)

RECIPE_KEY = "recipe"  # the checkpoint entry holding recipe_record()
_ABSENT = object()


def run_paths(recipe: Recipe, run_dir: str | Path | None = None) -> RunPaths:
    """The run folder: ``run_dir``, or ``recipe.output / recipe.name``."""
    return RunPaths(Path(run_dir) if run_dir is not None else Path(recipe.output) / recipe.name)


def canonical_recipe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain JSON data (lists, not tuples): what a checkpoint stores."""
    return json.loads(json.dumps(recipe.to_dict()))


def recipe_digest(recipe: Recipe) -> str:
    """SHA-256 of the resolved recipe's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(canonical_recipe(recipe), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    """What a resume checkpoint carries about its recipe: the digest and the recipe itself."""
    return {"sha256": recipe_digest(recipe), "resolved": canonical_recipe(recipe)}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs, sorted by key; a key
    missing on one side has the value ``_ABSENT`` there."""
    fa, fb = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    return [(k, fa.get(k, _ABSENT), fb.get(k, _ABSENT)) for k in sorted(set(fa) | set(fb))
            if fa.get(k, _ABSENT) != fb.get(k, _ABSENT)]


def describe_changes(changes: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    """``registration.lr: 0.001 → 0.5, ...`` (at most ``limit`` keys, then how many more)."""

    def show(value: Any) -> str:
        return "(absent)" if value is _ABSENT else json.dumps(value)

    text = ", ".join(f"{k}: {show(a)} → {show(b)}" for k, a, b in changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


NEUTRAL_SECTIONS = ("logging.",)
"""Recipe keys that change what a run logs, never its weights or results (the monitor, for
one, is documented and tested to leave the weights alone): ``--resume`` accepts new values of
them, and a study reuses a finished run that differs only in them."""


PATH_KEYS = ("data.dataset", "output")
"""Recipe keys that name a place on disk: two spellings of one place (relative and absolute,
through a symbolic link) are the same setting."""


def _same_place(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and bool(a) and bool(b) \
        and os.path.realpath(a) == os.path.realpath(b)


def _weight_changes(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [c for c in changes if not c[0].startswith(NEUTRAL_SECTIONS)
            and not (c[0] in PATH_KEYS and _same_place(c[1], c[2]))]


def recipe_differences(a: Recipe, b: Recipe) -> list[str]:
    """Dotted keys whose values differ between two recipes."""
    return [key for key, _, _ in recipe_changes(a.to_dict(), b.to_dict())]


def read_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe stored in a run folder."""
    from jointreg.utils.yaml_io import load_yaml_file

    path = RunPaths(run_dir).recipe
    if not Path(run_dir).is_dir():
        raise InputError(run_dir, "run folder not found" if not Path(run_dir).exists() else "not a folder")
    if not path.is_file():
        raise InputError(run_dir, "not a jointreg run folder (recipe.yaml is missing)")
    try:
        return recipe_from_dict(load_yaml_file(path, what="recipe"))
    except ConfigError as exc:  # an edited recipe.yaml: name the file
        raise ConfigError(f"{path}: {exc}") from None


def _finished(run_dir: str | Path, recipe: Recipe) -> tuple[dict[str, Any], list[tuple[str, Any, Any]]] | None:
    """``(summary, weight-relevant recipe changes)`` of the finished run in ``run_dir``, or
    ``None`` when the folder holds no readable finished run."""
    summary = RunPaths(run_dir).summary
    if not summary.is_file():
        return None
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("status") != "finished":
        return None
    try:
        stored = read_run_recipe(run_dir)
    except (InputError, ConfigError) as error:  # finished, but its settings cannot be read back
        return data, [("recipe.yaml", f"unreadable ({error})", "this recipe")]
    changes = _weight_changes(recipe_changes(stored.to_dict(), recipe.to_dict()))
    trained_on = data.get("dataset_path")  # the data set as it resolved when the run trained
    if isinstance(trained_on, str):
        changes = [c for c in changes if c[0] != "data.dataset"]
        if os.path.realpath(recipe.data.dataset) != trained_on:
            changes.append(("data.dataset", trained_on, recipe.data.dataset))
    return data, changes


def finished_summary(run_dir: str | Path, recipe: Recipe) -> dict[str, Any] | None:
    """The ``summary.json`` of a run in ``run_dir`` that finished with ``recipe``'s settings
    (what a study or a benchmark may reuse instead of training again), else ``None``."""
    found = _finished(run_dir, recipe)
    return found[0] if found is not None and not found[1] else None


def check_not_finished_otherwise(run_dir: str | Path, recipe: Recipe, *, flag: str = "--retrain") -> None:
    """Refuse to replace a run that finished with other settings than ``recipe``'s: a study or
    benchmark rerun with an edited recipe must not delete finished work without being told to.

    Raises:
        ConfigError: ``run_dir`` holds such a run; the message names the changed keys and ``flag``.
    """
    found = _finished(run_dir, recipe)
    if found is not None and found[1]:
        raise ConfigError(
            f"{run_dir}: this run finished with other settings ({describe_changes(found[1])}); "
            f"{flag} trains it again with the new ones (replacing it), or --set output=... keeps it and trains elsewhere"
        )


def check_checkpoint_recipe(paths: RunPaths, recipe: Recipe) -> None:
    """Refuse to resume ``paths.last`` with a recipe other than the one it was written with.

    Raises:
        ConfigError: the recipe differs; the message names each changed key, old → new.
    """
    record = read_state(paths.last).get(RECIPE_KEY)
    if not isinstance(record, dict) or "resolved" not in record:
        log.warning("%s was written before checkpoints recorded their recipe: resuming with %s as it is, "
                    "unchecked (an edited recipe would not give the weights of an uninterrupted run)",
                    paths.last, paths.recipe)
        return
    if record.get("sha256") == recipe_digest(recipe):
        return
    stored = record["resolved"]
    with contextlib.suppress(ConfigError):  # read as today's recipe: fields added since get their defaults
        stored = canonical_recipe(recipe_from_dict(stored))
    changes = _weight_changes(recipe_changes(stored, canonical_recipe(recipe)))
    if changes:
        raise ConfigError(
            f"{paths.root}: cannot resume, the recipe changed since its checkpoint was written "
            f"({describe_changes(changes)}); resuming would not reproduce the run. Restore {paths.recipe.name}, "
            "or start a new run (--set name=..., or --overwrite)"
        )


def has_started(paths: RunPaths) -> bool:
    """Whether the folder holds progress worth protecting: a resume checkpoint or a finished
    run's summary (module docstring). A checkpoint a kill left aside counts (and is put back)."""
    return recover_checkpoint(paths.last) or paths.summary.is_file()


def remove_run_temporaries(paths: RunPaths) -> int:
    """Delete what interrupted atomic writes left in the run folder (``.tmp-*`` entries of the
    folder itself, ``checkpoints/``, ``export/``, ``predictions/`` and the evaluations).

    Checkpoints left aside by a kill are put back first (:func:`recover_checkpoint`).
    """
    recover_checkpoint(paths.last)
    recover_checkpoint(paths.best)
    folders = (paths.root, paths.checkpoints, paths.export, paths.predictions, paths.evaluation, paths.evaluation_raw)
    removed = sum(remove_stale_temporaries(folder) for folder in folders)
    if removed:
        log.info("%s: removed %d leftover temporary file(s) of an interrupted run", paths.root, removed)
    return removed


def _contents(paths: RunPaths) -> list[Path]:
    """The folder's entries, without the lock and leftover temporaries (they hold nothing)."""
    if not paths.root.is_dir():
        return []
    return [e for e in paths.root.iterdir() if e.name != paths.lock.name and not e.name.startswith(TMP_PREFIX)]


def _start_afresh(paths: RunPaths, recipe: Recipe) -> None:
    """Empty the folder and write the recipe.

    The lock (held by this process) stays. Every other entry is first renamed to a temporary
    name (atomic), then deleted, and ``recipe.yaml`` is replaced rather than deleted: a kill
    during the clean-up leaves a run folder without checkpoint plus ``.tmp-*`` leftovers (which
    the next attempt replaces), never a half-deleted checkpoint or a folder that is not a run.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    doomed = []
    for entry in paths.root.iterdir():
        if entry.name in (paths.lock.name, paths.recipe.name):
            continue
        if not entry.name.startswith(TMP_PREFIX):
            entry = entry.rename(temporary_sibling(entry))
        doomed.append(entry)
    for entry in doomed:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    write_text(paths.recipe, dump_recipe(recipe))


def prepare_run_folder(recipe: Recipe, paths: RunPaths, *, resume: bool, overwrite: bool) -> bool:
    """Check a folder to resume, or (re)create one with its recipe; the rules: module docstring.

    The caller holds the folder's lock (:func:`open_run_folder`).

    Returns:
        Whether the run continues from ``checkpoints/last`` (``False``: it starts at step 0).

    Raises:
        InputError / ConfigError: not a run folder, a different recipe, a finished run without
            checkpoint, or a started run without ``overwrite``.
    """
    if resume:
        if not paths.is_run():
            raise InputError(paths.root, "cannot resume: not a jointreg run folder (recipe.yaml is missing)")
        all_changes = recipe_changes(canonical_recipe(read_run_recipe(paths.root)), canonical_recipe(recipe))
        changes = _weight_changes(all_changes)
        if changes:
            raise ConfigError(f"{paths.root}: cannot resume, the run was made by a different recipe "
                              f"(differs in: {describe_changes(changes)})")
        if all_changes:  # logging, or a path spelt another way: the run goes on and records them
            log.info("%s: resuming with settings that leave the weights alone (%s)", paths.root,
                     describe_changes(all_changes))
            write_text(paths.recipe, dump_recipe(recipe))
        remove_run_temporaries(paths)
        if paths.last.is_dir():
            check_checkpoint_recipe(paths, recipe)
            return True
        if paths.summary.is_file():
            raise InputError(paths.root, "cannot resume: the run has finished (summary.json) and has no checkpoint "
                                         "(checkpoints/last); pass --overwrite to train it again")
        log.warning("%s: no checkpoint yet; starting the run at step 0 with its recipe", paths.root)
        _start_afresh(paths, recipe)
        return False
    if _contents(paths) and not overwrite:
        if not paths.is_run():
            raise InputError(paths.root, "folder exists and is not a jointreg run folder (no recipe.yaml); "
                                         "pick another folder, or pass --overwrite to replace its contents")
        if has_started(paths):
            raise InputError(
                paths.root,
                "run folder already exists; resume it with 'jointreg train --resume RUN', "
                "pick another name (--set name=...), or pass --overwrite",
            )
        log.warning("%s: replacing a run folder without checkpoint (an earlier attempt that stopped "
                    "before its first checkpoint)", paths.root)
    _start_afresh(paths, recipe)
    return False


@contextlib.contextmanager
def _locked(paths: RunPaths) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise InputError(paths.root, f"in use by another 'jointreg train' (pid {holder}); wait for it "
                                         "to end, or pick another run folder") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
            log.debug("%s: file system without flock, the run folder is not locked", paths.root)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def open_run_folder(recipe: Recipe, paths: RunPaths, *, resume: bool, overwrite: bool) -> Iterator[bool]:
    """Lock the run folder for this process and prepare it (:func:`prepare_run_folder`).

    Yields:
        Whether the run continues from its checkpoint. The lock is released on exit.
    """
    if resume and not paths.is_run():
        raise InputError(paths.root, "cannot resume: not a jointreg run folder (recipe.yaml is missing)")
    if paths.root.exists() and not paths.root.is_dir():
        raise InputError(paths.root, "exists and is not a folder; pick another run folder")
    paths.root.mkdir(parents=True, exist_ok=True)
    with _locked(paths):
        yield prepare_run_folder(recipe, paths, resume=resume, overwrite=overwrite)
