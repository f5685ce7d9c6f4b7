"""Evaluate a folder of predicted label maps against ground-truth labels, matched by case id.

File names: ``{case}.nii.gz`` (or ``.nii``) in both folders, as nnU-Net writes predictions and
labels. The ground truth ``--gt`` may be

* a labels folder (``labelsTs/``, ``labelsTr_full/``, any folder of ``{case}.nii.gz``), or
* a dataset folder (with ``dataset.json``): its ``labelsTs/``, else ``labelsTr_full/`` (complete
  labels kept aside by ``jointreg sparsify``), else ``labelsTr/`` — the first of these that holds
  a label for at least one predicted case.

The label map (class names, ids, ``ignore``) comes from ``--labels`` (a ``dataset.json`` or a
dataset folder), else the ``dataset.json`` of the ground-truth dataset, of the labels folder's
parent, or of the prediction folder (nnU-Net copies it there). Without any, the classes are the
non-zero values found in the files, named ``label_<id>``.

The predictions' own label map, when they carry one (:func:`~jointreg.metrics.label_maps.prediction_label_map`: the
``segmentation.json`` of ``jointreg segment`` and of a run's ``predictions/``, or a
``dataset.json`` such as a pseudo-label dataset's), decides which classes can be scored: a class
of the ground truth that the predicting model does not know (a liver-only run on a dataset with
kidneys and spleen) is listed as *not predicted* (``info["classes_not_predicted"]``) and scored
nowhere, rather than counted as missed with Dice 0 in every case. Prediction ids are matched to
the ground truth's by class name.

Every case of the ground-truth folder is evaluated; a case without a prediction gives
``missing`` rows (a prediction folder without any label file is refused: it is the wrong
folder, and a report of missing cases only would hide it). Checks, each raising :class:`~jointreg.errors.InputError` naming the case and
file: unreadable or non-integer label files, shape or affine (tolerance 1e-3 mm) differing from
the ground truth, values not in the label map, the ``ignore`` id in a prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.data.dataset import DatasetSpec, read_spec
from jointreg.data.nifti import Volume, read_label, same_geometry, strip_nifti_suffix
from jointreg.errors import ConfigError, InputError, JointregError
from jointreg.metrics.segmentation import ClassMetrics, evaluate_case
from jointreg.metrics.gallery import CaseMontage, case_montage_png, images_folder_for
from jointreg.metrics.label_maps import prediction_label_map, prediction_lookup
from jointreg.utils.atomic import TMP_PREFIX

logger = logging.getLogger(__name__)

GEOMETRY_TOLERANCE_MM = 1e-3
GT_SUBFOLDERS = ("labelsTs", "labelsTr_full", "labelsTr")
"""Where the ground truth is looked for in a dataset folder, in order of preference."""


@dataclass(frozen=True)
class FolderEvaluation:
    """Result of :func:`evaluate_folders`.

    Attributes:
        rows: one :class:`ClassMetrics` per case and class, cases sorted, classes by id.
        info: where the data came from (folders, label map, ignore id, classes), for reports.
        missing_cases: cases of the ground truth without a prediction.
        montages: per evaluated case, its montage PNG (:mod:`jointreg.metrics.gallery`);
            empty with ``montage_slices=0``.
    """

    rows: list[ClassMetrics]
    info: dict[str, Any] = field(default_factory=dict)
    missing_cases: list[str] = field(default_factory=list)
    montages: dict[str, bytes] = field(default_factory=dict)


def label_files(folder: str | PathLike[str]) -> dict[str, Path]:
    """``{case: path}`` of the NIfTI files in ``folder`` (hidden and temporary files skipped).

    Raises:
        InputError: not a folder, or two files for the same case (``.nii`` and ``.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found" if not folder.exists() else "not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith((".", TMP_PREFIX)) or not path.is_file():
            continue
        case = strip_nifti_suffix(path.name)
        if case == path.name:
            continue
        if case in found:
            raise InputError(path, f"a second file for case {case!r} (also {found[case].name})")
        found[case] = path
    return found


def resolve_ground_truth(gt: str | PathLike[str], pred_cases: Iterable[str]) -> Path:
    """The labels folder to compare with: ``gt`` itself, or the right one in a dataset folder."""
    gt = Path(gt)
    if not gt.is_dir():
        raise InputError(gt, "folder not found" if not gt.exists() else "not a folder")
    if not (gt / "dataset.json").is_file():
        return gt
    wanted = set(pred_cases)
    present = [gt / name for name in GT_SUBFOLDERS if (gt / name).is_dir()]
    for folder in present:
        if wanted & set(label_files(folder)):
            return folder
    names = ", ".join(GT_SUBFOLDERS)
    example = f" (e.g. {sorted(wanted)[0]!r})" if wanted else ""
    raise InputError(gt, f"none of {names} holds a label for the predicted cases{example}")


def find_label_map(
    labels: str | PathLike[str] | DatasetSpec | None,
    gt: Path,
    gt_labels_dir: Path,
    pred_dir: Path,
) -> tuple[DatasetSpec | None, str]:
    """The label map to use and a description of where it came from."""
    if isinstance(labels, DatasetSpec):
        return labels, "given"
    if labels is not None:
        return read_spec(labels), str(labels)
    for candidate in (gt / "dataset.json", gt_labels_dir.parent / "dataset.json", pred_dir / "dataset.json"):
        if candidate.is_file():
            return read_spec(candidate), str(candidate)
    return None, "inferred from the label values (no dataset.json found)"


def select_classes(available: Mapping[str, int], wanted: Sequence[str] | None) -> dict[str, int]:
    """The classes named in ``wanted`` (names or ids), all of ``available`` when ``None``.

    Raises:
        ConfigError: a name that is not a class, listing the valid ones.
    """
    if not wanted:
        return dict(available)
    by_id = {str(v): n for n, v in available.items()}
    chosen: dict[str, int] = {}
    for item in wanted:
        name = item if item in available else by_id.get(str(item))
        if name is None:
            valid = ", ".join(f"{n} ({v})" for n, v in available.items())
            raise ConfigError(f"unknown class {item!r}; valid classes: {valid}")
        chosen[name] = available[name]
    return chosen



@dataclass(frozen=True)
class _Task:
    case: str
    pred_path: Path | None
    gt_path: Path
    classes: tuple[tuple[str, int], ...]  # empty: infer from the values present
    ignore_label: int | None
    pred_values: frozenset[int] | None  # allowed values; None: anything
    gt_values: frozenset[int] | None
    pred_lut: tuple[int, ...] | None = None  # prediction id -> ground-truth id
    image_path: Path | None = None  # for the montage
    montage_slices: int = 0  # 0: no montage


def _present_values(array: np.ndarray) -> list[int]:
    # read_label guarantees non-negative integers; bincount beats np.unique on big volumes.
    return np.flatnonzero(np.bincount(array.ravel())).tolist() if array.size else []


def _check_values(values: list[int], allowed: frozenset[int] | None, path: Path, case: str, what: str) -> None:
    if allowed is None:
        return
    bad = [v for v in values if v not in allowed]
    if bad:
        raise InputError(
            path, f"case {case!r}: {what} holds label value(s) {bad[:10]} not in the label map "
            f"(allowed: {sorted(allowed)})"
        )


def _read(path: Path, case: str) -> Volume:
    volume = read_label(path, ndim=None)
    array = volume.array
    # Trailing singleton axes (X, Y, Z, 1) are harmless; anything else beyond 3D is not a label map.
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise InputError(path, f"case {case!r}: expected a 2D or 3D label map, found shape {volume.shape}")
    return Volume(array, volume.affine, volume.header, path)


def _evaluate_task(task: _Task) -> tuple[list[ClassMetrics], list[int], bytes | None]:
    gt = _read(task.gt_path, task.case)
    pred = _read(task.pred_path, task.case)
    reason = same_geometry(gt, pred, atol=GEOMETRY_TOLERANCE_MM)
    if reason is None and pred.array.ndim != gt.array.ndim:
        reason = f"shape {pred.shape} differs from {gt.shape}"
    if reason is not None:
        raise InputError(task.pred_path, f"case {task.case!r}: {reason} (ground truth {task.gt_path})")
    gt_present = _present_values(gt.array)
    pred_present = _present_values(pred.array)
    _check_values(gt_present, task.gt_values, task.gt_path, task.case, "ground truth")
    if task.ignore_label is not None and task.ignore_label in pred_present:
        raise InputError(
            task.pred_path, f"case {task.case!r}: prediction holds the 'ignore' label ({task.ignore_label}); "
            "predictions must assign a class to every voxel"
        )
    _check_values(pred_present, task.pred_values, task.pred_path, task.case, "prediction")
    prediction = pred.array if task.pred_lut is None else np.asarray(task.pred_lut, np.int16)[pred.array]
    if task.classes:
        classes: dict[str, int] = dict(task.classes)
    else:
        present = set(gt_present) | set(_present_values(prediction))
        classes = {f"label_{v}": v for v in sorted(present) if v != 0}
    # An echo loop (2D+t): surface distances within each frame, not across time.
    frame_axis = gt.frame_axis if gt.frame_axis is not None else pred.frame_axis
    rows = evaluate_case(prediction, gt.array, classes, gt.spacing, task.ignore_label, case=task.case,
                         frame_axis=frame_axis)
    png = None
    if task.montage_slices:
        png = case_montage_png(CaseMontage(task.case, task.image_path, gt.array, {"prediction": prediction}, rows),
                               classes, spacing=gt.spacing, count=task.montage_slices, ignore_label=task.ignore_label)
    return rows, sorted(classes.values()), png


def _run_task(task: _Task) -> tuple[str, Any]:
    # Exceptions with custom constructors do not survive pickling between processes: send
    # user errors back as plain data.
    try:
        return "ok", _evaluate_task(task)
    except InputError as exc:
        return "input_error", (exc.path, exc.problem)
    except JointregError as exc:
        return "error", str(exc)


def _unpack(result: tuple[str, Any]) -> tuple[list[ClassMetrics], list[int], bytes | None]:
    kind, payload = result
    if kind == "input_error":
        raise InputError(*payload)
    if kind == "error":
        raise JointregError(payload)
    return payload


def _run_all(tasks: list[_Task], workers: int, progress: bool) -> list[tuple[list[ClassMetrics], list[int], bytes | None]]:
    from tqdm.auto import tqdm

    bar = dict(total=len(tasks), desc="evaluate", unit="case", disable=not progress or None)
    if workers <= 1 or len(tasks) <= 1:
        return [_unpack(_run_task(task)) for task in tqdm(tasks, **bar)]
    from concurrent.futures import ProcessPoolExecutor

    # Import the distance code once here so forked workers inherit it instead of each paying
    # for MONAI's import.
    import monai.metrics.utils  # noqa: F401

    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        return [_unpack(result) for result in tqdm(pool.map(_run_task, tasks), **bar)]


def evaluate_folders(
    pred_dir: str | PathLike[str],
    gt: str | PathLike[str],
    *,
    labels: str | PathLike[str] | DatasetSpec | None = None,
    classes: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    montage_slices: int = 0,
) -> FolderEvaluation:
    """Evaluate every ground-truth case against the prediction of the same case id.

    Args:
        pred_dir: folder of predicted label maps ``{case}.nii.gz``.
        gt: labels folder or dataset folder (see the module docstring).
        labels: ``dataset.json`` path, dataset folder or :class:`DatasetSpec` with the label
            map; ``None`` looks for one next to the data.
        classes: class names (or ids) to evaluate; default: every foreground class. Classes the
            predictions' label map lacks are not scored (module docstring).
        workers: processes to evaluate cases in parallel (1 = in this process).
        progress: show a progress bar over cases.
        montage_slices: slices per case montage (``montages``; drawn on the dataset's images
            when ``gt`` is a dataset); 0: none.

    Returns:
        The rows (``missing`` rows for cases without a prediction) and facts for the report.

    Raises:
        InputError: see the module docstring.
        ConfigError: an unknown class in ``classes``.
        InputError: also when the predictions' label map has none of the classes to evaluate.
    """
    pred_dir = Path(pred_dir)
    gt = Path(gt)
    predictions = label_files(pred_dir)
    if not predictions:  # the wrong folder: a report of missing cases only would hide it
        raise InputError(pred_dir, "holds no predicted label maps ({case}.nii.gz or {case}.nii)")
    gt_dir = resolve_ground_truth(gt, predictions)
    truths = label_files(gt_dir)
    if not truths:
        raise InputError(gt_dir, "holds no label files ({case}.nii.gz)")
    spec, spec_source = find_label_map(labels, gt, gt_dir, pred_dir)

    if spec is not None:
        chosen = select_classes(spec.foreground_labels, classes)
        if not chosen:
            raise InputError(spec_source, "the label map has no foreground class to evaluate")
        ignore_label = spec.ignore_label
        pred_values = frozenset(spec.class_labels.values())
        gt_values = pred_values | ({ignore_label} if ignore_label is not None else set())
    else:
        chosen, ignore_label, pred_values, gt_values = {}, None, None, None
    pred_map, pred_map_source = prediction_label_map(pred_dir)
    not_predicted: dict[str, int] = {}
    pred_lut = None
    if pred_map is not None and spec is not None:
        not_predicted = {n: v for n, v in chosen.items() if n not in pred_map}
        chosen = {n: v for n, v in chosen.items() if n in pred_map}
        if not chosen:
            known = ", ".join(n for n, v in pred_map.items() if v != 0) or "no foreground class"
            raise InputError(pred_map_source, f"the predictions label none of the classes to evaluate "
                             f"({', '.join(not_predicted)}); their label map has: {known}")
        pred_values = frozenset(pred_map.values())
        pred_lut = prediction_lookup(pred_map, spec.class_labels)
    elif pred_map is not None:
        pred_values = frozenset(pred_map.values())
        chosen = select_classes({n: v for n, v in pred_map.items() if v != 0}, classes)

    matched = sorted(set(truths) & set(predictions))
    missing = sorted(set(truths) - set(predictions))
    unmatched = sorted(set(predictions) - set(truths))
    if not matched:
        example = f"; e.g. prediction {sorted(predictions)[0]!r}" if predictions else ""
        raise InputError(pred_dir, f"no prediction matches a case of {gt_dir} by name (expected {{case}}.nii.gz{example})")
    if unmatched:
        logger.warning("%d prediction(s) have no ground truth and are skipped: %s", len(unmatched), ", ".join(unmatched[:5]))

    images = images_folder_for(gt_dir)
    tasks = [
        _Task(case, predictions[case], truths[case], tuple(chosen.items()), ignore_label, pred_values, gt_values,
              pred_lut, None if images is None else images(case), max(0, int(montage_slices)))
        for case in matched
    ]
    results = dict(zip(matched, _run_all(tasks, workers, progress)))

    if spec is None and pred_map is None:
        found = sorted({v for _, ids, _ in results.values() for v in ids})
        chosen = select_classes({f"label_{v}": v for v in found}, classes)
    rows: list[ClassMetrics] = []
    for case in sorted(truths):
        if case in missing:
            rows.extend(ClassMetrics.missing(case, name, cid) for name, cid in chosen.items())
            continue
        case_rows = {row.class_id: row for row in results[case][0]}
        for name, cid in chosen.items():
            # In inferred mode a class absent from both maps of this case was not evaluated
            # there; it is a "both empty" case by definition.
            row = case_rows.get(cid) or ClassMetrics(case, name, cid, 1.0, 0.0, 0.0, 0.0)
            rows.append(row)

    info = {
        "predictions": str(pred_dir),
        "ground_truth": str(gt_dir),
        "label_map": spec_source,
        "ignore_label": ignore_label,
        "classes": dict(chosen),
        "prediction_label_map": pred_map_source or "none (prediction ids read as the ground truth's)",
        "classes_not_predicted": dict(not_predicted),
        "cases_evaluated": len(matched),
        "cases_missing": len(missing),
        "predictions_without_ground_truth": unmatched,
    }
    montages = {case: result[2] for case, result in results.items() if result[2] is not None}
    return FolderEvaluation(rows=rows, info=info, missing_cases=missing, montages=montages)
