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
per class and metric (one box per method) and a paired comparison (Wilcoxon) of every method
against the baseline.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.errors import ConfigError, InputError
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

    def __post_init__(self):
        if not self.base:
            raise ConfigError("base: the study needs a base recipe")
        if not self.methods:
            raise ConfigError("methods: the study needs at least one method")
        if self.baseline is not None and self.baseline not in self.methods:
            raise ConfigError(f"baseline: {self.baseline!r} is not one of the methods ({', '.join(self.methods)})")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        slugs = [slug(m) for m in self.methods]
        if len(set(slugs)) != len(slugs):
            raise ConfigError("methods: two method names map to the same folder name")


def slug(method: str) -> str:
    """A folder-safe name: ``UNet*`` → ``unet-star``, ``RUNet (3 scales)`` → ``runet-3-scales``."""
    text = method.replace("*", "-star").replace("+", "-plus").lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "method"


def load_study(path: str | PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> tuple[StudyConfig, Path]:
    """Read a study YAML; returns the config and the base recipe's path."""
    import yaml

    from jointreg.utils.typed import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "study file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise InputError(path, "invalid YAML") from None
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
    import yaml

    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in values.items()]


def plan_runs(study: StudyConfig, base: Path):
    """``(method, seed, recipe, run_dir)`` for every run of the study, recipes fully resolved."""
    from jointreg.training.config import load_recipe

    runs = []
    for method, changes in study.methods.items():
        for seed in study.seeds:
            name = f"{slug(method)}_seed{seed}"
            overrides = _override_list(study.overrides) + _override_list(changes) + [f"seed={seed}", f"name={name}", f"output={study.output}"]
            try:
                recipe = load_recipe(base, overrides)
            except ConfigError as exc:
                raise ConfigError(f"method {method!r}: {exc}") from None
            runs.append((method, seed, recipe, Path(study.output) / name))
    return runs


def _finished(run_dir: Path, recipe) -> dict[str, Any] | None:
    from jointreg.export.run_folder import RunPaths
    from jointreg.training.run_folder import read_run_recipe, recipe_differences

    summary = RunPaths(run_dir).summary
    if not summary.is_file():
        return None
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
        stored = read_run_recipe(run_dir)
    except (json.JSONDecodeError, InputError, ConfigError):
        return None
    if data.get("status") != "finished" or recipe_differences(stored, recipe):
        return None
    return data


def run_study(path: str | PathLike[str], *, overrides: list[str] | tuple[str, ...] = (), progress: bool = True,
              only: list[str] | None = None) -> dict[str, Any]:
    """Run (or reuse) every run of a study and write its table, JSON, plots and comparison."""
    from jointreg.export.run_folder import RunPaths
    from jointreg.training.loop import train

    study, base = load_study(path, overrides)
    runs = plan_runs(study, base)
    if only:
        unknown = [m for m in only if m not in study.methods]
        if unknown:
            raise ConfigError(f"--only: unknown method {unknown[0]!r} (methods: {', '.join(study.methods)})")
    summaries: list[tuple[str, int, dict[str, Any]]] = []
    for index, (method, seed, recipe, run_dir) in enumerate(runs, start=1):
        done = _finished(run_dir, recipe)
        if done is None and only and method not in only:
            continue
        if done is not None:
            log.info("reusing %s (finished)", run_dir)
            if progress:
                print(f"[study] {index}/{len(runs)} {method} seed {seed}: reusing {run_dir}", flush=True)
        else:
            if progress:
                print(f"[study] {index}/{len(runs)} {method} seed {seed}: training into {run_dir}", flush=True)
            resume = RunPaths(run_dir).can_resume()
            try:
                done = train(recipe, run_dir=run_dir, resume=resume, overwrite=not resume, progress=progress)
            except ConfigError:
                # A stale folder from a different recipe: start that run again.
                done = train(recipe, run_dir=run_dir, overwrite=True, progress=progress)
        summaries.append((method, seed, done))
    return write_study(study, summaries)


def write_study(study: StudyConfig, summaries: list[tuple[str, int, dict[str, Any]]]) -> dict[str, Any]:
    """Write ``study.md``, ``study.json``, box plots and the comparison into the study folder."""
    from jointreg.metrics import read_per_case
    from jointreg.metrics.report import plot_boxplots
    from jointreg.training.results import registration_table, segmentation_table
    from jointreg.utils.atomic import write_json, write_text

    out = Path(study.output)
    out.mkdir(parents=True, exist_ok=True)
    labelled = [(f"{m}" if len(study.seeds) == 1 else f"{m} (seed {s})", s, d) for m, s, d in summaries]
    table = segmentation_table([(name, d) for name, _, d in labelled],
                               classes=list(study.classes) or None, metrics=study.metrics)
    reg = registration_table([(name, d) for name, _, d in labelled])
    text = f"# {study.name}\n\nTest split, mean ± std over cases (missed structures counted separately).\n\n{table}\n"
    if reg:
        text += f"\n## Registration (label propagation on the test volumes)\n\n{reg}\n"
    # Paired comparison of every method against the baseline (first seed).
    baseline = study.baseline or next(iter(study.methods))
    first_seed = study.seeds[0]
    reports = {m: Path(d["run"]) / "evaluation" for m, s, d in summaries if s == first_seed and "evaluation" in d}
    comparison_md = ""
    if baseline in reports and len(reports) > 1:
        from jointreg.metrics import compare_reports, write_comparison

        names = [baseline] + [m for m in reports if m != baseline]
        comparison = compare_reports([reports[m] for m in names], names=names)
        write_comparison(comparison, out / "comparison", overwrite=True)
        comparison_md = f"\nPaired comparison against {baseline} (Wilcoxon signed-rank): see comparison/comparison.md\n"
    text += comparison_md
    # Box plots: per class and metric, one box per method.
    rows = []
    for method, seed, d in summaries:
        if seed != first_seed or "evaluation" not in d:
            continue
        for row in read_per_case(Path(d["run"]) / "evaluation"):
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
        "runs": [{"method": m, "seed": s, "run": d.get("run"), "train_seconds": d.get("train_seconds"),
                  "evaluation": d.get("evaluation")} for m, s, d in summaries],
        "table": table,
    }
    write_json(out / "study.json", result)
    print("\n" + text)
    print(f"Study written to {out} (study.md, study.json, plots/, comparison/)")
    return result
