"""3D-mode step benchmark: CPU time per step and peak memory at a recipe's box.

Builds a 3D-mode recipe's data, networks and step inputs exactly as ``jointreg train`` does
(:func:`jointreg.training.loop.step_inputs`, ``volumes.enabled``) and, for each registration
architecture of ``--architectures`` in turn, times

* the registration step (a batch of whole-volume pairs in the box: forward, loss, backward, Adam);
* the rebuild of the propagated labels (every atlas registered onto every other training
  volume and fused, :meth:`~jointreg.training.volume_mode.VolumeGroups.refresh`), which the loop
  repeats after every registration phase;
* the segmentation step with the real, warped and propagated groups;

and reports the process's peak resident memory after each architecture (``ru_maxrss``, which
only grows: run the largest architecture last or one per process for its own peak). Run::

    .venv/bin/python benchmarks/volume_steps.py [--recipe recipes/chaos_t2_liver_3d.yaml]
        [--architectures fmirnet,affine,voxelmorph] [--steps 5] [--threads 1] [--set KEY=VALUE] [--out FILE]

prints one JSON object (``--out`` also writes it). The default recipe needs data/chaos_t2_1vol
(README, "Data"); ``--set data.dataset=PATH`` for another 3D-mode data set.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from jointreg.training.config import load_recipe  # noqa: E402
from jointreg.training.data import load_training_data  # noqa: E402
from jointreg.training.distributed import Distributed  # noqa: E402
from jointreg.training.loop import step_inputs  # noqa: E402
from jointreg.training.networks import build_networks  # noqa: E402
from jointreg.training.plan import REGISTRATION, SEGMENTATION, build_plan  # noqa: E402
from jointreg.training.steps import registration_step, segmentation_step  # noqa: E402
from jointreg.training.volume_mode import training_box  # noqa: E402
from jointreg.utils.device import set_threads  # noqa: E402


def peak_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_seconds(fn, steps: int) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench(args: argparse.Namespace, architecture: str, work: Path) -> dict:
    overrides = [f"registration.architecture={architecture}", "registration.arguments={}", f"output={work}",
                 "name=bench", "logging.progress=false", "logging.tensorboard=false", *args.set]
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    recipe = load_recipe(args.recipe, overrides)
    if not recipe.volumes.enabled:
        raise SystemExit(f"{args.recipe}: not a 3D-mode recipe (volumes.enabled)")
    torch.manual_seed(recipe.seed)
    set_threads(recipe.threads)
    device = torch.device("cpu")
    data = load_training_data(recipe, progress=False)
    nets = build_networks(recipe, data, device)
    inputs = step_inputs(recipe, data, nets, device, build_plan(recipe), Distributed().share)
    reg, seg = nets.role(REGISTRATION), nets.role(SEGMENTATION)
    rng = np.random.default_rng(0)
    result: dict = {"architecture": architecture, "box": training_box(recipe, data.train).to_dict(),
                    "registration_batch": recipe.registration.batch_size,
                    "parameters": sum(p.numel() for p in nets.registration.parameters())}
    if reg.trains:
        def registration():
            batch = inputs.batch(inputs.sampler.sample(recipe.registration.batch_size, rng))
            registration_step(reg.net, reg.optimizer, batch, inputs.objective)

        result["registration_step_s"] = median_seconds(registration, args.steps)
    version = iter(range(10**9))
    result["propagation_rebuild_s"] = median_seconds(lambda: inputs.groups.refresh(nets.registration, next(version)),
                                                     max(1, args.steps // 2))
    result["targets"] = len(inputs.groups.targets)
    result["atlases"] = len(inputs.groups.atlases)
    if seg is not None:
        cfg = recipe.segmentation

        def segmentation():
            drawn = inputs.batches.get(0)
            warped, propagated = inputs.groups.draw(nets.registration, max(1, cfg.batch_size // 2), rng)
            segmentation_step(seg.net, seg.optimizer, cfg, ignore_index=data.ignore_index,
                              real=(drawn.images, drawn.labels), warped=warped, propagated=propagated)

        result["segmentation_step_s"] = median_seconds(segmentation, args.steps)
        inputs.batches.close()
    result["peak_rss_mib"] = round(peak_mib(), 1)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "chaos_t2_liver_3d.yaml")
    parser.add_argument("--architectures", type=lambda s: s.split(","), default=["affine", "voxelmorph", "fmirnet"],
                        help="registration networks, in this order (peak memory only grows: largest last)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per figure (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        recipe = args.recipe.resolve()
        shown = recipe.relative_to(REPO).as_posix() if recipe.is_relative_to(REPO) else recipe.name
        report = {"recipe": shown, "threads": args.threads or torch.get_num_threads(),
                  "torch": torch.__version__, "rows": [bench(args, a, Path(work)) for a in args.architectures]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
