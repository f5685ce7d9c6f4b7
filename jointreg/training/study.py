"""Studies: the comparison table of docs/design.md (the FMIRNet paper's Table 3), from one YAML file.

A study names a base recipe and, per method, the recipe fields that differ::

    name: study_chaos_t2_liver
    base: chaos_t2_liver_1slice.yaml      # relative to the study file
    output: runs/study_chaos_t2_liver
    seeds: [0]
    baseline: UNet                        # paired comparisons against this method
    methods:
      UNet:  {registration.enabled: false}
      RUNet: {}
      VUNet: {registration.architecture: voxelmorph}
      UNet*: {registration.enabled: false, data.labels: full}

Every (method, seed) is an ordinary run folder ``OUTPUT/<method-slug>_seed<S>``. A run that
already finished with an identical recipe is reused, so a study can be interrupted and rerun, or
extended with a method. The study writes ``study.md`` (the table), ``study.json``, box plots
per class and metric (one box per method), a paired comparison (Wilcoxon) of every method
against the baseline, and ``montages.md``: per test case a picture of the ground truth and every
method's prediction, hardest case first.

Cross-validation: with a ``folds`` section (:class:`~jointreg.training.folds.FoldsConfig`)
every case of a fully labelled dataset is a test case once::

    folds: {count: 2, dataset: data/chaos_t2, slices_per_volume: 1, classes: [liver]}

Each (method, seed, fold) is a run ``OUTPUT/<method-slug>_seed<S>_fold<k>`` on the fold's
dataset; the table, box plots and the paired comparison pool the test volumes of all folds
(``OUTPUT/pooled/<method-slug>_seed<S>`` holds each method's pooled report), and ``study.md``
adds one table per fold.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.errors import ConfigError, InputError
from jointreg.training.folds import FoldsConfig
from jointreg.utils.typed import from_mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyConfig:
    """A study file.

    Attributes:
        base: the base recipe (path relative to the study file, or a shipped recipe name).
        methods: method name → recipe overrides (dotted keys → values).
        overrides: overrides applied to every method first (e.g. ``data.dataset``).
        baseline: the method the others are compared with (default: the first one).
        metrics: metrics of the table.
        classes: classes of the table (default: every foreground class).
        folds: cross-validation over a fully labelled dataset (off by default).
        comparisons: extra paired comparisons ``[method, reference]`` besides the baseline's
            (e.g. ``[[RUNet, IUNet]]``: does registration beat the identity with the same rules?);
            each gets a Wilcoxon table in ``study.md`` and a folder under ``comparison/``.
    """

    name: str = "study"
    base: str = ""
    output: str = "runs/study"
    seeds: tuple[int, ...] = (0,)
    baseline: str | None = None
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = ("dice", "hd95", "assd")
    classes: tuple[str, ...] = ()
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    comparisons: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if not self.base:
            raise ConfigError("base: the study needs a base recipe")
        if not self.methods:
            raise ConfigError("methods: the study needs at least one method")
        if self.baseline is not None and self.baseline not in self.methods:
            raise ConfigError(f"baseline: {self.baseline!r} is not one of the methods ({', '.join(self.methods)})")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        for method, reference in self.comparisons:
            unknown = [m for m in (method, reference) if m not in self.methods]
            if unknown:
                raise ConfigError(f"comparisons: {unknown[0]!r} is not one of the methods ({', '.join(self.methods)})")
            if method == reference:
                raise ConfigError(f"comparisons: {method!r} is compared with itself")
        slugs = [slug(m) for m in self.methods]
        if len(set(slugs)) != len(slugs):
            raise ConfigError("methods: two method names map to the same folder name")


def slug(method: str) -> str:
    """A folder-safe name: ``UNet*`` → ``unet-star``, ``RUNet (3 scales)`` → ``runet-3-scales``."""
    text = method.replace("*", "-star").replace("+", "-plus").lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "method"


def load_study(path: str | PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> tuple[StudyConfig, Path]:
    """Read a study YAML; returns the config and the base recipe's path."""
    from jointreg.utils.typed import apply_overrides
    from jointreg.utils.yaml_io import load_yaml_file

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "is a folder, expected a study file (YAML)" if path.is_dir() else "study file not found")
    data = load_yaml_file(path, what="study") or {}
    try:
        study = from_mapping(StudyConfig, apply_overrides(data, list(overrides)))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base = (path.parent / study.base)
    if not base.is_file():
        from importlib import resources

        shipped = Path(str(resources.files("jointreg.recipes").joinpath(study.base)))
        if not shipped.is_file():
            raise InputError(path, f"base recipe {study.base!r} not found next to the study file")
        base = shipped
    return study, base


def _override_list(values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides of a mapping. A recipe section given as a mapping
    (``data: {size: [48, 48]}``) sets those keys of the section and keeps its others, as
    ``data.size=[48, 48]`` would; any other value replaces the key's value."""
    import dataclasses

    import yaml

    from jointreg.training.config import Recipe

    sections = {f.name for f in dataclasses.fields(Recipe) if f.default_factory is not dataclasses.MISSING}

    def dump(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    out = []
    for key, value in values.items():
        if key in sections and isinstance(value, dict):
            out += [f"{key}.{k}={dump(v)}" for k, v in value.items()]
        else:
            out.append(f"{key}={dump(value)}")
    return out


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study; ``fold`` is ``None`` without cross-validation."""

    method: str
    seed: int
    fold: int | None
    recipe: Any
    run_dir: Path


def fold_folder(study: StudyConfig, fold: int) -> Path:
    """The dataset folder of fold ``fold`` (built by :func:`~jointreg.training.folds.build_fold_datasets`)."""
    return Path(study.output) / "folds" / f"fold{fold}"


def _method_recipe(base: Path, overrides: list[str], method: str, source: Path | None):
    """The recipe of one run. An error names the file to fix: the base recipe when it is wrong
    by itself, else the study (``source``), whose method or overrides made it wrong."""
    from jointreg.training.config import load_recipe

    try:
        return load_recipe(base, overrides)
    except ConfigError as exc:
        problem = str(exc).removeprefix(f"{base}: ")
    load_recipe(base)  # raises, naming the base recipe, when the base itself is wrong
    where = f"{source}: " if source is not None else ""
    raise ConfigError(f"{where}method {method!r}: {problem}")


def plan_runs(study: StudyConfig, base: Path, source: Path | None = None) -> list[PlannedRun]:
    """Every run of the study, recipes fully resolved (fold by fold with cross-validation);
    ``source`` is the study file, named in errors."""
    folds: list[int | None] = list(range(study.folds.count)) if study.folds.enabled else [None]
    runs = []
    for fold in folds:
        for method, changes in study.methods.items():
            for seed in study.seeds:
                name = f"{slug(method)}_seed{seed}" + ("" if fold is None else f"_fold{fold}")
                overrides = _override_list(study.overrides) + _override_list(changes)
                if fold is not None:
                    overrides.append(f"data.dataset={fold_folder(study, fold)}")
                overrides += [f"seed={seed}", f"name={name}", f"output={study.output}"]
                recipe = _method_recipe(base, overrides, method, source)
                runs.append(PlannedRun(method, seed, fold, recipe, Path(study.output) / name))
    return runs


def run_study(path: str | PathLike[str], *, overrides: list[str] | tuple[str, ...] = (), progress: bool = True,
              only: list[str] | None = None, retrain: bool = False) -> dict[str, Any]:
    """Run (or reuse) every run of a study and write its table, JSON, plots and comparison.

    A run that finished with other settings than the study now gives it (an edited recipe or
    method) is refused, before anything trains, unless ``retrain``: then it is trained again in
    its folder."""
    from jointreg.export.run_folder import RunPaths
    from jointreg.training.loop import train
    from jointreg.training.run_folder import check_not_finished_otherwise, finished_summary, has_started
    from jointreg.training.warm_start import find_warm_start

    study, base = load_study(path, overrides)
    runs = plan_runs(study, base, Path(path))
    if study.folds.enabled:
        from jointreg.training.folds import build_fold_datasets

        build_fold_datasets(study.folds, Path(study.output) / "folds", progress=progress)
    if only:
        unknown = [m for m in only if m not in study.methods]
        if unknown:
            raise ConfigError(f"--only: unknown method {unknown[0]!r} (methods: {', '.join(study.methods)})")
    if not retrain:
        for planned in runs:
            if not only or planned.method in only:
                check_not_finished_otherwise(planned.run_dir, planned.recipe)
    summaries: list[tuple[PlannedRun, dict[str, Any]]] = []
    for index, planned in enumerate(runs, start=1):
        method, seed, recipe, run_dir = planned.method, planned.seed, planned.recipe, planned.run_dir
        what = f"{method} seed {seed}" + ("" if planned.fold is None else f" fold {planned.fold}")
        done = finished_summary(run_dir, recipe)
        if done is None and only and method not in only:
            continue
        if done is not None:
            log.info("reusing %s (finished)", run_dir)
            if progress:
                print(f"[study] {index}/{len(runs)} {what}: reusing {run_dir}", flush=True)
        else:
            if progress:
                print(f"[study] {index}/{len(runs)} {what}: training into {run_dir}", flush=True)
            resume = has_started(RunPaths(run_dir))  # a checkpoint a kill left aside counts
            # A run whose registration warm-up another run of this study already did starts after it.
            shared = None if resume else find_warm_start(recipe, [r.run_dir for r in runs if r is not planned])
            if shared is not None and progress:
                print(f"[study]   registration warm-up shared with {shared.parent.parent}", flush=True)
            try:
                done = train(recipe, run_dir=run_dir, resume=resume, overwrite=not resume, progress=progress,
                             warm_start=shared)
            except ConfigError:
                # A stale folder from a different recipe: start that run again.
                done = train(recipe, run_dir=run_dir, overwrite=True, progress=progress)
        summaries.append((planned, done))
    return write_study(study, summaries)


def _pool_folds(study: StudyConfig, runs: list[tuple[PlannedRun, dict[str, Any]]]) -> dict[str, Any]:
    """One summary for the fold runs of a (method, seed): its pooled test-volume report (written
    to ``OUTPUT/pooled/``), the pair-weighted mean of the registration figures, the total time."""
    from jointreg.metrics import read_per_case, write_report

    planned = runs[0][0]
    rows = [row for _, done in runs if "evaluation" in done for row in read_per_case(Path(done["run"]) / "evaluation")]
    report = Path(study.output) / "pooled" / f"{slug(planned.method)}_seed{planned.seed}"
    segmentation = write_report(rows, report, info={"folds": [p.fold for p, _ in runs], "method": planned.method},
                                overwrite=True, plots=False) if rows else None
    registration = [d["evaluation"]["registration"] for _, d in runs if d.get("evaluation", {}).get("registration")]
    pooled: dict[str, Any] = {"run": str(report), "train_seconds": sum(d.get("train_seconds") or 0 for _, d in runs),
                              "evaluation": {}}
    if segmentation is not None:
        from jointreg.export.run_folder import RunPaths
        from jointreg.metrics import summarize

        pooled["evaluation"]["segmentation"] = segmentation
        evaluated = [RunPaths(d["run"]) for _, d in runs if "evaluation" in d]
        if any(paths.evaluation_raw.is_dir() for paths in evaluated):  # a fold post-processed: pool the raw too
            raw = [row for paths in evaluated
                   for row in read_per_case(paths.evaluation_raw if paths.evaluation_raw.is_dir() else paths.evaluation)]
            segmentation["without_postprocessing"] = summarize(raw)
    if registration and all("training" in r for r in registration):  # 3D mode: per-case figures, pooled
        pooled["evaluation"]["registration"] = _pool_volume_registration(registration)
    elif registration:
        pairs = sum(r.get("pairs") or 0 for r in registration)
        pooled["evaluation"]["registration"] = {
            k: (sum((r.get(k) or 0.0) * (r.get("pairs") or 0) for r in registration) / pairs if pairs else None)
            for k in ("label_dice", "identity_dice", "ncc", "folding_percent")
        } | {"pairs": pairs}
    return pooled


def _pool_volume_registration(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """3D mode's registration figures of the folds (:func:`~jointreg.training.volume_mode.evaluate_propagation`)
    pooled per group: every fold's cases together, the means over them."""
    pooled: dict[str, Any] = {}
    for group in dict.fromkeys(g for r in folds for g in r):
        per_case = {c: v for r in folds for c, v in (r.get(group) or {}).get("per_case", {}).items()}
        if per_case:
            pooled[group] = {
                "cases": len(per_case),
                "label_dice": sum(v["registration"] for v in per_case.values()) / len(per_case),
                "identity_dice": sum(v["identity"] for v in per_case.values()) / len(per_case),
                "per_case": per_case,
            }
    return pooled


def _write_montages(study: StudyConfig, summaries: list[tuple[PlannedRun, dict[str, Any]]],
                    reports: dict[str, Path], out: Path) -> str:
    """``montages/{case}.png`` and ``montages.md``: per test case (all folds), the ground truth and
    each method's prediction (first seed), hardest case (lowest mean Dice over methods) first.

    Returns:
        The line of ``study.md`` linking the page (empty without predictions to show).
    """
    from jointreg.data.dataset import Dataset
    from jointreg.export.run_folder import RunPaths
    from jointreg.metrics import read_per_case
    from jointreg.metrics.gallery import GALLERY_MD, MethodPredictions, combined_scores, write_method_gallery
    from jointreg.metrics.report import classes_in_order

    sources: dict[str, list[tuple[Path, Path]]] = {}
    for planned, done in summaries:
        predictions = RunPaths(done.get("run", "")).predictions
        if planned.seed == study.seeds[0] and planned.method in reports and predictions.is_dir():
            labels = Dataset.open(planned.recipe.data.dataset).labels_dir(planned.recipe.evaluation.split)
            sources.setdefault(planned.method, []).append((predictions, labels))
    if not sources:
        return ""
    rows = {method: read_per_case(reports[method]) for method in sources}
    classes = list(study.classes) or [name for name, _ in classes_in_order([r for rs in rows.values() for r in rs])]
    write_method_gallery(out, [MethodPredictions(m, tuple(v)) for m, v in sources.items()], combined_scores(rows),
                         classes, title=f"{study.name}: test cases, hardest first")
    return (f"\nPer-case montages (ground truth and each method's prediction, hardest case first): "
            f"[{GALLERY_MD}]({GALLERY_MD})\n")


def _write_pair_comparisons(study: StudyConfig, reports: dict[str, Path], out: Path) -> str:
    """The ``comparisons:`` of the study: one paired table per (method, reference) that has run."""
    from jointreg.metrics import compare_reports, write_comparison

    text = ""
    for method, reference in study.comparisons:
        missing = [m for m in (method, reference) if m not in reports]
        if missing:
            text += f"\n{method} vs {reference}: not compared (no finished run of {' or '.join(missing)} in this study).\n"
            continue
        comparison = compare_reports([reports[reference], reports[method]], names=[reference, method])
        folder = out / "comparison" / f"{slug(method)}_vs_{slug(reference)}"
        write_comparison(comparison, folder, overwrite=True)
        text += f"\n## {method} vs {reference} (paired Wilcoxon over the test cases)\n\n"
        text += "| class | metric | " + f"{reference} | {method} | difference | better / worse | p |\n"
        text += "|---|---|---|---|---|---|---|\n"
        for class_name, entry in comparison["classes"].items():
            for metric in study.metrics:
                if metric not in entry:
                    continue
                ref_mean = entry[metric]["reports"][reference].get("mean")
                our_mean = entry[metric]["reports"][method].get("mean")
                diff = entry[metric]["differences"][method]
                p = diff["p_value"]
                text += (f"| {class_name} | {metric} | {_number(ref_mean)} | {_number(our_mean)} | "
                         f"{_number(diff['mean_difference'], signed=True)} | {diff['better']} / {diff['worse']} | "
                         f"{'–' if p is None else f'{p:.3g}'} |\n")
    return text


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def write_study(study: StudyConfig, summaries: list[tuple[PlannedRun, dict[str, Any]]]) -> dict[str, Any]:
    """Write ``study.md``, ``study.json``, box plots and the comparison into the study folder."""
    from jointreg.metrics import read_per_case
    from jointreg.metrics.report import plot_boxplots
    from jointreg.training.results import postprocessing_note, registration_table, segmentation_table
    from jointreg.utils.atomic import write_json, write_text

    out = Path(study.output)
    out.mkdir(parents=True, exist_ok=True)
    cross_validated = study.folds.enabled
    groups: dict[tuple[str, int], list[tuple[PlannedRun, dict[str, Any]]]] = {}
    for planned, done in summaries:
        groups.setdefault((planned.method, planned.seed), []).append((planned, done))
    # One result per (method, seed): the run itself, or its folds pooled (only when every fold
    # has run: a partial pool would compare different cases).
    incomplete = [m for (m, _), runs in groups.items() if cross_validated and len(runs) < study.folds.count]
    results = [(m, s, _pool_folds(study, runs) if cross_validated else runs[0][1])
               for (m, s), runs in groups.items() if m not in incomplete]
    labelled = [(f"{m}" if len(study.seeds) == 1 else f"{m} (seed {s})", s, d) for m, s, d in results]
    table = segmentation_table([(name, d) for name, _, d in labelled],
                               classes=list(study.classes) or None, metrics=study.metrics)
    reg = registration_table([(name, d) for name, _, d in labelled])
    where = (f"Test volumes of all {study.folds.count} folds pooled" if cross_validated else "Test split")
    text = f"# {study.name}\n\n{where}, mean ± std over cases (missed structures counted separately).\n\n{table}\n"
    text += postprocessing_note([(name, d) for name, _, d in labelled], classes=list(study.classes) or None,
                                metrics=study.metrics)
    if reg:
        what = ("the atlases' labels on the unannotated training volumes and on the test volumes, 3D mode"
                if "training registration" in reg else "label propagation on the test volumes")
        text += f"\n## Registration ({what})\n\n{reg}\n"
    if incomplete:
        text += f"\nNot pooled (not every fold has run): {', '.join(sorted(set(incomplete)))}.\n"
    # Paired comparison of every method against the baseline (first seed), over the (pooled) cases.
    baseline = study.baseline or next(iter(study.methods))
    first_seed = study.seeds[0]
    reports = {m: Path(d["run"]) if cross_validated else Path(d["run"]) / "evaluation"
               for m, s, d in results if s == first_seed and "segmentation" in d.get("evaluation", {})}
    if baseline in reports and len(reports) > 1:
        from jointreg.metrics import compare_reports, write_comparison

        names = [baseline] + [m for m in reports if m != baseline]
        comparison = compare_reports([reports[m] for m in names], names=names)
        write_comparison(comparison, out / "comparison", overwrite=True)
        text += f"\nPaired comparison against {baseline} (Wilcoxon signed-rank): see comparison/comparison.md\n"
    text += _write_pair_comparisons(study, reports, out)
    text += _write_montages(study, summaries, reports, out)
    if cross_validated:
        for fold in range(study.folds.count):
            runs = [(f"{p.method}" if len(study.seeds) == 1 else f"{p.method} (seed {p.seed})", d)
                    for p, d in summaries if p.fold == fold]
            text += f"\n## Fold {fold}\n\n" + segmentation_table(runs, classes=list(study.classes) or None,
                                                                  metrics=study.metrics) + "\n"
    # Box plots: per class and metric, one box per method.
    rows = []
    for method, report in reports.items():
        for row in read_per_case(report):
            rows.append((row.class_name, method, row))
    for class_name in sorted({c for c, _, _ in rows}):
        import dataclasses

        renamed = [dataclasses.replace(r, class_name=m) for c, m, r in rows if c == class_name]
        folder = out / "plots" / slug(class_name)
        folder.mkdir(parents=True, exist_ok=True)
        plot_boxplots(renamed, folder)
    write_text(out / "study.md", text)
    result = {
        "name": study.name,
        "runs": [{"method": p.method, "seed": p.seed, **({} if p.fold is None else {"fold": p.fold}),
                  "run": d.get("run"), "train_seconds": d.get("train_seconds"), "evaluation": d.get("evaluation")}
                 for p, d in summaries],
        "table": table,
    }
    if cross_validated:
        result["pooled"] = [{"method": m, "seed": s, "report": d["run"], "train_seconds": d["train_seconds"],
                             "evaluation": d["evaluation"]} for m, s, d in results]
    write_json(out / "study.json", result)
    print("\n" + text)
    print(f"Study written to {out} (study.md, study.json, plots/, comparison/, montages.md)")
    return result
