"""One case of ``jointreg pseudolabel``, and the worker processes that label many.

:class:`CaseLabeller` loads a run's networks once and labels whole cases: it reads the image
and its sparse label, propagates / segments / fuses (:mod:`jointreg.inference.propagate`) the
slices with unknown voxels, and writes the image link, the label and the provenance, in that
order (a case is finished when its provenance exists). :func:`run_cases` runs it in this
process or in a spawn pool; a :class:`CaseJob` carries everything a worker needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.errors import ConfigError, InputError, JointregError
from jointreg.utils.atomic import link_or_copy
from jointreg.inference.propagate import MODES, PROPAGATIONS
from jointreg.inference.refine import DEFAULT_STEPS as DEFAULT_REFINE, REFINE_SMOOTHNESS, Refinement


PROVENANCE_DIR = "provenance"

DEFAULT_GATE = 1.0
"""The appearance gate of ``pseudolabel --mode registration`` (1st–99th percentiles of each
annotated structure): registration-only pseudo-labels of fold 0's training volumes, 0.772 →
0.793 liver Dice on CHAOS-T2 (better on 5/5), 0.776 → 0.782 (FMIRNet) and 0.750 → 0.763 (the
identity) mean of RV / myocardium / LV on MS-CMR (better on 8/10); results/chaos_t2_liver_cv.md
part g."""


@dataclass(frozen=True)
class PseudolabelSettings:
    """How pseudo-labels are made.

    Attributes:
        mode: ``registration``, ``segmentor`` or ``fusion`` (agreement-weighted).
        propagation: ``direct`` (each source warped straight onto the target) or ``chain``
            (through the neighbouring slices); ``None``: ``chain`` in ``registration`` mode (the
            best measured, results/chaos_t2_liver_cv.md), ``direct`` otherwise.
        source_slices: annotated source slices per side (``direct``; ``chain`` uses 1).
        batch_size: image pairs / slices per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        verify: in ``registration`` mode, stop each propagated structure at the first slice where
            fewer than this fraction of its pixels look like the annotated structure
            (:mod:`jointreg.inference.verify`); ``None``: propagate to every slice.
        gate: in ``registration`` mode, the percentile ``q``: propagated pixels of a class whose
            intensity lies outside the ``q`` .. ``100 − q`` percentiles of its annotated voxels
            become background (:func:`~jointreg.inference.verify.gate_by_appearance`); 0: none;
            ``None``: :data:`DEFAULT_GATE` in ``registration`` mode, 0 otherwise.
        step_gate: with ``chain`` propagation, the same gate applied after every step of the
            chain, before the next (:func:`~jointreg.inference.propagate.propagate_chain`): the
            label shrinks with the organ. 0: none (the default; measured in
            results/chaos_t2_liver_cv.md part h: it raises liver labels, it costs the heart's).
        refine: Adam steps of instance optimisation of every registered pair's field
            (:mod:`jointreg.inference.refine`); ``None``: :data:`DEFAULT_REFINE` in
            ``registration`` mode, 0 otherwise.
        refine_smoothness: the refinement's diffusion weight ``λ``
            (:class:`~jointreg.inference.refine.Refinement`; ``None``: its default, 0.001). A
            smoother refinement suits the heart (0.01: +0.02 mean Dice of the MS-CMR labels on
            3/3 folds) and costs the liver 0.005 (results/ms_cmr_cv.md part i).
        backend: what runs the registration network: ``torch``, ``onnxruntime``
            (:mod:`jointreg.inference.onnx_runtime`; CPU only, the same labels to float
            rounding, so not one of :meth:`result_settings`) or ``torch-bfloat16``
            (:mod:`jointreg.inference.autocast`; labels that may differ, so it is one). The
            segmentor runs in PyTorch.
    """

    mode: str = "fusion"
    propagation: str | None = None
    source_slices: int = 1
    batch_size: int = 16
    device: str = "auto"
    verify: float | None = 0.6
    gate: float | None = None
    step_gate: float = 0.0
    refine: int | None = None
    refine_smoothness: float | None = None
    backend: str = "torch"

    def __post_init__(self) -> None:
        from jointreg.inference.onnx_runtime import check_backend

        check_backend(self.backend, self.device)
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        registration = self.mode == "registration"
        if self.propagation is None:
            object.__setattr__(self, "propagation", "chain" if registration else "direct")
        if self.refine is None:
            object.__setattr__(self, "refine", DEFAULT_REFINE if registration else 0)
        if self.gate is None:
            object.__setattr__(self, "gate", DEFAULT_GATE if registration else 0.0)
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or self.refine < 0:
            raise ConfigError(f"refine must be an integer >= 0 (steps), got {self.refine!r}")
        if self.refine_smoothness is not None:
            value = self.refine_smoothness
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
                raise ConfigError(f"refine-smoothness must be a weight >= 0, got {value!r}")
            if self.refine == 0:
                raise ConfigError("refine-smoothness weights the refinement: it needs --refine STEPS > 0")
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(f"unknown propagation {self.propagation!r}; valid: {', '.join(PROPAGATIONS)}")
        for name in ("source_slices", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.verify is not None and not 0.0 <= self.verify <= 1.0:
            raise ConfigError(f"verify must be a fraction in [0, 1], got {self.verify!r}")
        for name in ("gate", "step_gate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 50.0:
                raise ConfigError(f"{name.replace('_', '-')} must be a percentile in [0, 50), got {value!r}")
        if self.step_gate and (self.mode == "segmentor" or self.propagation != "chain"):
            raise ConfigError("step-gate gates the steps of a chain: it needs --propagation chain (and a mode that registers)")

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the labels (checked when a run is resumed)."""
        per_side = self.source_slices if self.propagation == "direct" else 1
        verify = self.verify if self.mode == "registration" else None
        settings = {"mode": self.mode, "propagation": self.propagation, "source_slices": per_side, "verify": verify,
                    "refine": self.refine}
        if self.backend == "torch-bfloat16" and self.mode != "segmentor":  # (absent: float32, as before)
            settings["precision"] = "bfloat16"
        if self.mode == "registration" and self.gate > 0:  # (absent: no gate, as before)
            settings["gate"] = float(self.gate)
        if self.step_gate > 0:  # (absent: no step gate, as before)
            settings["step_gate"] = float(self.step_gate)
        if self.refine_smoothness is not None and self.refine_smoothness != REFINE_SMOOTHNESS:
            settings["refine_smoothness"] = float(self.refine_smoothness)  # (absent: the default, as before)
        return settings

    def refinement(self) -> Refinement:
        """The instance optimisation these settings ask for."""
        if self.refine_smoothness is None:
            return Refinement(steps=self.refine)
        return Refinement(steps=self.refine, smoothness=float(self.refine_smoothness))


@dataclass(frozen=True)
class CaseJob:
    """Everything a worker needs (picklable).

    Attributes:
        dataset: the sparse dataset's folder.
        out: the output dataset's folder.
        models: ``registration`` / ``segmentor`` model folders (``None``: not used).
        settings: mode, propagation, sources, batch size, device.
        preprocessing: the networks' slicing settings (:class:`~jointreg.data.slices.SliceSpec`).
        labels: the networks' classes (name → id); ``len(labels)`` is their ignore index.
        lut: dataset label id → network label id (:func:`jointreg.data.label_space.label_lookup`).
        radius: the registration's pairing radius in slices (weights ``exp(-distance / radius)``).
        modality: the dataset's channel name (selects the intensity normalisation).
        file_ending: the dataset's file ending, e.g. ``.nii.gz``.
        threads: torch threads of a worker (``None``: leave torch's default).
    """

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
    box: dict[str, Any] | None = None  # a 3D-mode registration's box: cases labelled from the atlases


class CaseLabeller:
    """Loads the run's networks once and labels whole cases, writing their outputs."""

    def __init__(self, job: CaseJob):
        from jointreg.data.dataset import Dataset
        from jointreg.data.slices import SliceSpec
        from jointreg.export.model_folder import load_model_folder
        from jointreg.inference.onnx_runtime import registration_backend
        from jointreg.utils.device import resolve_device, set_threads

        set_threads(job.threads)
        self.job = job
        self.device = resolve_device(job.settings.device)
        self.dataset = Dataset.open(job.dataset)
        self.spec = SliceSpec.from_dict(job.preprocessing)
        self.registration = self.segmentor = None
        if job.models.get("registration") and job.settings.mode != "segmentor":
            self.registration = registration_backend(
                load_model_folder(job.models["registration"], device=self.device, kind="registration").model,
                job.settings.backend)
        self.largest_component: list[int] = []
        if job.models.get("segmentor"):
            from jointreg.inference.postprocess import largest_component_classes

            loaded = load_model_folder(job.models["segmentor"], device=self.device, kind="segmentor")
            self.segmentor = loaded.model
            if job.settings.mode != "registration":  # the segmentor's own rule, for its labels
                self.largest_component = largest_component_classes(loaded.config)
        self.lut = np.asarray(job.lut, dtype=np.int16)
        self.num_classes = len(job.labels)
        self.out = Path(job.out)
        self.box = None
        if job.box is not None and self.registration is not None:
            from jointreg.inference.volume_box import VolumeBox

            self.box = VolumeBox(**job.box)
        self._atlases = None

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
        from jointreg.inference.predict import channel_argmax
        from jointreg.utils.atomic import write_json

        job, settings, k = self.job, self.job.settings, self.num_classes
        source_image = self.dataset.image_path(case)
        link_or_copy(source_image, self.image_path(case))
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
        if targets and self.box is not None:
            case_method, info3d = self._label_from_atlases(case, sliced, result)
            slices = [{**entry, "method": case_method} if entry["annotation"] != "complete" else entry for entry in slices]
            targets_info = info3d
        elif targets:
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
            filled = np.zeros(result.shape, bool)
            for i, t in enumerate(targets):
                missing = result[t] == k
                result[t][missing] = pseudo[i][missing]
                filled[t] = missing
                entry = slices[t]
                entry["method"] = info[i].method
                if info[i].sources:
                    entry["sources"] = [s.to_json() for s in info[i].sources]
                for key in ("registration_weight", "agreement", "uncovered_fraction"):
                    value = getattr(info[i], key)
                    if value is not None:
                        entry[key] = value
            if settings.mode == "registration" and annotated and (settings.verify is not None or settings.gate > 0):
                from jointreg.inference.verify import check_propagated

                result = check_propagated(result, np.moveaxis(image.array, axis, 0), annotated, range(1, k),
                                          propagated=filled, threshold=settings.verify, gate=settings.gate)
            if self.largest_component:
                # Post-processing cleans the pseudo-labels only; annotated voxels stay as given.
                from jointreg.inference.postprocess import keep_largest_component

                cleaned = keep_largest_component(result, self.largest_component)
                result[filled] = cleaned[filled]
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
            "largest_component": self.largest_component,
            "axis": int(axis),
            "num_slices": int(stack.shape[0]),
            "annotated_slices": annotated,
            "voxels": {"annotated": int(known_per_slice.sum()), "pseudo_labelled": int(unknown_per_slice.sum())},
            "slices": slices,
        }
        if targets and self.box is not None:
            provenance.update(targets_info)
        write_json(self.provenance_path(case), provenance)
        return {"case": case, "method": case_method, "pseudo_slices": len(targets)}

    def _atlas_boxes(self):
        """The dataset's cases annotated on every voxel (the atlases), sliced and in the box; built once."""
        if self._atlases is None:
            from jointreg.data.slices import slice_volume
            from jointreg.inference.atlases import BoxedVolumes

            k, sliced = self.num_classes, []
            for case in self.dataset.cases("Tr"):
                if not self.dataset.label_path(case).exists():
                    continue
                image = self.dataset.read_image(case)
                labels, _ = self._network_labels(case, image)
                if (labels == k).any():
                    continue
                label_volume = image.with_array(labels.astype(np.int16))
                sliced.append(slice_volume(image, label_volume, self.spec, modality=self.job.modality,
                                           ignore_label=k, case=case))
            if not sliced:
                raise InputError(self.dataset.labels_dir("Tr"), "the run registers whole volumes (3D mode), but no "
                                 "case is annotated on every voxel to register from (jointreg sparsify --volumes N)")
            self._atlases = BoxedVolumes(sliced, self.box, ignore_index=k)
        return self._atlases

    def _label_from_atlases(self, case: str, sliced, result: np.ndarray) -> tuple[str, dict[str, Any]]:
        """3D mode: fill ``result``'s unknown voxels (``(S, h, w)``, in place) with every atlas
        registered onto the case and fused; voxels no atlas reached get the segmentor's label
        (background without one)."""
        from jointreg.inference.predict import channel_argmax, predict_stack
        from jointreg.inference.atlases import source_labels

        k, axis = self.num_classes, sliced.axis
        boxed = self._atlas_boxes()
        source = source_labels(self.registration, boxed, sliced, num_classes=k, device=self.device)
        pseudo = np.moveaxis(source, axis, 0)  # (S, h, w), k where no atlas reached
        missing = result == k
        uncovered = missing & (pseudo == k)
        if uncovered.any() and self.segmentor is not None:
            probs = predict_stack(self.segmentor, sliced.images, batch_size=self.job.settings.batch_size, device=self.device)
            pseudo = np.where(pseudo == k, channel_argmax(sliced.geometry.to_source(probs, "probabilities"), 1), pseudo)
        result[missing] = np.where(pseudo[missing] == k, 0, pseudo[missing])
        info = {"atlases": [v.case for v in boxed.volumes], "box": self.box.to_dict(),
                "uncovered_fraction": float(uncovered.sum() / max(1, missing.sum())),
                "uncovered_labelled_by": "segmentor" if self.segmentor is not None else "background"}
        return "atlas registration (3D)", info

    def _label_targets(self, images: np.ndarray, labels: np.ndarray, targets: list[int], annotated: list[int], case: str):
        """Fused probabilities ``(T, K, H, W)`` of the target slices on the training grid, their
        :class:`~jointreg.inference.propagate.FusedSlice` records, and the case's method."""
        import torch

        from jointreg.inference.propagate import fuse, propagate_chain, propagate_direct
        from jointreg.inference.predict import predict_stack

        settings, k = self.job.settings, self.num_classes
        estimate = None
        mode = settings.mode
        if mode != "segmentor" and annotated and self.registration is not None:
            common = dict(num_classes=k, ignore_index=k, radius=self.job.radius, batch_size=settings.batch_size,
                          device=self.device, refinement=settings.refinement())
            if settings.propagation == "chain":
                estimate = propagate_chain(self.registration, images, labels, targets, annotated,
                                           step_gate=settings.step_gate, **common)
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


# --------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------
_WORKER: CaseLabeller | Exception | None = None


def _init_worker(job: CaseJob) -> None:
    global _WORKER
    try:
        _WORKER = CaseLabeller(job)
    except (JointregError, OSError) as exc:
        # Kept for the first case: a pool restarts a worker whose initializer fails, forever.
        _WORKER = exc


def _work(case: str) -> tuple[str, Any]:
    assert _WORKER is not None
    try:
        if isinstance(_WORKER, Exception):
            raise _WORKER
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


def run_cases(job: CaseJob, todo: list[str], workers: int):
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
