"""Evaluation reports: summaries of :class:`ClassMetrics` rows and the report folder.

A report folder (written atomically by :func:`write_report`) holds:

* ``per_case.csv`` — one row per case and class: ``case, class, dice, hd, hd95, assd, missed,
  status, class_id, gt_voxels, pred_voxels`` (distances in mm; ``nan`` where undefined).
* ``summary.json`` — per class and metric: n, mean, std (population, ddof=0), median, min, max,
  ``missed`` (cases where exactly one mask was empty) and ``missing`` (cases without a
  prediction); plus the definitions and where the data came from.
* ``summary.md`` — the same as Markdown tables.
* ``boxplot_<metric>.png`` — one figure per metric, one box per class.
* ``montages/{case}.png`` and ``montages.md`` when montages are given — one picture per case
  (:mod:`jointreg.metrics.gallery`), and ``summary.md`` lists the cases worst first with links.

Summary rules: Dice of a missed case is 0 and enters the Dice statistics; its distances are NaN,
are left out of the distance statistics, and are counted in ``missed`` next to every number, so a
missed structure can never disappear silently. ``missing`` rows (no prediction) enter no
statistic and are counted separately.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.errors import InputError
from jointreg.metrics.gallery import GALLERY_MD, case_scores, gallery_table, write_gallery
from jointreg.metrics.segmentation import (
    METRIC_TITLES,
    METRIC_UNITS,
    METRICS,
    STATUS_MISSING,
    STATUS_OK,
    ClassMetrics,
)
from jointreg.utils.atomic import atomic_dir

REPORT_FORMAT = "jointreg-evaluation/1"
PER_CASE_CSV = "per_case.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CSV_COLUMNS = (
    "case", "class", "dice", "hd", "hd95", "assd", "missed", "status", "class_id", "gt_voxels", "pred_voxels",
)

MONTAGE_NOTE = ("slices with the largest disagreement and slices spread through the labelled extent; "
                "ground truth and prediction contours in the class colours, the truth in white under the prediction")

DEFINITIONS = {
    "dice": "2|P∩G| / (|P|+|G|) over known (non-ignore) voxels; 1 if both empty, 0 if exactly one is",
    "hd": "max of all boundary-to-nearest-boundary distances, both directions (mm)",
    "hd95": "max of the two directional 95th percentiles of boundary distances (mm); "
    "medpy's hd95 (pooled percentile) is never larger",
    "assd": "mean of the boundary distances of both directions pooled (mm)",
    "missed": "exactly one of prediction and ground truth is empty: Dice 0, distances NaN and "
    "left out of the distance statistics, counted here",
    "missing": "no prediction file for the case: all metrics NaN, left out of every statistic",
}


# --- summary ---------------------------------------------------------------------------------
def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def classes_in_order(rows: Sequence[ClassMetrics]) -> list[tuple[str, int]]:
    """``(name, id)`` of the classes in ``rows``, sorted by id (first-seen name per id)."""
    seen: dict[str, int] = {}
    for row in rows:
        seen.setdefault(row.class_name, row.class_id)
    return sorted(seen.items(), key=lambda item: (item[1], item[0]))


def summarize(rows: Sequence[ClassMetrics]) -> dict[str, Any]:
    """Per-class statistics of every metric, with missed and missing counts.

    Returns:
        ``{"num_cases", "missing_cases", "classes": {name: {"id", "cases", "missed", "missing",
        "dice": {n, mean, std, median, min, max, missed, missing}, "hd": ..., ...}}}``.
        Statistics with no values are ``None``.
    """
    cases = list(dict.fromkeys(row.case for row in rows))
    missing_cases = list(dict.fromkeys(row.case for row in rows if row.status == STATUS_MISSING))
    classes: dict[str, Any] = {}
    for name, class_id in classes_in_order(rows):
        mine = [row for row in rows if row.class_name == name]
        evaluated = [row for row in mine if row.status == STATUS_OK]
        missed = sum(1 for row in evaluated if row.missed)
        missing = sum(1 for row in mine if row.status == STATUS_MISSING)
        entry: dict[str, Any] = {"id": class_id, "cases": len(mine), "missed": missed, "missing": missing}
        for metric in METRICS:
            values = [row.value(metric) for row in evaluated if math.isfinite(row.value(metric))]
            entry[metric] = {**_stats(values), "missed": missed, "missing": missing}
        classes[name] = entry
    return {"num_cases": len(cases), "missing_cases": missing_cases, "classes": classes}


# --- CSV ---------------------------------------------------------------------------------------
def _format_float(value: float) -> str:
    return "nan" if not math.isfinite(value) else format(float(value), ".10g")


def rows_to_csv(rows: Sequence[ClassMetrics]) -> str:
    """The text of ``per_case.csv``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([
            row.case, row.class_name,
            *(_format_float(row.value(metric)) for metric in METRICS),
            "true" if row.missed else "false", row.status, row.class_id, row.gt_voxels, row.pred_voxels,
        ])
    return buffer.getvalue()


def read_per_case(report: str | PathLike[str]) -> list[ClassMetrics]:
    """Read the rows of a report folder (or of its ``per_case.csv``).

    Raises:
        InputError: no such report, or a CSV without the expected columns or values.
    """
    path = Path(report)
    if path.is_dir():
        path = path / PER_CASE_CSV
    if not path.is_file():
        raise InputError(path, f"not found (expected a report folder written by 'jointreg evaluate' with {PER_CASE_CSV})")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in CSV_COLUMNS[:8] if c not in (reader.fieldnames or [])]
        if absent:
            raise InputError(path, f"missing column(s) {', '.join(absent)}")
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                rows.append(ClassMetrics(
                    case=record["case"],
                    class_name=record["class"],
                    class_id=int(record.get("class_id") or -1),
                    **{metric: float(record[metric]) for metric in METRICS},
                    missed=record["missed"].strip().lower() in ("true", "1", "yes"),
                    status=record["status"],
                    gt_voxels=int(record.get("gt_voxels") or 0),
                    pred_voxels=int(record.get("pred_voxels") or 0),
                ))
            except (TypeError, ValueError) as exc:
                raise InputError(path, f"line {line}: {exc}") from None
    return rows


# --- Markdown ------------------------------------------------------------------------------------
def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if metric == "dice" else f"{value:.2f}"


def _mean_std(stats: Mapping[str, Any], metric: str) -> str:
    if stats["n"] == 0:
        return "–"
    return f"{_fmt(stats['mean'], metric)} ± {_fmt(stats['std'], metric)}"


def _info_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} = {v}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def summary_markdown(summary: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str:
    """Markdown tables of a :func:`summarize` result (plus ``info`` lines about the sources)."""
    lines = ["# Segmentation evaluation", ""]
    info = dict(info or {})
    not_predicted = info.pop("classes_not_predicted", None)
    for key, value in info.items():
        lines.append(f"- {key.replace('_', ' ')}: {_info_text(value)}")
    if not_predicted:
        lines.append(
            f"- **not scored**: {', '.join(not_predicted)}: the predictions' label map has no such class "
            "(the model was not trained on it), so these are neither scored nor counted as missed"
        )
    missing = summary["missing_cases"]
    lines.append(
        f"- cases: {summary['num_cases']}"
        + (f" ({len(missing)} without prediction: {', '.join(missing)})" if missing else "")
    )
    lines += ["", "## Summary (mean ± std over cases)", ""]
    header = ["class", *(METRIC_TITLES[m] for m in METRICS), "missed", "missing"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary["classes"].items():
        cells = [name, *(_mean_std(entry[m], m) for m in METRICS), str(entry["missed"]), str(entry["missing"])]
        lines.append("| " + " | ".join(cells) + " |")
    for metric in METRICS:
        lines += ["", f"## {METRIC_TITLES[metric]}", ""]
        head = ["class", "n", "mean ± std", "median", "min", "max", "missed", "missing"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, entry in summary["classes"].items():
            s = entry[metric]
            cells = [
                name, str(s["n"]), _mean_std(s, metric), _fmt(s["median"], metric),
                _fmt(s["min"], metric), _fmt(s["max"], metric), str(s["missed"]), str(s["missing"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Definitions", ""]
    lines += [f"- **{key}**: {text}" for key, text in DEFINITIONS.items()]
    lines.append("- n counts the cases with a value; std is the population standard deviation.")
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------
def plot_boxplots(rows: Sequence[ClassMetrics], out_dir: str | PathLike[str]) -> list[Path]:
    """Write ``boxplot_<metric>.png`` (one box per class) into ``out_dir``; returns the paths.

    Uses matplotlib's object API on an Agg canvas, so no global backend is switched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    classes = classes_in_order(rows)
    paths = []
    for metric in METRICS:
        fig = Figure(figsize=(max(4.0, 1.2 * len(classes) + 1.5), 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        data, positions, ticks = [], [], []
        for index, (name, _) in enumerate(classes, start=1):
            evaluated = [r for r in rows if r.class_name == name and r.status == STATUS_OK]
            values = [r.value(metric) for r in evaluated if math.isfinite(r.value(metric))]
            missed = sum(r.missed for r in evaluated)
            ticks.append(name + (f"\n({missed} missed)" if missed else ""))
            if values:
                data.append(values)
                positions.append(index)
        if data:
            ax.boxplot(data, positions=positions, widths=0.6)
        ax.set_xticks(range(1, len(classes) + 1), ticks)
        ax.set_xlim(0.4, len(classes) + 0.6)
        ax.set_ylabel(METRIC_TITLES[metric])
        ax.set_title(f"{METRIC_TITLES[metric]} per class")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"boxplot_{metric}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


# --- the folder -----------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` (JSON ``null``), paths as strings, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(
    rows: Sequence[ClassMetrics],
    out_dir: str | PathLike[str],
    *,
    info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    plots: bool = True,
    montages: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write a report folder (CSV, JSON, Markdown, box plots); it appears only when complete.

    Args:
        rows: :class:`ClassMetrics` rows (from :func:`evaluate_case` and friends).
        out_dir: the report folder to create.
        info: JSON-serialisable facts about the evaluation (sources, label map), stored in
            ``summary.json`` and listed at the top of ``summary.md``.
        overwrite: replace an existing folder.
        plots: write the box plots.
        montages: case → montage PNG; written to ``montages/`` with the worst-first page
            ``montages.md``, and linked from ``summary.md``.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        InputError: ``out_dir`` exists and ``overwrite`` is False.
    """
    import json

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (pass --overwrite to replace it)")
    summary = summarize(rows)
    document = {
        "format": REPORT_FORMAT,
        "metrics": {m: {"unit": METRIC_UNITS[m], "definition": DEFINITIONS[m]} for m in METRICS},
        "rules": {"missed": DEFINITIONS["missed"], "missing": DEFINITIONS["missing"]},
        "info": dict(info or {}),
        **summary,
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / PER_CASE_CSV).write_text(rows_to_csv(rows), encoding="utf-8")
        (tmp / SUMMARY_JSON).write_text(
            json.dumps(json_safe(document), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        text = summary_markdown(summary, info)
        if montages:
            entries = write_gallery(tmp, montages, case_scores(rows), title="Cases, worst first",
                                    note="Mean Dice over the classes of each case (missed = 0), lowest first.")
            text += (f"\n## Cases, worst first\n\nEach case's montage ({MONTAGE_NOTE}); all of them on one page: "
                     f"[{GALLERY_MD}]({GALLERY_MD}).\n\n{gallery_table(entries)}\n")
        (tmp / SUMMARY_MD).write_text(text, encoding="utf-8")
        if plots and rows:
            plot_boxplots(rows, tmp)
    return json_safe(document)
