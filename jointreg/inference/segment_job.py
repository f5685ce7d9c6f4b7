"""The bookkeeping of a bulk segment job: its output folder, resumable and shared by shards.

:func:`jointreg.inference.segment.segment_inputs` segments; this module records what it
finished, so that a call can resume, shards can share one folder, and a failed call leaves
nothing that blocks the corrected command. It never imports :mod:`jointreg.inference.segment`.

A segment output folder ``OUT`` holds:

* ``OUT/{case}.nii.gz``: the labels of a case (the input's affine and header);
* ``OUT/probabilities/{case}.nii.gz``: its class probabilities (float32 ``(X, Y, Z, K)``, class
  ``k`` in volume ``k``), when they were asked for;
* ``OUT/segmentation.json`` (:data:`MANIFEST_NAME`): the settings a result depends on (model
  folder and weights digest, labels, modality, preprocessing, probabilities;
  :func:`job_settings`) and the finished cases, each with its input's path and digest, its
  channel and its geometry warnings. ``"complete": false`` with the ``planned`` cases of the job
  until the last case is finished, ``"complete": true`` after;
* while a sharded job runs, ``OUT/segmentation.shard-I-of-N.json`` (:func:`shard_record_path`):
  the settings and the finished cases of shard ``I/N``.

Which file is written when:

* an unsharded call rewrites ``segmentation.json`` after every case (:class:`JobRecord`; it
  lists finished cases only) and, at the end, writes the complete one (:func:`write_complete`).
  A call that finishes no case leaves nothing behind (:func:`discard`);
* a call resumes (:func:`plan_resume`): a case is done when an earlier call with the same
  settings recorded it for the same input bytes and its files exist; the files of the cases an
  unfinished call planned may be replaced, unless a call of other settings recorded them;
  anything else is a finished result, replaced only with ``overwrite`` (:func:`refuse_existing`).

How shards share the folder (the rules of :mod:`jointreg.inference.shards`):

* the first shard creates ``segmentation.json`` (``"complete": false``, every case planned,
  none recorded; :func:`~jointreg.inference.shards.claim_json`); the others join only with the
  same settings and inputs (:func:`check_shared`, :meth:`JobRecord.start`);
* each shard records its finished cases in its own ``segmentation.shard-I-of-N.json`` (one file
  per writer, so no update is lost) and removes only its own cases' leftover temporaries
  (:func:`prepare_folder`);
* the shard that finds every case of the job finished (:func:`collect_finished`) writes the
  complete ``segmentation.json`` and removes the records, under the folder's lock
  (:func:`write_complete`): the files then equal those of one unsharded call.
  :func:`merge_segmentations` takes that step when the shards could not see each other's
  records in time;
* a shard replaces and deletes nothing of another job (no ``overwrite``) and, when it fails,
  leaves the shared files to the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.errors import InputError
from jointreg.inference.case_inputs import check_output_folder, collect_inputs
from jointreg.inference.run_models import resolve_model_folder
from jointreg.inference.shards import Shard, describe_missing, folder_lock

PROBABILITIES_DIR = "probabilities"
MANIFEST_NAME = "segmentation.json"


# --------------------------------------------------------------------------------------------
# the settings, the files of a case, the manifests
# --------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """The hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def job_settings(folder: Path, loaded: Any, probabilities: bool, backend: str = "torch") -> dict[str, Any]:
    """What a result depends on (checked when a call resumes, or a shard joins). The backend
    enters as a precision: ONNX Runtime gives PyTorch's labels to rounding, bfloat16 does not."""
    from jointreg.export.model_folder import WEIGHTS_NAME

    return {
        "model": str(folder.resolve()),
        "model_sha256": sha256_file(folder / WEIGHTS_NAME),
        "labels": loaded.labels,
        "modality": loaded.modality,
        "preprocessing": loaded.preprocessing,
        "probabilities": "probabilities/{case}.nii.gz: float32 (X, Y, Z, K), class k in volume k" if probabilities else None,
        "precision": "bfloat16" if backend == "torch-bfloat16" else "float32",
    }


def output_files(out: Path, probabilities: bool):
    """``case → [the files of a finished case]``: its labels, and its probabilities when asked for."""

    def targets(case: str) -> list[Path]:
        return [out / f"{case}.nii.gz"] + ([out / PROBABILITIES_DIR / f"{case}.nii.gz"] if probabilities else [])

    return targets


def _read_manifest_file(path: Path) -> dict[str, Any]:
    """A manifest (``segmentation.json`` or a shard's part) of an earlier call (``{}``: none, or not one of ours)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}
    return found if isinstance(found, dict) and isinstance(found.get("cases"), dict) else {}


def _read_manifest(out: Path) -> dict[str, Any]:
    """The ``segmentation.json`` of an earlier call (``{}``: none, or not one of ours)."""
    return _read_manifest_file(out / MANIFEST_NAME)


def shard_record_path(out: Path, shard: Shard) -> Path:
    """Where a shard records its finished cases until the job is complete."""
    return out / f"segmentation.shard-{shard.index}-of-{shard.count}.json"


def _part_paths(out: Path) -> list[Path]:
    return sorted(out.glob("segmentation.shard-*-of-*.json")) if out.is_dir() else []


# Settings that manifests of earlier versions do not record, with the value they had then.
SETTING_DEFAULTS = {"precision": "float32"}


def _recorded(manifest: Mapping[str, Any], key: str) -> Any:
    return manifest.get(key, SETTING_DEFAULTS.get(key))


def _same(manifest: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    return bool(manifest) and all(_recorded(manifest, k) == v for k, v in settings.items())


def _records(out: Path, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The case records (case → entry) of the manifest and of every shard's part made with ``settings``."""
    manifests = [_read_manifest(out), *(_read_manifest_file(p) for p in _part_paths(out))]
    return [m["cases"] for m in manifests if _same(m, settings)]


def _entry(records: Sequence[Mapping[str, Any]], item: Any, digest: str | None, targets) -> dict[str, Any] | None:
    """The recorded result of ``item`` that still holds: same input bytes (``digest``; ``None``:
    not checked), same channel, files present. Its ``input`` is the path given now."""
    for cases in records:
        entry = cases.get(item.case)
        if (isinstance(entry, dict) and (digest is None or entry.get("input_sha256") == digest)
                and entry.get("modality") == item.modality and all(t.is_file() for t in targets(item.case))):
            return {**entry, "input": str(item.path)}
    return None


# --------------------------------------------------------------------------------------------
# before a call writes: what is done, what may be replaced, whose folder it is
# --------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What an earlier call into the same folder leaves to this one: the cases ``done`` (kept,
    case → manifest entry) and those whose files may be ``replaceable`` without ``overwrite``."""

    done: dict[str, dict[str, Any]]
    replaceable: set[str]


def plan_resume(out: Path, settings: dict[str, Any], items: Sequence[Any], digests: Mapping[str, str], targets) -> Plan:
    """Resume rule: a case is done when an earlier call with the same settings recorded it for the
    same input bytes and its files exist (recorded in ``segmentation.json`` or by a shard). An
    unfinished call (``complete: false``) also leaves the files of the cases it planned but did
    not record (the one being written when it stopped) and, with the same settings, those of
    every case it planned: they may be replaced. Anything else is a finished result, replaced
    only with ``overwrite``."""
    previous = _read_manifest(out)
    records = _records(out, settings)
    done = {item.case: entry for item in items if (entry := _entry(records, item, digests[item.case], targets))}
    replaceable: set[str] = set()
    if previous.get("complete") is False:
        replaceable = {str(c) for c in previous.get("planned", [])}
    for manifest in (previous, *(_read_manifest_file(p) for p in _part_paths(out))):
        if manifest and not _same(manifest, settings):
            replaceable -= set(manifest["cases"])  # finished results of other settings
    return Plan(done, replaceable)


def refuse_existing(items: Sequence[Any], plan: Plan, targets, overwrite: bool) -> None:
    """Without ``overwrite``, an existing output that is neither done nor replaceable is an error."""
    existing = [t for item in items if item.case not in plan.done and item.case not in plan.replaceable
                for t in targets(item.case) if t.exists()]
    if existing and not overwrite:
        raise InputError(existing[0], f"already exists ({len(existing)} output file(s) would be replaced; pass --overwrite)")


def _incompatible(found: Any, settings: Mapping[str, Any], cases: Sequence[str] | None) -> str | None:
    """Why a sharded job cannot share a folder with the manifest ``found`` (``None``: it can).

    ``cases``: the job's cases, which must be those the manifest planned (or lists, when
    complete); ``None`` for a shard's record, whose settings alone are compared.
    """
    if not isinstance(found, dict) or not isinstance(found.get("cases"), dict):
        return "is not a jointreg segment manifest"
    differs = [k for k in settings if _recorded(found, k) != settings[k]]
    if differs:
        return f"was made with other settings (differs in: {', '.join(differs)})"
    if cases is not None:
        listed = found.get("planned", []) if found.get("complete") is False else list(found["cases"])
        if list(listed) != list(cases):
            return f"belongs to a job over other inputs ({len(listed)} case(s); this one has {len(cases)})"
    return None


def check_shared(out: Path, settings: Mapping[str, Any], cases: Sequence[str]) -> None:
    """Refuse, before anything is written, a folder of another job: a shard replaces nothing."""
    for path in (out / MANIFEST_NAME, *_part_paths(out)):
        if not path.is_file():
            continue
        problem = _incompatible(_read_manifest_file(path), settings, cases if path.name == MANIFEST_NAME else None)
        if problem:
            raise InputError(path, f"{problem}; a sharded job never replaces results: give it the other shards' "
                                   "options and inputs, start over without --shard (--overwrite), or choose another --out")


def prepare_folder(out: Path, shard: Shard | None, cases: Sequence[str]) -> tuple[bool, bytes | None]:
    """Create ``out`` and remove the leftover temporaries of earlier calls: all of them, or for a
    shard only those of its own ``cases`` and record (the others' may be in the making).

    Returns:
        What :func:`discard` needs to undo the call: whether ``out`` was created here, and the
        bytes of the ``segmentation.json`` found there (``None``: none).
    """
    from jointreg.inference.shards import remove_temporaries_of
    from jointreg.utils.atomic import remove_stale_temporaries

    created = not out.exists()
    earlier = (out / MANIFEST_NAME).read_bytes() if (out / MANIFEST_NAME).is_file() else None  # restored on failure
    out.mkdir(parents=True, exist_ok=True)
    if shard is None:
        for folder in (out, out / PROBABILITIES_DIR):
            remove_stale_temporaries(folder)
    else:  # only this shard's leftovers: the others' temporaries may be in the making
        names = [f"{case}.nii.gz" for case in cases]
        remove_temporaries_of(out, [*names, shard_record_path(out, shard).name])
        remove_temporaries_of(out / PROBABILITIES_DIR, names)
    return created, earlier


# --------------------------------------------------------------------------------------------
# while a call writes: its record
# --------------------------------------------------------------------------------------------
@dataclass
class JobRecord:
    """The finished cases of one call and the file it records them in after every case:
    ``segmentation.json`` for an unsharded call, its own ``segmentation.shard-I-of-N.json`` for a shard.

    Attributes:
        out: the output folder.
        settings: :func:`job_settings`.
        planned: every case of the job (every shard's), in input order.
        mine: this call's cases, in input order.
        shard: the call's shard, or ``None``.
        cases: the finished cases of this call (case → manifest entry), the kept ones included.
    """

    out: Path
    settings: dict[str, Any]
    planned: list[str]
    mine: list[str]
    shard: Shard | None
    cases: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.out / MANIFEST_NAME if self.shard is None else shard_record_path(self.out, self.shard)

    def manifest(self, complete: bool = False) -> dict[str, Any]:
        """The record's content: the settings and this call's finished cases."""
        ordered = {case: self.cases[case] for case in self.mine if case in self.cases}
        if self.shard is not None:
            return {**self.settings, "shard": str(self.shard), "cases": ordered}
        return {**self.settings, "complete": complete, **({} if complete else {"planned": self.planned}), "cases": ordered}

    def start(self) -> None:
        """Before the first case: an unsharded call writes ``segmentation.json`` (``"complete":
        false``); a shard creates it with no case recorded, or joins the one another shard was
        first to create, a moment ago, when it has the same settings and inputs."""
        from jointreg.inference.shards import claim_json
        from jointreg.utils.atomic import write_json

        if self.shard is None:
            write_json(self.path, self.manifest(False))
            return
        found = claim_json(self.out / MANIFEST_NAME, {**self.settings, "complete": False, "planned": self.planned, "cases": {}})
        problem = None if found is None else _incompatible(found, self.settings, self.planned)
        if problem:  # another shard was first, a moment ago, with other settings
            raise InputError(self.out / MANIFEST_NAME, f"{problem}; a sharded job never replaces results")

    def add(self, case: str, entry: dict[str, Any]) -> None:
        """Record a finished case (its files are written)."""
        from jointreg.utils.atomic import write_json

        self.cases[case] = entry
        write_json(self.path, self.manifest(False))


# --------------------------------------------------------------------------------------------
# after: the complete folder, or nothing
# --------------------------------------------------------------------------------------------
def collect_finished(out: Path, settings: Mapping[str, Any], items: Sequence[Any], digests: dict[str, str], targets):
    """The finished result of every case of the job (case → entry or ``None``) and the cases
    without one. Inputs missing from ``digests`` are hashed only once every case is recorded."""
    records = _records(out, settings)
    found = {item.case: _entry(records, item, None, targets) for item in items}
    if all(found.values()):
        for item in items:
            if item.case not in digests:
                digests[item.case] = sha256_file(item.path)
        found = {item.case: _entry(records, item, digests[item.case], targets) for item in items}
    return found, [case for case, entry in found.items() if entry is None]


def write_complete(out: Path, settings: Mapping[str, Any], items: Sequence[Any], found: Mapping[str, Any]) -> dict[str, Any]:
    """The last step of a job whose every case is finished: the complete ``segmentation.json``,
    then no more shard records or leftover temporaries. Under the folder's lock, so that shards
    that finish together take turns (they write the same bytes)."""
    from jointreg.utils.atomic import remove_stale_temporaries, write_json

    final = {**settings, "complete": True, "cases": {item.case: found[item.case] for item in items}}
    with folder_lock(out):
        write_json(out / MANIFEST_NAME, final)
        for path in _part_paths(out):
            path.unlink(missing_ok=True)
        for folder in (out, out / PROBABILITIES_DIR):
            remove_stale_temporaries(folder)
    return final


def finish(record: JobRecord, items: Sequence[Any], digests: dict[str, str], targets, already_done: Iterable[str]) -> dict[str, Any]:
    """After a call's last case: :func:`~jointreg.inference.segment.segment_inputs`' result.

    An unsharded call completes the folder; a shard completes it when it finds every case of
    the job finished (by any shard), and returns its own cases.
    """
    out, settings = record.out, record.settings
    if record.shard is None:
        final = write_complete(out, settings, items, record.cases)
        return {**final, "already_done": sorted(already_done), "shard": None, "missing": [], "total": len(items)}
    found, missing = collect_finished(out, settings, items, digests, targets)  # every shard's cases
    if not missing:
        write_complete(out, settings, items, found)
    return {**settings, "complete": not missing, "cases": record.manifest(True)["cases"],
            "already_done": sorted(already_done), "shard": str(record.shard), "missing": missing, "total": len(items)}


def merge_segmentations(
    model: str | PathLike[str],
    inputs: Sequence[str | PathLike[str]],
    out: str | PathLike[str],
    *,
    probabilities: bool = False,
    backend: str = "torch",
) -> dict[str, Any]:
    """Finish the output of sharded calls: check that every case is finished, then write the
    complete ``segmentation.json`` (segments nothing, replaces no result).

    The last shard to finish already does this when it sees every case finished; the merge is
    for shards that could not see each other's records in time (a network file system) or to
    check a folder. It takes the shards' own model, inputs, ``probabilities`` and ``backend``.

    Returns:
        :func:`~jointreg.inference.segment.segment_inputs`' result (every case already done).

    Raises:
        InputError: no segment output at ``out``, one of other settings or inputs, unfinished
            cases (how many, and which; a case whose input changed since counts as unfinished).
    """
    from jointreg.export.model_folder import load_model_folder

    folder = resolve_model_folder(model, "segmentor")
    out = Path(out)
    items = collect_inputs(inputs)
    check_output_folder(out, items, [Path(p) for p in inputs])
    settings = job_settings(folder, load_model_folder(folder, device="cpu", kind="segmentor"), probabilities, backend)
    if not out.is_dir():
        raise InputError(out, "not found: nothing to merge (run the shards first)")
    if not (out / MANIFEST_NAME).is_file() and not _part_paths(out):
        raise InputError(out, f"holds no {MANIFEST_NAME}: nothing to merge (run the shards first)")
    check_shared(out, settings, [item.case for item in items])
    found, missing = collect_finished(out, settings, items, {}, output_files(out, probabilities))
    if missing:
        raise InputError(out, f"{describe_missing(missing, len(items))}; run the shards that hold them (or this "
                              "command without --merge), then --merge again")
    final = write_complete(out, settings, items, found)
    return {**final, "already_done": sorted(final["cases"]), "shard": None, "missing": [], "total": len(items)}


def discard(out: Path, created: bool, earlier: bytes | None) -> None:
    """Undo a call that finished no case: remove the folder it created, or restore an existing one."""
    from jointreg.utils.atomic import atomic_path

    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        if earlier is None:
            (out / MANIFEST_NAME).unlink()
        else:
            with atomic_path(out / MANIFEST_NAME) as tmp:
                tmp.write_bytes(earlier)
    with contextlib.suppress(OSError):
        (out / PROBABILITIES_DIR).rmdir()  # only when empty
