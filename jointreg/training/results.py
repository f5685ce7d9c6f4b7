"""Comparison tables from finished runs (the demo's table and the study's Table 3)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

METRIC_TITLES = {"dice": "Dice", "hd95": "HD95 (mm)", "assd": "ASSD (mm)", "hd": "HD (mm)"}


def _fmt(stats: Mapping[str, Any] | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    mean, std = stats["mean"], stats.get("std")
    text = f"{mean:.{digits}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    missed = stats.get("missed") or 0
    if missed:
        text += f" ({missed} missed)"
    return text


def segmentation_table(
    runs: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    classes: Sequence[str] | None = None,
    metrics: Sequence[str] = ("dice", "hd95", "assd"),
    without_postprocessing: bool = False,
) -> str:
    """Markdown table: one row per method, mean ± std per class and metric, train time.

    Args:
        runs: ``(method name, run summary)`` pairs; summaries as written to ``summary.json``.
        classes: classes to show (default: every class of the first run, background excluded).
        without_postprocessing: the figures before the segmentor's post-processing (runs that
            post-processed nothing show their only figures).
    """
    evaluated = [(name, s["evaluation"]["segmentation"]) for name, s in runs if s.get("evaluation", {}).get("segmentation")]
    if without_postprocessing:
        evaluated = [(name, seg.get("without_postprocessing", seg)) for name, seg in evaluated]
    if not evaluated:
        return "(no segmentation evaluation found)"
    if classes is None:
        classes = [c for c in evaluated[0][1]["classes"] if c != "background"]
    header = ["method"] + [f"{c} {METRIC_TITLES.get(m, m)}" for c in classes for m in metrics] + ["train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    times = dict((name, s.get("train_seconds")) for name, s in runs)
    for name, seg in evaluated:
        cells = [name]
        for c in classes:
            entry = seg["classes"].get(c, {})
            for m in metrics:
                cells.append(_fmt(entry.get(m), 3 if m == "dice" else 1))
        seconds = times.get(name)
        cells.append("–" if seconds is None else f"{seconds / 60:.1f} min")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def registration_table(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Markdown table of the registration evaluation of runs that trained a registration net."""
    rows = [(name, s["evaluation"]["registration"]) for name, s in runs if s.get("evaluation", {}).get("registration")]
    volume_rows = [(name, reg) for name, reg in rows if "training" in reg]  # 3D mode (volume_mode.evaluate_propagation)
    if volume_rows:
        return _volume_registration_table(volume_rows)
    if not rows:
        return ""
    keys = [("label_dice", "label Dice"), ("identity_dice", "identity Dice"), ("ncc", "NCC"), ("folding_percent", "folding %")]
    lines = ["| method | " + " | ".join(t for _, t in keys) + " | pairs |", "|" + "---|" * (len(keys) + 2)]
    for name, reg in rows:
        cells = [("–" if reg.get(k) is None else f"{reg[k]:.3f}") for k, _ in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {reg.get('pairs', '–')} |")
    return "\n".join(lines)


def _volume_registration_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """3D mode: the atlases' labels registered onto the training targets and the test volumes
    (mean foreground Dice on each volume's own grid), and the identity's."""
    groups = [g for g in dict.fromkeys(k for _, reg in rows for k in reg)]
    head = " | ".join(f"{g} registration | {g} identity" for g in groups)
    lines = [f"| method | {head} |", "|" + "---|" * (2 * len(groups) + 1)]
    for name, reg in rows:
        cells = []
        for g in groups:
            entry = reg.get(g) or {}
            cells += ["–" if entry.get(k) is None else f"{entry[k]:.3f}" for k in ("label_dice", "identity_dice")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def postprocessing_note(runs: Sequence[tuple[str, Mapping[str, Any]]], **table_options: Any) -> str:
    """A Markdown section with the table before post-processing, when any run post-processed."""
    if not any("without_postprocessing" in s.get("evaluation", {}).get("segmentation", {}) for _, s in runs):
        return ""
    table = segmentation_table(runs, without_postprocessing=True, **table_options)
    return ("\n## Without post-processing (largest connected component off)\n\n"
            "The table above keeps only the largest connected component of the classes where that did "
            "not lower the Dice (nnU-Net's rule, decided per run); here the raw predictions.\n\n" + table + "\n")
