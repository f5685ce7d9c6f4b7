"""Creating, checking and reading a run folder (its layout: :mod:`jointreg.export.run_folder`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jointreg.errors import ConfigError, InputError
from jointreg.export.run_folder import RunPaths
from jointreg.training.config import Recipe, dump_recipe, recipe_from_dict
from jointreg.utils.atomic import write_text


def run_paths(recipe: Recipe, run_dir: str | Path | None = None) -> RunPaths:
    """The run folder: ``run_dir``, or ``recipe.output / recipe.name``."""
    return RunPaths(Path(run_dir) if run_dir is not None else Path(recipe.output) / recipe.name)


def recipe_differences(a: Recipe, b: Recipe) -> list[str]:
    """Dotted keys whose values differ between two recipes."""

    def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flatten(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def read_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe stored in a run folder."""
    import yaml

    path = RunPaths(run_dir).recipe
    if not path.is_file():
        raise InputError(run_dir, "not a jointreg run folder (recipe.yaml is missing)")
    try:
        return recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError:
        raise InputError(path, "invalid YAML") from None


def prepare_run_folder(recipe: Recipe, paths: RunPaths, *, resume: bool, overwrite: bool) -> None:
    """Check a folder to resume (same recipe, a checkpoint), or create a new one with its recipe.

    Raises:
        InputError / ConfigError: nothing to resume, a different recipe, or an existing folder
            without ``overwrite``.
    """
    if resume:
        if not paths.is_run():
            raise InputError(paths.root, "cannot resume: not a jointreg run folder (recipe.yaml is missing)")
        diff = recipe_differences(read_run_recipe(paths.root), recipe)
        if diff:
            raise ConfigError(
                f"{paths.root}: cannot resume, the run was made by a different recipe "
                f"(differs in: {', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''})"
            )
        if not paths.last.is_dir():
            raise InputError(paths.root, "cannot resume: no checkpoint yet (checkpoints/last is missing)")
        return
    if paths.root.exists() and any(paths.root.iterdir()):
        if not overwrite:
            raise InputError(
                paths.root,
                "run folder already exists; resume it with 'jointreg train --resume RUN', "
                "pick another name (--set name=...), or pass --overwrite",
            )
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text(paths.recipe, dump_recipe(recipe))
