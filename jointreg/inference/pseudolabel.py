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

Labels live in the run's label space (``config["labels"]`` of its models). When the run was
trained on a subset of the dataset's classes, annotated voxels of the other classes become
background (the mapping is by class name and written in ``pseudolabel.json``).

Cases without any annotated voxel are labelled by the segmentor alone (their provenance says
so); in ``registration`` mode that needs a run with a segmentor, and a dataset with no
annotated voxel at all is an error (there is nothing to propagate).

**Resumable, safe and deterministic.** Every file is written under a temporary name and renamed
(:mod:`jointreg.utils.atomic`); a case is finished when its label AND its provenance exist (the
provenance is written last); a rerun removes leftover ``.tmp-`` files and skips finished cases.
Nothing is random, so a run killed at any point and rerun with the same settings yields exactly
the files of an uninterrupted run. A rerun with other settings (mode, propagation, source
slices, run or dataset) is refused unless ``overwrite``.

**Parallel.** ``workers`` processes (spawn) each load the networks once and process whole cases,
so memory is bounded by one case per worker whatever the dataset size; each worker uses
``max(1, cores // workers)`` torch threads. The parent only lists cases.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg import __version__
from jointreg.errors import ConfigError, InputError, JointregError
from jointreg.inference.propagate import MODES, PROPAGATIONS

log = logging.getLogger(__name__)

MANIFEST_NAME = "pseudolabel.json"
PROVENANCE_DIR = "provenance"
DEFAULT_RADIUS = 6


@dataclass(frozen=True)
class PseudolabelSettings:
    """How pseudo-labels are made.

    Attributes:
        mode: ``registration``, ``segmentor`` or ``fusion`` (agreement-weighted).
        propagation: ``direct`` (each source warped straight onto the target) or ``chain``
            (through the neighbouring slices).
        source_slices: annotated source slices per side (``direct``; ``chain`` uses 1).
        batch_size: image pairs / slices per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    mode: str = "fusion"
    propagation: str = "direct"
    source_slices: int = 1
    batch_size: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(f"unknown propagation {self.propagation!r}; valid: {', '.join(PROPAGATIONS)}")
        for name in ("source_slices", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the labels (checked when a run is resumed)."""
        per_side = self.source_slices if self.propagation == "direct" else 1
        return {"mode": self.mode, "propagation": self.propagation, "source_slices": per_side}


@dataclass(frozen=True)
class RunModels:
    """The exported model folders of a run (``None`` where the run trained no such network)."""

    registration: Path | None
    segmentor: Path | None


def find_run_models(run: str | PathLike[str]) -> RunModels:
    """The model folders under ``RUN/export`` (checked: format, version, files).

    Raises:
        InputError: not a run folder, no exports, or a broken model folder.
    """
    from jointreg.export.model_folder import read_model_config

    run = Path(run)
    if not run.is_dir():
        raise InputError(run, "run folder not found" if not run.exists() else "not a folder")
    export = run / "export"
    found = {kind: export / kind for kind in ("registration", "segmentor") if (export / kind).is_dir()}
    if not found:
        what = "a jointreg run folder" if (run / "recipe.yaml").is_file() else "a folder"
        raise InputError(
            run, f"is {what} without exported models (export/registration, export/segmentor): "
            "the run has not finished; finish it with 'jointreg train --resume RUN'"
        )
    for kind, folder in found.items():
        config = read_model_config(folder)
        if config["kind"] != kind:
            raise InputError(folder, f"holds a {config['kind']} model, expected a {kind} model")
        if int(config.get("spatial_dims", 2)) != 2:
            raise InputError(folder, "pseudolabel needs 2D (slice) networks")
    return RunModels(found.get("registration"), found.get("segmentor"))


def _model_config(folder: Path | None) -> dict[str, Any] | None:
    from jointreg.export.model_folder import read_model_config

    return None if folder is None else read_model_config(folder)


def label_lookup(dataset_labels: dict[str, int], ignore_label: int | None, model_labels: dict[str, int], source: Path) -> np.ndarray:
    """Dataset label id → model label id (by class name; classes the model lacks → background).

    The dataset's ``ignore`` maps to ``len(model_labels)`` (the networks' ignore index).

    Raises:
        InputError: a model class that the dataset does not have.
    """
    missing = [n for n in model_labels if n not in dataset_labels]
    if missing:
        raise InputError(source, f"has no class {missing[0]!r}, which the run's networks predict (labels {model_labels})")
    top = max([*dataset_labels.values(), ignore_label or 0])
    lut = np.zeros(top + 1, np.int16)
    for name, value in dataset_labels.items():
        lut[value] = model_labels.get(name, 0)
    if ignore_label is not None:
        lut[ignore_label] = len(model_labels)
    return lut


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs (picklable)."""

    dataset: str
    out: str
    models: dict[str, str | None]
    settings: PseudolabelSettings
    preprocessing: dict[str, Any]
    labels: dict[str, int]
    lut: tuple[int, ...]
    radius: float
    modality: str
    file_ending: str
    threads: int | None = None


# --------------------------------------------------------------------------------------------
# one case (runs in a worker, or in the main process with workers=1)
# --------------------------------------------------------------------------------------------
class CaseLabeller:
    """Loads the run's networks once and labels whole cases, writing their outputs."""

    def __init__(self, job: _Job):
        from jointreg.data.dataset import Dataset
        from jointreg.data.slices import SliceSpec
        from jointreg.export.model_folder import load_model_folder
        from jointreg.utils.device import resolve_device, set_threads

        set_threads(job.threads)
        self.job = job
        self.device = resolve_device(job.settings.device)
        self.dataset = Dataset.open(job.dataset)
        self.spec = SliceSpec.from_dict(job.preprocessing)
        self.registration = self.segmentor = None
        if job.models.get("registration") and job.settings.mode != "segmentor":
            self.registration = load_model_folder(job.models["registration"], device=self.device, kind="registration").model
        if job.models.get("segmentor"):
            self.segmentor = load_model_folder(job.models["segmentor"], device=self.device, kind="segmentor").model
        self.lut = np.asarray(job.lut, dtype=np.int16)
        self.num_classes = len(job.labels)
        self.out = Path(job.out)

    # --- paths -------------------------------------------------------------------------
    def label_path(self, case: str) -> Path:
        return self.out / "labelsTr" / f"{case}{self.job.file_ending}"

    def image_path(self, case: str) -> Path:
        return self.out / "imagesTr" / f"{case}_0000{self.job.file_ending}"

    def provenance_path(self, case: str) -> Path:
        return self.out / PROVENANCE_DIR / f"{case}.json"

    # --- the work ----------------------------------------------------------------------
    def _network_labels(self, case: str, image) -> tuple[np.ndarray, str | None]:
        from jointreg.data.nifti import same_geometry

        path = self.dataset.label_path(case)
        ignore = self.num_classes
        if not path.exists():
            return np.full(image.shape, ignore, np.int16), None
        label = self.dataset.read_label(case)
        problem = same_geometry(image, label)
        if problem:
            raise InputError(path, f"does not fit its image: {problem}")
        top = int(label.array.max()) if label.array.size else 0
        if top >= len(self.lut):
            raise InputError(path, f"label value {top} is not declared in dataset.json")
        return self.lut[label.array], str(path.resolve())

    def __call__(self, case: str) -> dict[str, Any]:
        """Label one case and write its image link, label and provenance (in that order)."""
        import torch

        from jointreg.data.nifti import write_volume
        from jointreg.data.slices import slice_volume
        from jointreg.inference.segment import channel_argmax
        from jointreg.utils.atomic import write_json

        job, settings, k = self.job, self.job.settings, self.num_classes
        source_image = self.dataset.image_path(case)
        _link_or_copy(source_image, self.image_path(case))
        image = self.dataset.read_image(case)
        labels, label_source = self._network_labels(case, image)
        sliced = slice_volume(image, None, self.spec, modality=job.modality, ignore_label=None, case=case)
        axis = sliced.axis
        stack = np.moveaxis(labels, axis, 0)  # (S, h, w) view, source grid
        unknown_per_slice = (stack == k).reshape(stack.shape[0], -1).sum(1)
        known_per_slice = stack[0].size - unknown_per_slice
        targets = [int(s) for s in np.flatnonzero(unknown_per_slice)]
        annotated = [int(s) for s in np.flatnonzero(known_per_slice)]
        slices: list[dict[str, Any]] = [
            {"index": s, "annotation": "complete" if not unknown_per_slice[s] else ("partial" if known_per_slice[s] else "none")}
            for s in range(stack.shape[0])
        ]
        case_method = "annotation"
        result = np.array(stack, dtype=np.int16, copy=True)
        if targets:
            # Labels on the training grid, as slice_volume makes them ("ignore" everywhere on
            # unannotated slices, background padding), but only the annotated slices are
            # resampled: label resampling is the costly part of slicing.
            grid_labels = np.full(sliced.images.shape, k, np.int16)
            if annotated:
                grid_labels[annotated] = sliced.geometry.to_training(np.ascontiguousarray(stack[annotated]), "label")
            with torch.no_grad():
                probs, info, case_method = self._label_targets(sliced.images, grid_labels, targets, annotated, case)
            source_probs = sliced.geometry.to_source(probs, "probabilities")  # (T, K, h, w)
            pseudo = channel_argmax(source_probs, 1)
            for i, t in enumerate(targets):
                missing = result[t] == k
                result[t][missing] = pseudo[i][missing]
                entry = slices[t]
                entry["method"] = info[i].method
                if info[i].sources:
                    entry["sources"] = [s.to_json() for s in info[i].sources]
                for key in ("registration_weight", "agreement", "uncovered_fraction"):
                    value = getattr(info[i], key)
                    if value is not None:
                        entry[key] = value
        final = np.moveaxis(result, 0, axis)
        write_volume(self.label_path(case), final, reference=image, is_label=True)
        provenance = {
            "case": case,
            "image": f"imagesTr/{self.image_path(case).name}",
            "label": f"labelsTr/{self.label_path(case).name}",
            "source_image": str(source_image.resolve()),
            "source_label": label_source,
            "method": case_method,
            **settings.result_settings(),
            "radius": job.radius,
            "models": job.models,
            "axis": int(axis),
            "num_slices": int(stack.shape[0]),
            "annotated_slices": annotated,
            "voxels": {"annotated": int(known_per_slice.sum()), "pseudo_labelled": int(unknown_per_slice.sum())},
            "slices": slices,
        }
        write_json(self.provenance_path(case), provenance)
        return {"case": case, "method": case_method, "pseudo_slices": len(targets)}

    def _label_targets(self, images: np.ndarray, labels: np.ndarray, targets: list[int], annotated: list[int], case: str):
        """Fused probabilities ``(T, K, H, W)`` of the target slices on the training grid, their
        :class:`~jointreg.inference.propagate.FusedSlice` records, and the case's method."""
        import torch

        from jointreg.inference.propagate import fuse, propagate_chain, propagate_direct
        from jointreg.inference.segment import predict_stack

        settings, k = self.job.settings, self.num_classes
        estimate = None
        mode = settings.mode
        if mode != "segmentor" and annotated and self.registration is not None:
            common = dict(num_classes=k, ignore_index=k, radius=self.job.radius, batch_size=settings.batch_size, device=self.device)
            if settings.propagation == "chain":
                estimate = propagate_chain(self.registration, images, labels, targets, annotated, **common)
            else:
                estimate = propagate_direct(
                    self.registration, images, labels, targets, annotated, per_side=settings.source_slices, **common
                )
        seg = None
        needs_segmentor = mode != "registration" or estimate is None or bool((~estimate.probabilities()[1]).any())
        if needs_segmentor:
            if self.segmentor is None:
                if estimate is None:
                    raise InputError(
                        self.dataset.label_path(case),
                        "no annotated voxel in this case and the run has no segmentor to fall back on",
                    )
            else:
                probs = predict_stack(self.segmentor, images[targets], batch_size=settings.batch_size, device=self.device)
                seg = torch.from_numpy(probs).to(self.device)
        fused, info = fuse(mode, estimate, seg, num_classes=k)
        case_method = mode if estimate is not None and any(estimate.sources) else "segmentor (no annotated slice)"
        if mode == "segmentor":
            case_method = "segmentor"
        return fused.cpu().numpy(), info, case_method


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (a copy across file systems), atomically."""
    from jointreg.utils.atomic import temporary_sibling

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
# workers
# --------------------------------------------------------------------------------------------
_WORKER: CaseLabeller | None = None


def _init_worker(job: _Job) -> None:
    global _WORKER
    _WORKER = CaseLabeller(job)


def _work(case: str) -> tuple[str, Any]:
    assert _WORKER is not None
    try:
        return "ok", _WORKER(case)
    except JointregError as exc:
        # Our errors do not unpickle (InputError takes two arguments): send the message.
        return "error", str(exc)


def worker_threads(workers: int) -> int:
    """Torch threads per worker: ``max(1, cores // workers)``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


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


def _prepare_out(out: Path, manifest: dict[str, Any], overwrite: bool) -> bool:
    """Create or reopen ``out``; returns True when resuming an earlier run."""
    if not out.exists() or not any(out.iterdir()):
        return False
    path = out / MANIFEST_NAME
    if not path.is_file():
        raise InputError(out, f"exists and is not a jointreg pseudolabel output ({MANIFEST_NAME} is missing); choose another --out")
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    if overwrite:
        shutil.rmtree(out)
        return False
    differs = sorted(k for k in set(manifest) | set(previous) if manifest.get(k) != previous.get(k))
    if differs:
        raise InputError(
            out, f"was made with other settings (differs in: {', '.join(differs)}); pass --overwrite to start "
            "over, or choose another --out"
        )
    return True


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
        ``{"out", "cases", "labelled", "skipped", "methods", "settings"}``.

    Raises:
        InputError / ConfigError: a run without the networks the mode needs, a broken model
            folder, an output folder that is (inside) the dataset, an output made with other
            settings, no annotation at all in registration mode.
    """
    from tqdm.auto import tqdm

    from jointreg.data.dataset import Dataset, write_spec
    from jointreg.utils.atomic import remove_stale_temporaries, write_json

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
    resuming = _prepare_out(out, manifest, overwrite)
    for folder in (out, out / "imagesTr", out / "labelsTr", out / PROVENANCE_DIR):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
    if not resuming:
        write_json(out / MANIFEST_NAME, manifest)
    spec = source.spec.replace(
        labels=dict(labels), num_training=len(cases),
        name=f"{source.spec.name or source.root.name} (jointreg pseudo-labels)",
        extra={**dict(source.spec.extra), "pseudolabel": {"run": manifest["run"], **manifest["settings"]}},
    )
    write_spec(out, spec)
    if source.spec.ignore_label is None:
        log.warning("%s has no 'ignore' label: every voxel is annotated, labels are copied", source.root)
    if dropped:
        log.warning("the run's networks do not predict %s: annotated voxels of these classes become background", ", ".join(dropped))
    job = _Job(
        dataset=str(source.root.resolve()), out=str(out.resolve()), models=model_paths, settings=settings,
        preprocessing=dict(main_config.get("preprocessing", {})), labels=labels, lut=tuple(int(v) for v in lut),
        radius=radius, modality=source.spec.modality, file_ending=source.spec.file_ending,
    )
    finished = [c for c in cases if _finished(out, c, source.spec.file_ending)]
    todo = [c for c in cases if c not in set(finished)]
    if finished:
        log.info("%d of %d case(s) already done in %s; labelling the other %d", len(finished), len(cases), out, len(todo))
    methods: dict[str, int] = {}
    bar = tqdm(total=len(cases), initial=len(finished), desc="pseudolabel", unit="case", disable=None if progress else True)
    with bar:
        for result in _run_cases(job, todo, workers):
            methods[result["method"]] = methods.get(result["method"], 0) + 1
            bar.update(1)
    return {
        "out": str(out),
        "cases": len(cases),
        "labelled": len(todo),
        "skipped": len(finished),
        "methods": methods,
        "settings": asdict(settings),
    }


def _finished(out: Path, case: str, ending: str) -> bool:
    return (out / "labelsTr" / f"{case}{ending}").is_file() and (out / PROVENANCE_DIR / f"{case}.json").is_file()


def _run_cases(job: _Job, todo: list[str], workers: int):
    """Yield each case's result; in this process for one worker, else in a spawn pool."""
    if not todo:
        return
    workers = min(workers, len(todo))
    if workers == 1:
        labeller = CaseLabeller(job)
        for case in todo:
            yield labeller(case)
        return
    import multiprocessing

    job = replace(job, threads=worker_threads(workers))
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        for status, value in pool.imap_unordered(_work, todo):
            if status == "error":
                pool.terminate()
                raise JointregError(value)
            yield value
