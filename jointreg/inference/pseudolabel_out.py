"""The output folder of a ``jointreg pseudolabel`` job: where it may lie, when a rerun resumes
it, starts it over or refuses it, and when a case counts as finished (its label and its
provenance record both written). The job itself: :mod:`jointreg.inference.pseudolabel`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from jointreg.errors import InputError
from jointreg.inference.pseudolabel_case import PROVENANCE_DIR

log = logging.getLogger(__name__)

MANIFEST_NAME = "pseudolabel.json"


def is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: Path, dataset_root: Path, run: Path) -> None:
    o, d = out.resolve(), dataset_root.resolve()
    if o == d:
        raise InputError(out, "the output folder is the input dataset; choose another --out")
    if is_within(o, d) or is_within(d, o):
        raise InputError(out, f"the output folder must not contain, or lie inside, the input dataset {dataset_root}")
    if is_within(o, run.resolve()):
        raise InputError(out, f"the output folder must not lie inside the run folder {run}")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")


def is_empty(out: Path) -> bool:
    """No entry but leftovers of interrupted atomic writes (``.tmp-*``)."""
    from jointreg.utils.atomic import TMP_PREFIX

    return not out.exists() or all(entry.name.startswith(TMP_PREFIX) for entry in out.iterdir())


def finished_cases(out: Path, ending: str) -> list[str]:
    provenance = out / PROVENANCE_DIR
    cases = sorted(p.stem for p in provenance.glob("*.json")) if provenance.is_dir() else []
    return [c for c in cases if is_finished(out, c, ending)]


def clear(out: Path) -> None:
    """Empty an output folder of ours (it holds ``pseudolabel.json``), keeping the folder itself."""
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def discard(out: Path, created: bool) -> None:
    """Undo a job that finished no case: remove the folder it created, or empty the one it was given."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    try:
        clear(out)
    except OSError:
        log.warning("could not empty %s after the failure", out)


def changed_keys(manifest: dict[str, Any], previous: Any) -> list[str]:
    """The keys in which two manifests differ (all of them when ``previous`` is not a manifest)."""
    previous = previous if isinstance(previous, dict) else {}
    return sorted(k for k in set(manifest) | set(previous) if manifest.get(k) != previous.get(k))


def refuse_other_settings(out: Path, differs: list[str], finished: int) -> InputError:
    return InputError(
        out, f"was made with other settings (differs in: {', '.join(differs)}; {finished} finished case(s)); "
        "a sharded job never deletes cases: rerun with those settings to resume, start over without --shard "
        "(--overwrite), or choose another --out"
    )


def prepare_out(out: Path, manifest: dict[str, Any], overwrite: bool, ending: str, sharded: bool = False) -> bool:
    """Create or reopen ``out``; returns True when resuming an earlier run.

    A ``sharded`` job never clears the folder: other shards may be writing into it.
    """
    if is_empty(out):
        return False
    path = out / MANIFEST_NAME
    if not path.is_file():
        raise InputError(out, f"exists and is not a jointreg pseudolabel output ({MANIFEST_NAME} is missing); choose another --out")
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        previous = {}
    if overwrite:
        clear(out)
        return False
    differs = changed_keys(manifest, previous)
    if not differs:
        return True
    finished = finished_cases(out, ending)
    if sharded:
        raise refuse_other_settings(out, differs, len(finished))
    if not finished:
        # Leftovers of a job that failed or stopped before finishing any case: nothing to keep.
        log.info("%s holds no finished case of an earlier job with other settings: starting over", out)
        clear(out)
        return False
    raise InputError(
        out, f"was made with other settings (differs in: {', '.join(differs)}; {len(finished)} finished case(s)); "
        "rerun with those settings to resume, pass --overwrite to start over, or choose another --out"
    )


def is_finished(out: Path, case: str, ending: str) -> bool:
    return (out / "labelsTr" / f"{case}{ending}").is_file() and (out / PROVENANCE_DIR / f"{case}.json").is_file()
