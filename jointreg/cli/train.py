"""Train from a recipe: registration only, segmentor only, or both jointly.

Examples:
  jointreg train recipes/demo_liver_phantom.yaml
  jointreg train recipes/chaos_t2_liver_1slice.yaml --set schedule.rounds=20 --set seed=1
  jointreg train --resume runs/chaos_t2_liver_1slice
  torchrun --nproc-per-node 2 -m jointreg train recipes/chaos_t2_liver_1slice.yaml

The run folder (default: OUTPUT/NAME from the recipe, or --out) receives the resolved recipe,
train.log, TensorBoard logs (tensorboard --logdir RUN), checkpoints, and at the end
export/registration and export/segmentor model folders plus an evaluation on the test split.

A resume checkpoint is written after each warm-up, after each round and every
schedule.checkpoint_steps steps (default 100), so --resume works from early on; it continues
with exactly the weights an uninterrupted run would have, and refuses a recipe that changed
since the checkpoint (naming each changed key, old -> new). A run that failed before its first
checkpoint protects nothing: the same command, with the recipe corrected or not, replaces its
folder without --overwrite, and --resume on it starts at step 0 with the folder's recipe.

Under torchrun every process trains on an equal share of each batch (batch sizes must divide by
the number of processes) with both networks in DistributedDataParallel; rank 0 alone writes the
run folder, and --resume works from a checkpoint of any number of processes (docs/scaling.md).
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train registration and/or segmentation networks from a YAML recipe"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="YAML recipe (not needed with --resume)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set registration.lr=1e-4 (repeatable)")
    parser.add_argument("--out", metavar="RUN", help="run folder (default: OUTPUT/NAME from the recipe)")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue the run in this folder from its last checkpoint (at step 0 when it has none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run folder (one without checkpoint or summary is replaced anyway)")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop with a checkpoint after this many steps (resume later with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json

    from jointreg.errors import ConfigError
    from jointreg.training.config import load_recipe
    from jointreg.training.loop import train
    from jointreg.training.run_folder import read_run_recipe

    if args.resume:
        if args.overrides:
            raise ConfigError("--set cannot change a run being resumed (its recipe is fixed)")
        recipe = load_recipe(args.recipe) if args.recipe else read_run_recipe(args.resume)
        summary = train(recipe, run_dir=args.resume, resume=True, stop_after=args.stop_after,
                        progress=False if args.no_progress else None)
    else:
        if not args.recipe:
            raise ConfigError("give a recipe file, or --resume RUN")
        recipe = load_recipe(args.recipe, args.overrides)
        summary = train(recipe, run_dir=args.out, overwrite=args.overwrite, stop_after=args.stop_after,
                        progress=False if args.no_progress else None)
    if summary.get("rank", 0) != 0:  # another rank of a torchrun job: rank 0 reports
        return 0
    brief = {k: summary[k] for k in ("status", "run", "steps", "train_seconds") if k in summary}
    if "evaluation" in summary:
        brief["evaluation"] = _short_evaluation(summary["evaluation"])
    print(json.dumps(brief, indent=2))
    return 0


def _short_evaluation(evaluation: dict) -> dict:
    out = {}
    seg = evaluation.get("segmentation")
    if isinstance(seg, dict):
        for name, stats in seg.get("classes", {}).items():
            dice = stats.get("dice", {}) if isinstance(stats, dict) else {}
            if isinstance(dice, dict) and dice.get("mean") is not None:
                out[f"dice/{name}"] = round(dice["mean"], 4)
    reg = evaluation.get("registration")
    if isinstance(reg, dict):
        out.update({f"registration/{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in reg.items()})
    return out
