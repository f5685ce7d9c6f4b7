"""Compare evaluation reports case by case: side-by-side tables and paired Wilcoxon tests.

The first report is the baseline; every other report is compared with it on the cases and
classes both contain. For each class and metric:

* each report's mean ± std, n, missed and missing counts (as in its own summary);
* the paired differences ``other − baseline`` over the cases where both have a value (a missed
  structure has no distances, so such a case drops out of the distance pairs and is counted as
  ``unpaired``; Dice pairs keep it, with Dice 0);
* how many cases the other report is better / worse / tied on (higher Dice, lower distances);
* a two-sided paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
  dropped as in Wilcoxon's original test). Fewer than two pairs: no p-value; all differences
  zero: p = 1.

:func:`compare_reports` builds the comparison; :func:`write_comparison` writes
``comparison.json``, ``comparison.md`` and ``paired_differences.csv`` into a folder atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.errors import ConfigError, InputError
from jointreg.metrics.report import classes_in_order, json_safe, read_per_case, summarize
from jointreg.metrics.segmentation import HIGHER_IS_BETTER, METRIC_TITLES, METRICS, STATUS_OK, ClassMetrics
from jointreg.utils.atomic import atomic_dir

COMPARISON_FORMAT = "jointreg-comparison/1"
TEST_NAME = "two-sided paired Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences dropped)"
MIN_NONZERO_FOR_5_PERCENT = 6
"""With fewer non-zero differences the exact two-sided test cannot give p < 0.05."""


def paired_wilcoxon(baseline: Sequence[float], other: Sequence[float]) -> tuple[float | None, str]:
    """Two-sided paired Wilcoxon signed-rank test of ``other`` against ``baseline``.

    Returns:
        ``(p_value, note)``; ``p_value`` is ``None`` with fewer than two pairs, 1.0 when every
        difference is zero; ``note`` explains such cases (empty otherwise).
    """
    from scipy.stats import wilcoxon

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    if a.size < 2:
        return None, f"too few pairs for a test (n={a.size})"
    nonzero = int(np.count_nonzero(b - a))
    if nonzero == 0:
        return 1.0, "all differences are zero"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        p = float(wilcoxon(b, a, zero_method="wilcox", alternative="two-sided").pvalue)
    if not math.isfinite(p):
        return None, "test undefined for these differences"
    note = ""
    if nonzero < MIN_NONZERO_FOR_5_PERCENT:
        note = f"only {nonzero} non-zero difference(s): too few for p < 0.05 in the exact test"
    return p, note


def _unique_names(reports: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names:
        if len(names) != len(reports):
            raise ConfigError(f"--names gives {len(names)} name(s) for {len(reports)} report(s)")
        if len(set(names)) != len(names):
            raise ConfigError(f"--names must be distinct, got {list(names)}")
        return [str(n) for n in names]
    result: list[str] = []
    for path in reports:
        base = path.name or str(path)
        name, k = base, 2
        while name in result:
            name, k = f"{base}_{k}", k + 1
        result.append(name)
    return result


def _by_case(rows: Sequence[ClassMetrics], class_name: str) -> dict[str, ClassMetrics]:
    return {row.case: row for row in rows if row.class_name == class_name}


def _difference_stats(
    metric: str, base: dict[str, ClassMetrics], other: dict[str, ClassMetrics]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pairs, unpaired = [], 0
    for case in sorted(set(base) & set(other)):
        a, b = base[case], other[case]
        if a.status != STATUS_OK or b.status != STATUS_OK:
            continue
        va, vb = a.value(metric), b.value(metric)
        if math.isfinite(va) and math.isfinite(vb):
            pairs.append((case, va, vb))
        else:
            unpaired += 1
    diffs = np.asarray([vb - va for _, va, vb in pairs], dtype=np.float64)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    p, note = paired_wilcoxon([va for _, va, _ in pairs], [vb for _, _, vb in pairs])
    stats = {
        "n_pairs": len(pairs),
        "unpaired": unpaired,
        "mean_difference": float(diffs.mean()) if diffs.size else None,
        "median_difference": float(np.median(diffs)) if diffs.size else None,
        "better": int(np.sum(sign * diffs > 0)),
        "worse": int(np.sum(sign * diffs < 0)),
        "tied": int(np.sum(diffs == 0)),
        "p_value": p,
        "note": note,
    }
    per_case = [{"case": c, "baseline": va, "other": vb, "difference": vb - va} for c, va, vb in pairs]
    return stats, per_case


def compare_reports(
    reports: Sequence[str | PathLike[str]], names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Compare two or more report folders, the first being the baseline.

    Args:
        reports: report folders written by :func:`jointreg.metrics.report.write_report`.
        names: display names (default: the folder names).

    Returns:
        A JSON-serialisable dict: ``reports``, ``baseline``, ``test``, ``classes`` (per class and
        metric: each report's statistics and the differences of each other report against the
        baseline) and ``paired`` (one entry per case, class, metric and comparison).

    Raises:
        ConfigError: fewer than two reports, or bad ``names``.
        InputError: a folder that is not a report, or reports without a class in common.
    """
    paths = [Path(r) for r in reports]
    if len(paths) < 2:
        raise ConfigError("--compare needs at least two reports")
    labels = _unique_names(paths, names)
    all_rows = [read_per_case(path) for path in paths]
    summaries = [summarize(rows) for rows in all_rows]
    common = [
        name for name, _ in classes_in_order(all_rows[0])
        if all(name in summary["classes"] for summary in summaries[1:])
    ]
    if not common:
        raise InputError(paths[1], f"has no class in common with {paths[0]}")
    baseline = labels[0]
    classes: dict[str, Any] = {}
    paired: list[dict[str, Any]] = []
    for class_name in common:
        base_rows = _by_case(all_rows[0], class_name)
        entry: dict[str, Any] = {}
        for metric in METRICS:
            reports_stats = {label: summary["classes"][class_name][metric] for label, summary in zip(labels, summaries)}
            differences = {}
            for label, rows in zip(labels[1:], all_rows[1:]):
                stats, per_case = _difference_stats(metric, base_rows, _by_case(rows, class_name))
                differences[label] = stats
                paired += [
                    {"comparison": f"{label} - {baseline}", "class": class_name, "metric": metric, **item}
                    for item in per_case
                ]
            entry[metric] = {"reports": reports_stats, "differences": differences}
        classes[class_name] = entry
    skipped = sorted(
        {n for s in summaries for n in s["classes"]} - set(common)
    )
    return json_safe({
        "format": COMPARISON_FORMAT,
        "reports": [{"name": label, "path": str(path)} for label, path in zip(labels, paths)],
        "baseline": baseline,
        "test": TEST_NAME,
        "classes_not_in_every_report": skipped,
        "classes": classes,
        "paired": paired,
    })


# --- writing ------------------------------------------------------------------------------------------
def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return "–"
    digits = 3 if metric == "dice" else 2
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """Markdown tables of a :func:`compare_reports` result."""
    names = [r["name"] for r in comparison["reports"]]
    baseline, others = names[0], names[1:]
    lines = ["# Comparison of evaluation reports", ""]
    lines += [f"- {r['name']}: {r['path']}" for r in comparison["reports"]]
    lines += [
        f"- baseline: {baseline}; differences are other − baseline over cases where both have a value",
        f"- test: {comparison['test']}",
        "- missed: cases where exactly one mask was empty (no distances); such cases drop out of "
        "distance pairs and are counted as unpaired",
    ]
    if comparison["classes_not_in_every_report"]:
        lines.append(f"- classes not in every report (skipped): {', '.join(comparison['classes_not_in_every_report'])}")
    notes: list[str] = []
    for metric in METRICS:
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        lines += ["", f"## {METRIC_TITLES[metric]} ({better} is better)", ""]
        head = ["class", *(f"{n} mean ± std (missed)" for n in names)]
        for other in others:
            head += [f"Δ {other} − {baseline} (n)", "better/worse/tied", "p"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for class_name, entry in comparison["classes"].items():
            block = entry[metric]
            cells = [class_name]
            for name in names:
                s = block["reports"][name]
                value = "–" if s["n"] == 0 else f"{_fmt(s['mean'], metric)} ± {_fmt(s['std'], metric)}"
                cells.append(f"{value} ({s['missed']})")
            for other in others:
                d = block["differences"][other]
                cells += [
                    f"{_fmt(d['mean_difference'], metric, signed=True)} ({d['n_pairs']})",
                    f"{d['better']}/{d['worse']}/{d['tied']}",
                    _fmt_p(d["p_value"]),
                ]
                if d["note"]:
                    notes.append(f"{class_name}, {metric}, {other}: {d['note']}")
            lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Per-case paired differences", ""]
    for comparison_name in dict.fromkeys(item["comparison"] for item in comparison["paired"]):
        for class_name in comparison["classes"]:
            lines += [f"### {class_name}: {comparison_name}", ""]
            head = ["case"] + [f"{METRIC_TITLES[m]} Δ" for m in METRICS]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            table: dict[str, dict[str, float]] = {}
            for item in comparison["paired"]:
                if item["comparison"] == comparison_name and item["class"] == class_name:
                    table.setdefault(item["case"], {})[item["metric"]] = item["difference"]
            for case, values in table.items():
                lines.append("| " + " | ".join([case, *(_fmt(values.get(m), m, signed=True) for m in METRICS)]) + " |")
            lines.append("")
    lines.append("A dash means no value (the case was missed or missing in one of the reports).")
    return "\n".join(lines) + "\n"


def paired_csv(comparison: Mapping[str, Any]) -> str:
    """The text of ``paired_differences.csv``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["comparison", "case", "class", "metric", "baseline", "other", "difference"])
    for item in comparison["paired"]:
        writer.writerow([
            item["comparison"], item["case"], item["class"], item["metric"],
            *(format(item[k], ".10g") for k in ("baseline", "other", "difference")),
        ])
    return buffer.getvalue()


def write_comparison(
    comparison: Mapping[str, Any], out_dir: str | PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``comparison.json``, ``comparison.md`` and ``paired_differences.csv`` atomically.

    Raises:
        InputError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (pass --overwrite to replace it)")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "comparison.json").write_text(json.dumps(comparison, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "comparison.md").write_text(comparison_markdown(comparison), encoding="utf-8")
        (tmp / "paired_differences.csv").write_text(paired_csv(comparison), encoding="utf-8")
    return out
