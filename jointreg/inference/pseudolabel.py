"""Bulk pseudo-labels: turn a sparsely annotated dataset into a complete nnU-Net v2 dataset.

For every case of ``imagesTr`` the voxels labelled ``ignore`` get a label from the run's networks
(registration of the nearest annotated slices, the segmentor, or both: see
:mod:`jointreg.inference.propagate` for the formulas); annotated voxels are copied unchanged.
The output is a dataset that nnU-Net and MONAI train on directly::

    OUT/
      dataset.json              the source's, labels without "ignore", numTraining = cases
      imagesTr/{case}_0000.nii.gz   hard links to the source images (copies across file systems)
      labelsTr/{case}.nii.gz    complete labels, the image's affine and header
      imagesTs/, labelsTs/      the source's test split (links; labels in the run's label space),
                                so that a segmentor trained on OUT is evaluated as on the source
      provenance/{case}.json    per slice: annotated or how it was labelled, sources, weights
      pseudolabel.json          the settings, run, models and dataset of this output
      montages.md  montages/    a picture per case, worst first (:mod:`~jointreg.inference.pseudolabel_review`)

Labels live in the run's label space (``config["labels"]`` of its models). When the run was
trained on a subset of the dataset's classes, annotated voxels of the other classes become
background (the mapping is by class name and written in ``pseudolabel.json``).

Cases without any annotated voxel are labelled by the segmentor alone (their provenance says
so); in ``registration`` mode that needs a run with a segmentor, and a dataset with no
annotated voxel at all is an error (there is nothing to propagate).

**Resumable, safe and deterministic.** Every file is written under a temporary name and renamed
(:mod:`jointreg.utils.atomic`); a case is finished when its label AND its provenance exist (the
provenance is written last); a rerun removes leftover ``.tmp-`` files and skips finished cases.
``pseudolabel.json`` (the settings) is written first, ``dataset.json`` last, once every case is
finished: a folder without it is an unfinished job, never a dataset that claims missing cases.
Nothing is random, so a run killed at any point and rerun with the same settings yields exactly
the files of an uninterrupted run. A rerun with other settings (mode, propagation, source
slices, run or dataset) starts over when the earlier job finished no case, and is refused
unless ``overwrite`` otherwise. A job that fails before finishing any case leaves no output
folder (an existing empty one stays empty).

**Sharded.** With ``shard`` (:mod:`jointreg.inference.shards`; ``--shard I/N``) a job labels
only its share of the cases (sorted names, case ``k`` to shard ``k % N``) into the same ``out``
as the other shards, concurrently or one after the other. ``pseudolabel.json`` is created by the
first shard; the others go on only with identical settings, and a shard never deletes anything
(``overwrite`` is refused; a folder of other settings is refused even without finished cases:
another shard may be at work in it; a failed shard leaves what the others need). The shard that,
after its own cases, finds every case of the dataset finished writes ``dataset.json`` and the
montages; :func:`merge_pseudolabels` (``--merge``) does the same once all shards have run, or
says which cases are missing. The files equal those of one unsharded job.

**Parallel.** ``workers`` processes (spawn) each load the networks once and process whole cases,
so memory is bounded by one case per worker whatever the dataset size; each worker uses
``max(1, cores // workers)`` torch threads. The parent only lists cases. The work on one case,
and the pool, are :mod:`jointreg.inference.pseudolabel_case`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.data.label_space import label_lookup
from jointreg.errors import ConfigError, InputError
from jointreg.inference.pseudolabel_case import PROVENANCE_DIR, CaseJob, PseudolabelSettings, run_cases
from jointreg.inference.pseudolabel_out import (
    MANIFEST_NAME,
    changed_keys,
    check_out,
    discard,
    finished_cases,
    is_finished,
    prepare_out,
    refuse_other_settings,
)
from jointreg.inference.run_models import find_run_models
from jointreg.inference.shards import Shard, describe_missing, refuse_overwrite
from jointreg.version import __version__

log = logging.getLogger(__name__)

DEFAULT_RADIUS = 6


def _model_config(folder: Path | None) -> dict[str, Any] | None:
    from jointreg.export.model_folder import read_model_config

    return None if folder is None else read_model_config(folder)


# --------------------------------------------------------------------------------------------
# the dataset job
# --------------------------------------------------------------------------------------------
def _any_annotation(dataset, ignore: int | None) -> bool:
    for case in dataset.cases("Tr"):
        path = dataset.label_path(case)
        if path.exists() and (ignore is None or bool((dataset.read_label(case).array != ignore).any())):
            return True
    return False


@dataclass(frozen=True)
class _Job:
    """A pseudo-label job as checked before anything is written.

    Attributes:
        source: the sparse :class:`~jointreg.data.dataset.Dataset`.
        cases: its training cases (every shard's).
        manifest: ``pseudolabel.json``.
        spec: the output's ``dataset.json``.
        labels, lut: the run's classes and the source id → output id table.
        dropped: source classes the run does not predict (they become background).
        work: what a worker needs (:class:`~jointreg.inference.pseudolabel_case.CaseJob`).
    """

    source: Any
    cases: list[str]
    manifest: dict[str, Any]
    spec: Any
    labels: dict[str, int]
    lut: Any
    dropped: list[str]
    work: CaseJob


def _without_box(settings: Any) -> Any:
    """A model's settings without the 3D box (a mapping; anything else as it is)."""
    return {k: v for k, v in settings.items() if k != "box"} if isinstance(settings, dict) else settings


def _describe(run: Path, dataset: str | PathLike[str], out: Path, settings: PseudolabelSettings) -> _Job:
    """Check the run, the dataset and the output folder, and say what the job writes."""
    from jointreg.data.dataset import Dataset
    from jointreg.utils.atomic import check_writable_output

    models = find_run_models(run)
    mode = settings.mode
    if mode in ("registration", "fusion") and models.registration is None:
        raise InputError(run, f"mode {mode!r} needs a registration network, but the run exported none (use --mode segmentor)")
    if mode in ("segmentor", "fusion") and models.segmentor is None:
        raise InputError(run, f"mode {mode!r} needs a segmentor, but the run exported none (use --mode registration)")
    reg_config, seg_config = _model_config(models.registration), _model_config(models.segmentor)
    main_config = seg_config or reg_config
    assert main_config is not None
    # A 3D-mode registration (jointreg/training/volume_mode.py) adds its box to the slicing both networks share.
    box = dict((reg_config or {}).get("preprocessing", {}).get("box") or {}) or None
    if reg_config and seg_config:
        for key in ("preprocessing", "labels"):
            if _without_box(reg_config.get(key)) != _without_box(seg_config.get(key)):
                raise InputError(run, f"the registration network and the segmentor disagree on {key}; export them from one run")
    source = Dataset.open(dataset)
    labels = {str(n): int(v) for n, v in main_config.get("labels", {}).items()} or dict(source.spec.class_labels)
    lut = label_lookup(dict(source.spec.class_labels), source.spec.ignore_label, labels, source.root / "dataset.json")
    check_out(out, source.root, run)
    check_writable_output(out)
    cases = source.cases("Tr")
    if not cases:
        raise InputError(source.images_dir("Tr"), "no training cases")
    radius = float((reg_config or {}).get("extra", {}).get("pair_radius", DEFAULT_RADIUS))
    model_paths = {
        "registration": str(models.registration.resolve()) if models.registration and mode != "segmentor" else None,
        "segmentor": str(models.segmentor.resolve()) if models.segmentor else None,
    }
    dropped = sorted(n for n, v in source.spec.class_labels.items() if n not in labels)
    manifest = {
        "created_by": f"jointreg {__version__} pseudolabel",
        "run": str(run.resolve()),
        "dataset": str(source.root.resolve()),
        "models": model_paths,
        "settings": settings.result_settings(),
        "radius": radius,
        "labels": labels,
        "classes_mapped_to_background": dropped,
    }
    spec = source.spec.replace(
        labels=dict(labels), num_training=len(cases),
        name=f"{source.spec.name or source.root.name} (jointreg pseudo-labels)",
        extra={**dict(source.spec.extra), "pseudolabel": {"run": manifest["run"], **manifest["settings"]}},
    )
    work = CaseJob(
        dataset=str(source.root.resolve()), out=str(out.resolve()), models=model_paths, settings=settings,
        preprocessing=_without_box(main_config.get("preprocessing", {})), labels=labels, lut=tuple(int(v) for v in lut),
        radius=radius, modality=source.spec.modality, file_ending=source.spec.file_ending,
        box=box if mode != "segmentor" else None,
    )
    return _Job(source, cases, manifest, spec, labels, lut, dropped, work)


def pseudolabel_dataset(
    run: str | PathLike[str],
    dataset: str | PathLike[str],
    out: str | PathLike[str],
    *,
    settings: PseudolabelSettings = PseudolabelSettings(),
    workers: int = 1,
    overwrite: bool = False,
    shard: Shard | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write complete pseudo-labels for every training case of a sparse dataset (module docstring).

    Args:
        run: a finished run folder (``RUN/export/registration`` and/or ``RUN/export/segmentor``).
        dataset: the sparse dataset (``labelsTr`` with ``ignore``).
        out: the output dataset folder; an earlier, interrupted output is resumed.
        settings: mode, propagation, sources, batch size, device.
        workers: processes (1: in this process).
        overwrite: start over in an existing output folder (not with ``shard``).
        shard: label only this shard's cases (:class:`~jointreg.inference.shards.Shard`) into
            an ``out`` shared with the other shards; ``None``: every case.
        progress: show a progress bar.

    Returns:
        ``{"out", "cases", "shard", "labelled", "skipped", "missing", "methods", "settings",
        "review"}``: ``cases`` counts the whole dataset, ``labelled`` / ``skipped`` this job's
        cases labelled now / found finished, ``missing`` the cases still unfinished after it (other
        shards'), ``review`` the montage page (:mod:`~jointreg.inference.pseudolabel_review`), or
        ``None`` while cases are missing (then there is no ``dataset.json`` either).

    Raises:
        InputError / ConfigError: a run without the networks the mode needs, a broken model
            folder, an output folder that is (inside) the dataset, an output made with other
            settings, no annotation at all in registration mode, ``overwrite`` with ``shard``.
    """
    from tqdm.auto import tqdm

    from jointreg.inference.shards import remove_temporaries_of
    from jointreg.utils.atomic import remove_stale_temporaries, write_json

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    refuse_overwrite(shard, overwrite)
    run, out = Path(run), Path(out)
    job = _describe(run, dataset, out, settings)
    source, cases, ending = job.source, job.cases, job.source.spec.file_ending
    if settings.mode == "registration" and not _any_annotation(source, source.spec.ignore_label):
        raise InputError(
            source.root / "labelsTr",
            "no annotated voxel in any case: registration has nothing to propagate (use --mode segmentor)",
        )
    mine = cases if shard is None else shard.select(cases)
    if not mine:
        log.warning("shard %s has no case: the dataset has %d", shard, len(cases))
    created = not out.exists()
    resuming = prepare_out(out, job.manifest, overwrite, ending, sharded=shard is not None)
    if source.spec.ignore_label is None:
        log.warning("%s has no 'ignore' label: every voxel is annotated, labels are copied", source.root)
    if job.dropped:
        log.warning("the run's networks do not predict %s: annotated voxels of these classes become background", ", ".join(job.dropped))
    methods: dict[str, int] = {}
    try:
        if shard is not None:
            _join(out, job.manifest, ending)
        elif not resuming:
            write_json(out / MANIFEST_NAME, job.manifest)  # first: from now on the folder is ours
        for folder in (out, out / "imagesTr", out / "labelsTr", out / PROVENANCE_DIR):
            folder.mkdir(parents=True, exist_ok=True)
            if shard is None:
                remove_stale_temporaries(folder)
        if shard is not None:  # only this shard's leftovers: the others' temporaries may be in the making
            remove_temporaries_of(out / "imagesTr", [f"{c}_0000{ending}" for c in mine])
            remove_temporaries_of(out / "labelsTr", [f"{c}{ending}" for c in mine])
            remove_temporaries_of(out / PROVENANCE_DIR, [f"{c}.json" for c in mine])
        finished = [c for c in mine if is_finished(out, c, ending)]
        todo = [c for c in mine if c not in set(finished)]
        if finished:
            log.info("%d of %d case(s) already done in %s; labelling the other %d", len(finished), len(mine), out, len(todo))
        if todo:
            (out / "dataset.json").unlink(missing_ok=True)  # the dataset is complete again only at the end
        bar = tqdm(total=len(mine), initial=len(finished), desc="pseudolabel", unit="case", disable=None if progress else True)
        with bar:
            for result in run_cases(job.work, todo, workers):
                methods[result["method"]] = methods.get(result["method"], 0) + 1
                bar.update(1)
    except BaseException:
        # A shard never undoes: the folder and its settings are the other shards' too.
        if shard is None and out.is_dir() and not finished_cases(out, ending):
            discard(out, created)
        raise
    missing = [c for c in cases if not is_finished(out, c, ending)]  # other shards' cases
    review = None if missing else _finish(out, job, progress=progress)
    return {
        "out": str(out),
        "cases": len(cases),
        "shard": None if shard is None else str(shard),
        "labelled": len(todo),
        "skipped": len(finished),
        "missing": missing,
        "methods": methods,
        "settings": asdict(settings),
        "review": None if review is None else str(review),
    }


def merge_pseudolabels(
    run: str | PathLike[str],
    dataset: str | PathLike[str],
    out: str | PathLike[str],
    *,
    settings: PseudolabelSettings = PseudolabelSettings(),
    progress: bool = True,
) -> dict[str, Any]:
    """Finish the output of sharded jobs: check that every case is there, then write
    ``dataset.json`` and the montages (labels nothing, deletes nothing).

    The last shard to finish already does this when it sees every case finished; ``--merge``
    is for shards that could not see each other's files in time (a network file system) or to
    check a folder. It takes the shards' own run, dataset and settings.

    Returns:
        :func:`pseudolabel_dataset`'s summary (nothing labelled, every case skipped).

    Raises:
        InputError: no pseudo-label output at ``out``, one made with other settings, or
            unfinished cases (how many, and which).
    """
    run, out = Path(run), Path(out)
    job = _describe(run, dataset, out, settings)
    path = out / MANIFEST_NAME
    if not path.is_file():
        if not out.exists():
            raise InputError(out, "not found: nothing to merge (run the shards first)")
        raise InputError(out, f"is not a jointreg pseudolabel output ({MANIFEST_NAME} is missing); nothing to merge")
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        previous = {}
    differs = changed_keys(job.manifest, previous)
    if differs:
        raise InputError(
            out, f"was made with other settings (differs in: {', '.join(differs)}); --merge takes the options the shards were given"
        )
    ending = job.source.spec.file_ending
    missing = [c for c in job.cases if not is_finished(out, c, ending)]
    if missing:
        raise InputError(
            out, f"{describe_missing(missing, len(job.cases))}; run the shards that hold them (or this command "
            "without --merge), then --merge again"
        )
    review = _finish(out, job, progress=progress)
    return {
        "out": str(out), "cases": len(job.cases), "shard": None, "labelled": 0, "skipped": len(job.cases),
        "missing": [], "methods": {}, "settings": asdict(settings), "review": str(review),
    }


def _join(out: Path, manifest: dict[str, Any], ending: str) -> None:
    """A shard's start: create ``pseudolabel.json`` as the first shard, or accept the one
    another shard created only when it is identical (:func:`~jointreg.inference.shards.claim_json`)."""
    from jointreg.inference.shards import claim_json

    out.mkdir(parents=True, exist_ok=True)
    found = claim_json(out / MANIFEST_NAME, manifest)
    differs = [] if found is None else changed_keys(manifest, found)
    if differs:
        raise refuse_other_settings(out, differs, len(finished_cases(out, ending)))


def _finish(out: Path, job: _Job, *, progress: bool) -> Path:
    """Make the folder, whose every case is finished, a dataset: ``dataset.json``, then the montages.

    Under the folder's lock, so that shards that finish together take turns; since no case is
    being written any more, every leftover temporary can go first. Returns the montage page.
    """
    from jointreg.data.dataset import write_spec
    from jointreg.inference.pseudolabel_review import write_pseudolabel_review
    from jointreg.inference.shards import folder_lock
    from jointreg.utils.atomic import remove_stale_temporaries

    with folder_lock(out):
        for folder in (out, out / "imagesTr", out / "labelsTr", out / PROVENANCE_DIR):
            remove_stale_temporaries(folder)
        carry_test_split(job.source, out, job.lut, len(job.labels))
        write_spec(out, job.spec)  # last: the dataset is complete
        # montages, worst case first
        return write_pseudolabel_review(out, job.source, job.labels, job.lut, progress=progress)


def carry_test_split(source: Any, out: Path, lut: Any, num_classes: int) -> int:
    """Give the output the source's test split, so that a segmentor trained on the pseudo-labels
    is evaluated as one trained on the source would be: ``imagesTs`` linked, ``labelsTs`` in
    the run's label space (linked when that is the source's own, rewritten otherwise: classes
    the run does not predict become background). Returns the number of test cases.

    Raises:
        InputError: a test label with a value ``dataset.json`` does not declare, or with
            ``ignore`` voxels (a test label must be complete).
    """
    import numpy as np

    from jointreg.data.dataset import CHANNEL_SUFFIX
    from jointreg.data.nifti import write_volume
    from jointreg.utils.atomic import link_or_copy, remove_stale_temporaries

    if not source.has_split("Ts"):
        return 0
    ending = source.spec.file_ending
    lut = np.asarray(lut)
    same_ids = all(int(lut[v]) == v for v in source.spec.class_labels.values())
    cases = source.cases("Ts")
    for folder in (out / "imagesTs", out / "labelsTs"):
        if folder.is_dir():
            remove_stale_temporaries(folder)
    for case in cases:
        link_or_copy(source.image_path(case, "Ts"), out / "imagesTs" / f"{case}{CHANNEL_SUFFIX}{ending}")
        if not source.label_path(case, "Ts").exists():
            continue
        label = source.read_label(case, "Ts")  # refuses undeclared values, by name
        mapped = lut[label.array]
        if label.array.size and int(mapped.max()) >= num_classes:
            raise InputError(label.path, "holds 'ignore' voxels: a test label must be complete")
        target = out / "labelsTs" / f"{case}{ending}"
        if same_ids:
            link_or_copy(label.path, target)
        else:
            write_volume(target, mapped, reference=label, is_label=True)
    return len(cases)
