"""Training-step benchmark: steps/s of the shipped recipes, and where a step's time goes.

Builds a recipe's networks and step inputs exactly as ``jointreg train`` does
(:func:`jointreg.training.loop.step_inputs`) and times, interleaved in one process so that both
share the machine's conditions:

* **steps/s** of the registration and the segmentation step (the real
  :func:`~jointreg.training.steps.registration_step` / ``segmentation_step``), for the
  variants of ``--variants``: ``before`` (Adam(W)'s per-tensor loop and an element-wise
  finiteness check of the weights, the code before the fused optimiser), ``after`` (the fused
  Adam(W) kernel of :func:`jointreg.training.networks.optimizer_options` and
  :func:`jointreg.training.steps.weights_finite`: float32 training as shipped) and
  ``bfloat16`` (``after`` with the recipe's ``precision: bfloat16``, autocast forward passes;
  fast where the CPU has bfloat16 matrix units, :func:`jointreg.training.precision.native_bfloat16`)
  and ``after-cl`` / ``bfloat16-cl`` (the same with both networks' weights in channels-last
  memory format; ``bfloat16-cl`` is what the training loop does with ``precision: bfloat16``,
  :func:`jointreg.training.precision.use_channels_last`);
  each with its ratio to the first variant;
* **the parts** of a step, each timed on its own in float32 with the last variant's optimiser: drawing the batch
  (pairs and tensors; annotated slices with augmentation), the registration-derived groups
  (one registration forward per group and the labelling rules), forward + loss, backward, the
  optimiser, the weight check; and one chain-propagation rebuild (every training volume's labels
  propagated through the neighbours, with the recipe's refinement), which the loop repeats after
  every registration phase, shown per segmentation step as the plan amortises it;
* **the refinement** inside that rebuild, through ``F.grid_sample`` (as shipped) and through
  the gather-based spatial transformer (as before), interleaved.

The segmentation parts are timed with a warm segmentor (as after the warm-up). Run::

    .venv/bin/python benchmarks/train_steps.py [--recipe recipes/chaos_t2_liver_1slice.yaml]
        [--sizes 64,128] [--steps 10] [--rounds 3] [--threads 1] [--variants before,after,bfloat16]
        [--set KEY=VALUE] [--out FILE]

prints one JSON object (``--out`` also writes it, and a .md beside it). The default recipe is
the CHAOS-T2 one (data/chaos_t2_liver_1slice, README "Data"); any recipe works whose data set
exists (``--set data.dataset=PATH``). Timings on a shared machine vary ±20–30 %: compare figures
of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from jointreg.data.batches import registration_batch  # noqa: E402
from jointreg.training import steps as step_module  # noqa: E402
from jointreg.training.config import load_recipe  # noqa: E402
from jointreg.training.data import load_training_data  # noqa: E402
from jointreg.training.distributed import Distributed  # noqa: E402
from jointreg.training.loop import step_inputs  # noqa: E402
from jointreg.training.networks import build_networks  # noqa: E402
from jointreg.training.plan import REGISTRATION, SEGMENTATION, build_plan, total_steps  # noqa: E402
from jointreg.training.precision import MixedPrecision, native_bfloat16  # noqa: E402
from jointreg.utils.device import set_threads  # noqa: E402

VARIANTS = ("before", "after", "after-cl", "bfloat16", "bfloat16-cl")


def elementwise_finite(net: torch.nn.Module) -> bool:
    """The weight check before this benchmark: a mask as large as each weight tensor."""
    return all(bool(torch.isfinite(p).all()) for p in net.parameters())


def _optimizer(role, fused: bool) -> torch.optim.Optimizer:
    """A fresh optimiser of the role's class and settings, fused or per-tensor."""
    group = role.optimizer.param_groups[0]
    cls = type(role.optimizer)
    return cls(role.net.parameters(), lr=group["lr"], weight_decay=group["weight_decay"], fused=fused)


def _timed(fn, repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _recipe(args: argparse.Namespace, size: int, work: Path):
    overrides = [f"data.size=[{size}, {size}]", f"output={work}", "name=bench", "logging.progress=false",
                 "logging.tensorboard=false", "logging.image_every=0", *args.set]
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    return load_recipe(args.recipe, overrides)


def bench_size(args: argparse.Namespace, size: int, work: Path) -> dict:
    recipe = _recipe(args, size, work)
    torch.manual_seed(recipe.seed)
    set_threads(recipe.threads)
    device = torch.device("cpu")
    data = load_training_data(recipe, progress=False)
    nets = build_networks(recipe, data, device)
    plan = build_plan(recipe)
    inputs = step_inputs(recipe, data, nets, device, plan, Distributed().share)
    reg, seg = nets.role(REGISTRATION), nets.role(SEGMENTATION)
    if seg is None:
        raise SystemExit(f"{args.recipe}: the recipe trains no segmentor")
    objective, sampler, groups, batches = inputs.objective, inputs.sampler, inputs.groups, inputs.batches
    rng = np.random.default_rng(0)
    variants = args.variants
    optimizers = {name: {role.name: _optimizer(role, fused=name != "before") for role in (reg, seg) if role is not None}
                  for name in variants}
    checks = {name: elementwise_finite if name == "before" else step_module.weights_finite for name in variants}
    precisions = {name: MixedPrecision("bfloat16", device) if name.startswith("bfloat16") else None for name in variants}
    steps_done = {"seg": 0}

    def registration(name: str):
        pairs = sampler.sample(recipe.registration.batch_size, rng)
        batch = registration_batch(data.train, pairs, ignore_index=data.ignore_index, device=device)
        step_module.registration_step(reg.net, optimizers[name][REGISTRATION], batch, objective,
                                      segmentor=seg.net, step=0, precision=precisions[name])

    def segmentation(name: str):
        drawn = batches.get(steps_done["seg"])
        steps_done["seg"] += 1
        warped = propagated = None
        if groups is not None:
            groups.refresh(reg.net, 0)
            warped, propagated = groups.draw(reg.net, max(1, recipe.segmentation.batch_size // 2), drawn.rng,
                                             segmentor=seg.net)
        step_module.segmentation_step(seg.net, optimizers[name][SEGMENTATION], recipe.segmentation,
                                      ignore_index=data.ignore_index, real=(drawn.images, drawn.labels),
                                      warped=warped, propagated=propagated, step=0, precision=precisions[name])

    # Interleaved steps/s of the variants.
    kinds = {"registration": registration} if reg is not None and reg.trains else {}
    kinds["segmentation"] = segmentation
    if groups is not None:
        groups.refresh(reg.net, 0)  # the first rebuild is timed below, not in the steps
    seconds: dict[str, dict[str, list[float]]] = {k: {n: [] for n in variants} for k in kinds}
    after_check = step_module.weights_finite
    for _ in range(args.rounds):
        for name in variants:
            step_module.weights_finite = checks[name]  # the check the steps call
            layout = torch.channels_last if name.endswith("-cl") else torch.contiguous_format
            for role in (reg, seg):
                if role is not None:
                    role.net.to(memory_format=layout)
            for kind, fn in kinds.items():
                seconds[kind][name].append(_timed(lambda: fn(name), args.steps))
    step_module.weights_finite = after_check
    for role in (reg, seg):
        if role is not None:
            role.net.to(memory_format=torch.contiguous_format)
    result: dict = {"size": size, "steps_per_s": {}}
    for kind, by_name in seconds.items():
        rates = {name: round(1.0 / float(np.median(v)), 3) for name, v in by_name.items()}
        # Ratios to the first variant, as medians of the per-round ratios (the rounds share conditions).
        for name in variants[1:]:
            rates[f"{name}_vs_{variants[0]}"] = round(float(np.median(
                [a / b for a, b in zip(by_name[variants[0]], by_name[name])])), 3)
        result["steps_per_s"][kind] = rates

    # The parts of each step (after), each on its own.
    parts: dict[str, dict[str, float]] = {}
    if "registration" in kinds:
        pairs = sampler.sample(recipe.registration.batch_size, rng)
        batch = registration_batch(data.train, pairs, ignore_index=data.ignore_index, device=device)
        parts["registration"] = _forward_backward(
            reg.net, optimizers[variants[-1]][REGISTRATION], lambda: objective(reg.net(batch.moving, batch.fixed), batch)[0],
            args.steps,
            draw=lambda: registration_batch(data.train, sampler.sample(recipe.registration.batch_size, rng),
                                                        ignore_index=data.ignore_index, device=device),
        )
    drawn = batches.get(0)
    images, targets = [drawn.images], [drawn.labels]
    if groups is not None:
        def draw_groups():
            return groups.draw(reg.net, max(1, recipe.segmentation.batch_size // 2), drawn.rng, segmentor=seg.net)

        group_s = _timed(draw_groups, args.steps)
        warped, propagated = draw_groups()
        if warped is not None:
            images.append(warped.warped_images)
            targets.append(warped.warped_labels)
        if propagated is not None:
            images.append(propagated.fixed_images)
            targets.append(propagated.fixed_targets)
    images, targets = torch.cat(images), torch.cat(targets)
    from jointreg.losses.segmentation import ce_dice_loss

    cfg = recipe.segmentation
    parts["segmentation"] = _forward_backward(
        seg.net, optimizers[variants[-1]][SEGMENTATION],
        lambda: ce_dice_loss(seg.net(images), targets, ignore_index=data.ignore_index, ce_weight=cfg.ce_weight,
                             dice_weight=cfg.dice_weight),
        args.steps, draw=lambda: batches.get(1),
    )
    if groups is not None:
        parts["segmentation"]["registration_groups"] = round(group_s, 4)
        if groups.chain:
            rebuild = _timed(lambda: groups.refresh(reg.net, time.perf_counter_ns()), 1)
            rebuilds = sum(1 for p in plan if p.network == REGISTRATION)  # after each registration phase
            seg_steps = total_steps(plan, SEGMENTATION)
            parts["segmentation"]["chain_rebuild"] = round(rebuild, 3)
            parts["segmentation"]["chain_rebuild_per_step"] = round(rebuild * rebuilds / max(1, seg_steps), 4)
            result["chain_rebuilds"] = rebuilds
    if recipe.propagation.refine > 0:
        result["refinement"] = refinement_speed(recipe.propagation.refine, size, args.rounds)
    batches.close()
    result["parts_seconds"] = parts
    result["plan"] = {kind: total_steps(plan, network) for kind, network in
                      (("registration", REGISTRATION), ("segmentation", SEGMENTATION))}
    result["segmentation_batch"] = int(images.shape[0])
    return result


def refinement_speed(steps: int, size: int, rounds: int, pairs: int = 16) -> dict:
    """Seconds to refine ``pairs`` fields for ``steps`` Adam steps (the chain rebuild's inner
    loop), interleaved: through ``F.grid_sample`` as :func:`jointreg.inference.refine.refine_flow`
    does, and through :func:`jointreg.spatial.warp.warp` (the gather-based warp, as before)."""
    from jointreg.inference.refine import Refinement, refine_flow
    from jointreg.spatial.warp import identity_grid, warp

    settings = Refinement(steps=steps)
    g = torch.Generator().manual_seed(0)
    moving = torch.nn.functional.avg_pool2d(torch.rand(pairs, 1, size, size, generator=g), 5, 1, 2)
    fixed = torch.roll(moving, 2, dims=2)
    start = torch.randn(pairs, 2, size, size, generator=g)
    grid = identity_grid((size, size))

    def gather_warp():
        refine_flow(moving, fixed, start, settings, sampler=lambda m, u: warp(m, u, grid=grid))

    times: dict[str, list[float]] = {"grid_sample": [], "gather_warp": []}
    for _ in range(rounds):
        times["grid_sample"].append(_timed(lambda: refine_flow(moving, fixed, start, settings), 1))
        times["gather_warp"].append(_timed(gather_warp, 1))
    out = {name: round(float(np.median(v)), 3) for name, v in times.items()}
    out["speedup"] = round(float(np.median([b / a for a, b in zip(times["grid_sample"], times["gather_warp"])])), 3)
    out.update(pairs=pairs, steps=steps)
    return out


def _forward_backward(net, optimizer, loss_fn, repeats: int, *, draw) -> dict[str, float]:
    """Seconds of each part of one step: the batch, forward + loss, backward, optimiser, weight check."""
    times = {"batch": _timed(draw, repeats)}
    net.train()
    forward = backward = step = 0.0
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = loss_fn()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        if _ > 0:  # the first pass is the warm-up
            forward, backward, step = forward + t1 - t0, backward + t2 - t1, step + t3 - t2
    times.update(forward=forward / repeats, backward=backward / repeats, optimizer=step / repeats)
    times["weight_check"] = _timed(lambda: step_module.weights_finite(net), repeats)
    times["weight_check_before"] = _timed(lambda: elementwise_finite(net), repeats)
    return {k: round(v, 4) for k, v in times.items()}


def markdown(report: dict) -> str:
    c = report["conditions"]
    lines = ["# Training steps", "", f"Command: `{c['command']}`", "",
             f"{c['cpu_count']} CPUs, {c['threads']} torch threads, torch {c['torch']}; load average "
             f"{c['load_average_start']} at the start ({c['time']}).", "",
             "| size | step | " + " | ".join(f"{v} (steps/s)" for v in report["variants"]) + " | "
             + " | ".join(f"{v} ÷ {report['variants'][0]}" for v in report["variants"][1:]) + " |",
             "|---|---|" + "---|" * (2 * len(report["variants"]) - 1)]
    first = report["variants"][0]
    for r in report["sizes"]:
        for kind, rates in r["steps_per_s"].items():
            lines.append(f"| {r['size']}² | {kind} | " + " | ".join(str(rates[v]) for v in report["variants"]) + " | "
                         + " | ".join(f"{rates[f'{v}_vs_{first}']}×" for v in report["variants"][1:]) + " |")
    lines += ["", "Where a step's time goes (float32 autograd passes, the last variant's optimiser; seconds):", ""]
    for r in report["sizes"]:
        for kind, parts in r["parts_seconds"].items():
            lines.append(f"* {r['size']}², {kind}: " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    for r in report["sizes"]:
        if "refinement" in r:
            f = r["refinement"]
            lines.append(f"* {r['size']}², refinement of {f['pairs']} pairs × {f['steps']} steps: grid_sample "
                         f"{f['grid_sample']} s, gather warp {f['gather_warp']} s ({f['speedup']}×)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "chaos_t2_liver_1slice.yaml")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128],
                        help="training grids (square), e.g. 64,128")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    parser.add_argument("--variants", type=lambda s: tuple(s.split(",")), default=("after", "bfloat16"),
                        help=f"comma-separated, the first is the reference: {', '.join(VARIANTS)} (default after,bfloat16)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (and a .md beside it)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    if not args.recipe.is_file():
        parser.error(f"{args.recipe}: recipe not found")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or len(set(args.variants)) < 2 or len(set(args.variants)) != len(args.variants):
        parser.error(f"--variants: two or more of {', '.join(VARIANTS)}, each once (got {','.join(args.variants)})")
    load = os.getloadavg()
    report = {"conditions": {
        "command": " ".join([".venv/bin/python", "benchmarks/train_steps.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "load_average_start": [round(v, 2) for v in load],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "native_bfloat16": native_bfloat16(),
    }, "variants": list(args.variants)}
    with tempfile.TemporaryDirectory(prefix="jointreg-steps-") as work:
        report["sizes"] = []
        for size in args.sizes:
            print(f"  {size}x{size} ...", file=sys.stderr, flush=True)
            report["sizes"].append(bench_size(args, size, Path(work)))
    report["conditions"]["threads"] = torch.get_num_threads()
    report["conditions"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        from jointreg.utils.atomic import write_text

        write_text(args.out, text + "\n")
        write_text(args.out.with_suffix(".md"), markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
