"""The end of a run: the selected weights, exported model folders, and the evaluation on the
dataset's test split."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from jointreg.data.slices import load_sliced_dataset
from jointreg.export.run_folder import RunPaths
from jointreg.training.checkpoint import load_checkpoint
from jointreg.training.config import Recipe
from jointreg.training.data import TrainingData, remap_volume
from jointreg.training.networks import Networks, TrainingState, load_weights
from jointreg.training.run_folder import recipe_digest, remove_run_temporaries
from jointreg.utils.atomic import write_json

log = logging.getLogger(__name__)


def finish_run(
    recipe: Recipe, paths: RunPaths, data: TrainingData, nets: Networks, state: TrainingState,
    device: torch.device, show_progress: bool,
) -> dict[str, Any]:
    """Select the best weights, export the model folders, evaluate, write ``summary.json``.

    Leftovers of writes a kill interrupted (``.tmp-*``) are removed last, so that a finished run
    folder holds only its results.
    """
    from jointreg.export.model_folder import save_model_folder
    from jointreg.export.preprocessing import with_pipeline  # the resolved preprocessing, for deployments

    if state.best_step is not None:
        if paths.best.is_dir():
            load_weights(nets, load_checkpoint(paths.best))
            log.info("selected the weights of step %d (validation score %.4f)", state.best_step, state.best_score)
        else:
            log.warning("%s is missing: exporting the last weights instead of those of step %d",
                        paths.best, state.best_step)
    preprocessing = data.slice_spec.to_dict()
    labels = data.labels
    extra = {"run": recipe.name, "recipe_mode": recipe.mode, "step": state.step}
    from jointreg.inference.segment import TRAINING_GEOMETRY, describe_training_geometry

    # What `jointreg segment` compares new inputs with (orientation, spacing): see docs/inference.md.
    extra[TRAINING_GEOMETRY] = describe_training_geometry(data.train)
    exported = {}
    if nets.registration is not None and recipe.volumes.enabled:
        # 3D mode: volumes are sliced as for training, then resampled into the box (register reads the box).
        from jointreg.training.volume_mode import training_box

        box = training_box(recipe, data.train).to_dict()
        exported["registration"] = str(save_model_folder(
            paths.model("registration"), nets.registration, kind="registration",
            architecture=recipe.registration.architecture, preprocessing={**preprocessing, "box": box},
            labels=labels, modality=data.spec.modality, extra={**extra, "box": box},
        ))
    elif nets.registration is not None:
        exported["registration"] = str(save_model_folder(
            paths.model("registration"), nets.registration, kind="registration",
            architecture=recipe.registration.architecture, preprocessing=preprocessing, labels=labels,
            modality=data.spec.modality,
            extra=with_pipeline("registration", preprocessing, data.spec.modality,
                                {**extra, "pair_radius": recipe.pairs.radius}),
        ))
    postprocessing = None
    if nets.segmentor is not None:
        from jointreg.inference.postprocess import POSTPROCESSING

        postprocessing = decide_postprocessing(recipe, data, nets.segmentor)
        log.info("post-processing: largest component for classes %s (decided on %s)",
                 postprocessing["largest_component"], postprocessing["decided_on"])
        exported["segmentor"] = str(save_model_folder(
            paths.model("segmentor"), nets.segmentor, kind="segmentor",
            architecture=recipe.segmentation.architecture, preprocessing=preprocessing, labels=labels,
            modality=data.spec.modality,
            extra=with_pipeline("segmentor", preprocessing, data.spec.modality, {**extra, POSTPROCESSING: postprocessing}),
        ))
    summary: dict[str, Any] = {
        "status": "finished",
        "run": str(paths.root),
        "name": recipe.name,
        "mode": recipe.mode,
        "steps": state.step,
        "registration_steps": state.registration_steps,
        "segmentation_steps": state.segmentation_steps,
        "stopped_early": state.stopped_early,
        "best_step": state.best_step,
        "best_validation": state.best_score,
        "train_seconds": round(state.elapsed, 1),
        "device": str(device),
        "precision": state.precision,
        "dataset_path": os.path.realpath(recipe.data.dataset),  # what a later rerun's data set is checked against
        "recipe_sha256": recipe_digest(recipe),
        "exported": exported,
        "history": state.history,
    }
    if postprocessing is not None:
        summary["postprocessing"] = postprocessing
    if recipe.evaluation.enabled:
        largest = postprocessing["largest_component"] if postprocessing else ()
        summary["evaluation"] = evaluate_run_models(recipe, paths, data, nets, progress=show_progress,
                                                    largest_component=largest)
    write_json(paths.summary, summary)
    remove_run_temporaries(paths)
    return summary


def decide_postprocessing(recipe: Recipe, data: TrainingData, segmentor: torch.nn.Module) -> dict[str, Any]:
    """Which classes keep only their largest connected component (``segmentation.postprocessing``).

    ``auto`` decides on the fully labelled validation cases, as nnU-Net decides on its
    cross-validation folds. Without them nothing is applied: sparse labels (the training volumes'
    annotated slices) cannot judge a component elsewhere in the volume; on CHAOS-T2 that choice
    always applied the rule, and it removed real liver in some volumes.
    """
    from jointreg.inference.postprocess import choose_largest_component

    mode = recipe.segmentation.postprocessing
    classes = sorted(data.foreground_labels.values())
    if mode != "auto":
        return {"largest_component": classes if mode == "largest_component" else [], "decided_on": "recipe"}
    # Only complete labels can judge a component: sparse ones leave the other slices unscored,
    # and an unscored component is a tie that would always apply the rule.
    judged = [v for v in data.validation if v.full_labels is not None] if recipe.data.validation_labels == "full" else []
    if not judged:
        return {"largest_component": [], "decided_on": "nothing (no fully labelled validation cases: data.validation_count)"}
    from jointreg.inference.predict import channel_argmax, predict_stack

    cases = [(channel_argmax(predict_stack(segmentor, v.images), 1), v.full_labels) for v in judged]
    decision = choose_largest_component(cases, classes, ignore_label=data.ignore_index)
    decision["decided_on"] = "validation"
    return decision


def evaluate_run_models(recipe: Recipe, paths: RunPaths, data: TrainingData, nets: Networks, *, progress: bool,
                        largest_component: Sequence[int] = ()) -> dict[str, Any]:
    """Evaluate the final networks on the recipe's evaluation split (source geometry, mm); the
    segmentor with the exported post-processing, and without it in ``evaluation_raw/``."""
    split = recipe.evaluation.split
    ds = data.dataset
    cases = [c for c in ds.cases(split) if ds.label_path(c, split).exists()]
    if not cases:
        log.warning("no labelled %s cases to evaluate on", split)
        return {"cases": 0}
    result: dict[str, Any] = {"split": split, "cases": len(cases)}
    volumes = [remap_volume(v, data.label_lut, data.ignore_index)
               for v in load_sliced_dataset(ds, data.slice_spec, split=split, cases=cases, progress=progress)]
    if nets.segmentor is not None:
        from jointreg.inference.evaluation import evaluate_segmentor_on_volumes

        result["segmentation"] = evaluate_segmentor_on_volumes(
            nets.segmentor, volumes, ds, split=split,
            predictions_dir=paths.predictions if recipe.evaluation.write_predictions else None,
            report_dir=paths.evaluation, labels=data.foreground_labels, label_lut=data.label_lut,
            progress=progress, largest_component=largest_component, raw_report_dir=paths.evaluation_raw,
        )
    if nets.registration is not None and recipe.volumes.enabled:
        result["registration"] = _evaluate_volume_registration(recipe, paths, data, nets, volumes, split)
    elif nets.registration is not None:
        from jointreg.inference.evaluation import evaluate_registration_on_volumes

        result["registration"] = evaluate_registration_on_volumes(
            nets.registration, volumes, radius=recipe.pairs.radius, num_classes=data.num_classes,
            ignore_index=data.ignore_index, out_json=paths.evaluation / "registration.json",
        )
    return result


def _evaluate_volume_registration(recipe: Recipe, paths: RunPaths, data: TrainingData, nets: Networks,
                                  volumes, split: str) -> dict[str, Any]:
    """3D mode: the atlases' labels registered onto the training targets (against
    ``labelsTr_full``) and onto the evaluation volumes, on their own grids, with the identity's
    (:func:`~jointreg.training.volume_mode.evaluate_propagation`); written to
    ``evaluation/registration.json``."""
    from jointreg.training.volume_mode import atlas_boxes, evaluate_propagation
    from jointreg.utils.device import module_device

    ds, lut = data.dataset, data.label_lut

    def truth(case: str, split_name: str, full: bool):
        path = ds.label_path(case, split_name, full=full)
        return lut[ds.read_label(case, split_name, full=full).array] if path.exists() else None

    groups = {
        "training": [(v, t) for v in data.train if (t := truth(v.case, "Tr", True)) is not None],
        split: [(v, t) for v in volumes if (t := truth(v.case, split, False)) is not None],
    }
    names = {int(i): n for n, i in data.labels.items()}
    result = evaluate_propagation(nets.registration, atlas_boxes(recipe, data.train, data.ignore_index), groups,
                                  num_classes=data.num_classes, ignore_index=data.ignore_index,
                                  device=module_device(nets.registration), class_names=names)
    write_json(paths.evaluation / "registration.json", result)
    return result
