"""Bulk pseudo-labels: turn a sparsely annotated dataset into a complete nnU-Net v2 dataset.

For every case of ``imagesTr`` the voxels labelled ``ignore`` get a label from the run's networks
(registration of the nearest annotated slices, the segmentor, or both: see
:mod:`jointreg.inference.propagate` for the formulas); annotated voxels are copied unchanged.
The output is a dataset that nnU-Net and MONAI train on directly::

    OUT/
      dataset.json              the source's, labels without "ignore", numTraining = cases
      imagesTr/{case}_0000.nii.gz   hard links to the source images (copies across file systems)
      labelsTr/{case}.nii.gz    complete labels, the image's affine and header
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

**Parallel.** ``workers`` processes (spawn) each load the networks once and process whole cases,
so memory is bounded by one case per worker whatever the dataset size; each worker uses
``max(1, cores // workers)`` torch threads. The parent only lists cases. The work on one case,
and the pool, are :mod:`jointreg.inference.pseudolabel_case`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.data.label_space import label_lookup
from jointreg.errors import ConfigError, InputError
from jointreg.inference.pseudolabel_case import PROVENANCE_DIR, CaseJob, PseudolabelSettings, run_cases
from jointreg.inference.run_models import find_run_models
from jointreg.version import __version__

log = logging.getLogger(__name__)

MANIFEST_NAME = "pseudolabel.json"
DEFAULT_RADIUS = 6


def _model_config(folder: Path | None) -> dict[str, Any] | None:
    from jointreg.export.model_folder import read_model_config

    return None if folder is None else read_model_config(folder)


# --------------------------------------------------------------------------------------------
# the dataset job
# --------------------------------------------------------------------------------------------
def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_out(out: Path, dataset_root: Path, run: Path) -> None:
    o, d = out.resolve(), dataset_root.resolve()
    if o == d:
        raise InputError(out, "the output folder is the input dataset; choose another --out")
    if _is_within(o, d) or _is_within(d, o):
        raise InputError(out, f"the output folder must not contain, or lie inside, the input dataset {dataset_root}")
    if _is_within(o, run.resolve()):
        raise InputError(out, f"the output folder must not lie inside the run folder {run}")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")


def _is_empty(out: Path) -> bool:
    """No entry but leftovers of interrupted atomic writes (``.tmp-*``)."""
    from jointreg.utils.atomic import TMP_PREFIX

    return not out.exists() or all(entry.name.startswith(TMP_PREFIX) for entry in out.iterdir())


def _finished_cases(out: Path, ending: str) -> list[str]:
    provenance = out / PROVENANCE_DIR
    cases = sorted(p.stem for p in provenance.glob("*.json")) if provenance.is_dir() else []
    return [c for c in cases if _finished(out, c, ending)]


def _clear(out: Path) -> None:
    """Empty an output folder of ours (it holds ``pseudolabel.json``), keeping the folder itself."""
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _discard(out: Path, created: bool) -> None:
    """Undo a job that finished no case: remove the folder it created, or empty the one it was given."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    try:
        _clear(out)
    except OSError:
        log.warning("could not empty %s after the failure", out)


def _prepare_out(out: Path, manifest: dict[str, Any], overwrite: bool, ending: str) -> bool:
    """Create or reopen ``out``; returns True when resuming an earlier run."""
    if _is_empty(out):
        return False
    path = out / MANIFEST_NAME
    if not path.is_file():
        raise InputError(out, f"exists and is not a jointreg pseudolabel output ({MANIFEST_NAME} is missing); choose another --out")
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        previous = {}
    if overwrite:
        _clear(out)
        return False
    differs = sorted(k for k in set(manifest) | set(previous) if manifest.get(k) != previous.get(k))
    if not differs:
        return True
    finished = _finished_cases(out, ending)
    if not finished:
        # Leftovers of a job that failed or stopped before finishing any case: nothing to keep.
        log.info("%s holds no finished case of an earlier job with other settings: starting over", out)
        _clear(out)
        return False
    raise InputError(
        out, f"was made with other settings (differs in: {', '.join(differs)}; {len(finished)} finished case(s)); "
        "rerun with those settings to resume, pass --overwrite to start over, or choose another --out"
    )


def _any_annotation(dataset, ignore: int | None) -> bool:
    for case in dataset.cases("Tr"):
        path = dataset.label_path(case)
        if path.exists() and (ignore is None or bool((dataset.read_label(case).array != ignore).any())):
            return True
    return False


def pseudolabel_dataset(
    run: str | PathLike[str],
    dataset: str | PathLike[str],
    out: str | PathLike[str],
    *,
    settings: PseudolabelSettings = PseudolabelSettings(),
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write complete pseudo-labels for every training case of a sparse dataset (module docstring).

    Args:
        run: a finished run folder (``RUN/export/registration`` and/or ``RUN/export/segmentor``).
        dataset: the sparse dataset (``labelsTr`` with ``ignore``).
        out: the output dataset folder; an earlier, interrupted output is resumed.
        settings: mode, propagation, sources, batch size, device.
        workers: processes (1: in this process).
        overwrite: start over in an existing output folder.
        progress: show a progress bar.

    Returns:
        ``{"out", "cases", "labelled", "skipped", "methods", "settings", "review"}`` (the
        montage page, :mod:`~jointreg.inference.pseudolabel_review`).

    Raises:
        InputError / ConfigError: a run without the networks the mode needs, a broken model
            folder, an output folder that is (inside) the dataset, an output made with other
            settings, no annotation at all in registration mode.
    """
    from tqdm.auto import tqdm

    from jointreg.data.dataset import Dataset, write_spec
    from jointreg.utils.atomic import check_writable_output, remove_stale_temporaries, write_json

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    run, out = Path(run), Path(out)
    models = find_run_models(run)
    mode = settings.mode
    if mode in ("registration", "fusion") and models.registration is None:
        raise InputError(run, f"mode {mode!r} needs a registration network, but the run exported none (use --mode segmentor)")
    if mode in ("segmentor", "fusion") and models.segmentor is None:
        raise InputError(run, f"mode {mode!r} needs a segmentor, but the run exported none (use --mode registration)")
    reg_config, seg_config = _model_config(models.registration), _model_config(models.segmentor)
    main_config = seg_config or reg_config
    assert main_config is not None
    if reg_config and seg_config:
        for key in ("preprocessing", "labels"):
            if reg_config.get(key) != seg_config.get(key):
                raise InputError(run, f"the registration network and the segmentor disagree on {key}; export them from one run")
    source = Dataset.open(dataset)
    labels = {str(n): int(v) for n, v in main_config.get("labels", {}).items()} or dict(source.spec.class_labels)
    lut = label_lookup(dict(source.spec.class_labels), source.spec.ignore_label, labels, source.root / "dataset.json")
    _check_out(out, source.root, run)
    check_writable_output(out)
    cases = source.cases("Tr")
    if not cases:
        raise InputError(source.images_dir("Tr"), "no training cases")
    if mode == "registration" and not _any_annotation(source, source.spec.ignore_label):
        raise InputError(
            source.root / "labelsTr",
            "no annotated voxel in any case: registration has nothing to propagate (use --mode segmentor)",
        )
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
    created = not out.exists()
    resuming = _prepare_out(out, manifest, overwrite, source.spec.file_ending)
    spec = source.spec.replace(
        labels=dict(labels), num_training=len(cases),
        name=f"{source.spec.name or source.root.name} (jointreg pseudo-labels)",
        extra={**dict(source.spec.extra), "pseudolabel": {"run": manifest["run"], **manifest["settings"]}},
    )
    if source.spec.ignore_label is None:
        log.warning("%s has no 'ignore' label: every voxel is annotated, labels are copied", source.root)
    if dropped:
        log.warning("the run's networks do not predict %s: annotated voxels of these classes become background", ", ".join(dropped))
    job = CaseJob(
        dataset=str(source.root.resolve()), out=str(out.resolve()), models=model_paths, settings=settings,
        preprocessing=dict(main_config.get("preprocessing", {})), labels=labels, lut=tuple(int(v) for v in lut),
        radius=radius, modality=source.spec.modality, file_ending=source.spec.file_ending,
    )
    methods: dict[str, int] = {}
    try:
        if not resuming:
            write_json(out / MANIFEST_NAME, manifest)  # first: from now on the folder is ours
        for folder in (out, out / "imagesTr", out / "labelsTr", out / PROVENANCE_DIR):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
        finished = [c for c in cases if _finished(out, c, source.spec.file_ending)]
        todo = [c for c in cases if c not in set(finished)]
        if finished:
            log.info("%d of %d case(s) already done in %s; labelling the other %d", len(finished), len(cases), out, len(todo))
        if todo:
            (out / "dataset.json").unlink(missing_ok=True)  # the dataset is complete again only at the end
        bar = tqdm(total=len(cases), initial=len(finished), desc="pseudolabel", unit="case", disable=None if progress else True)
        with bar:
            for result in run_cases(job, todo, workers):
                methods[result["method"]] = methods.get(result["method"], 0) + 1
                bar.update(1)
    except BaseException:
        if out.is_dir() and not _finished_cases(out, source.spec.file_ending):
            _discard(out, created)
        raise
    write_spec(out, spec)  # last: the dataset is complete
    from jointreg.inference.pseudolabel_review import write_pseudolabel_review

    review = write_pseudolabel_review(out, source, labels, lut, progress=progress)  # montages, worst case first
    return {
        "out": str(out),
        "cases": len(cases),
        "labelled": len(todo),
        "skipped": len(finished),
        "methods": methods,
        "settings": asdict(settings),
        "review": str(review),
    }


def _finished(out: Path, case: str, ending: str) -> bool:
    return (out / "labelsTr" / f"{case}{ending}").is_file() and (out / PROVENANCE_DIR / f"{case}.json").is_file()
