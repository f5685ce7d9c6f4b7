"""Metrics: segmentation overlap and surface distances in millimetres, reports, comparisons.

Segmentation (definitions, empty-mask and ``ignore`` rules: ``docs/metrics.md``):

* :func:`evaluate_case` ``(pred, gt, labels, spacing, ignore_label=None) -> list[ClassMetrics]``
  — the pure function: one case, integer label maps (numpy or torch), per class Dice, HD, HD95,
  ASSD in mm and a ``missed`` flag.
* :func:`evaluate_arrays` ``(cases, labels, *, ignore_label=None)`` — many in-memory cases
  (``(case_id, pred, gt, spacing)`` tuples), e.g. from a training loop.
* :func:`evaluate_folders` ``(pred_dir, gt, *, labels=None, classes=None, workers=1)`` — NIfTI
  folders matched by case id, with geometry and label checks.
* :func:`write_report` ``(rows, out_dir, *, info=None, overwrite=False)`` — ``per_case.csv``,
  ``summary.json``, ``summary.md``, box plots; :func:`summarize` for the numbers alone;
  :func:`read_per_case` to load a report again.
* :func:`compare_reports` ``(reports, names=None)`` + :func:`write_comparison` — paired
  differences and Wilcoxon tests between reports.
* Building blocks: :func:`dice`, :func:`boundary`, :func:`surface_distances`,
  :func:`surface_metrics`, :func:`hausdorff_distance`, :func:`average_symmetric_surface_distance`.

Names are loaded on first use, so ``import jointreg.metrics`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OverlapCounts": "overlap",
    "dice": "overlap",
    "dice_from_counts": "overlap",
    "overlap_counts": "overlap",
    "SurfaceDistances": "surface",
    "SurfaceMetrics": "surface",
    "average_symmetric_surface_distance": "surface",
    "boundary": "surface",
    "hausdorff_distance": "surface",
    "surface_distances": "surface",
    "surface_metrics": "surface",
    "METRICS": "segmentation",
    "ClassMetrics": "segmentation",
    "evaluate_arrays": "segmentation",
    "evaluate_case": "segmentation",
    "FolderEvaluation": "folders",
    "evaluate_folders": "folders",
    "read_per_case": "report",
    "summarize": "report",
    "write_report": "report",
    "compare_reports": "compare",
    "paired_wilcoxon": "compare",
    "write_comparison": "compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jointreg.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jointreg.metrics.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
