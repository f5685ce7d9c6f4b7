"""The alternating registration/segmentation loop.

The run is a fixed plan of phases (:mod:`jointreg.training.plan`). Every random draw of global
step ``g`` comes from ``numpy.random.default_rng([seed, g])`` (pairs, slices, augmentation
seeds), and torch's global RNG (dropout) is saved in checkpoints, so stopping after any step
and resuming reproduces the uninterrupted run exactly. After each round: validation and the
checkpoint (:mod:`~jointreg.training.rounds`); a checkpoint also after each warm-up and every
``schedule.checkpoint_steps`` steps, so a crash at any point loses little; at the end: export
and evaluation (:mod:`~jointreg.training.finish`). What a rerun may do with a run folder (and
why ``--resume`` refuses an edited recipe): :mod:`~jointreg.training.run_folder`. Under
``torchrun`` the same loop runs in every process, each on its share of every batch
(:mod:`~jointreg.training.distributed`).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointreg.data.batches import RegistrationBatch, registration_batch
from jointreg.data.pairs import PairSampler
from jointreg.errors import ConfigError, InputError, JointregError
from jointreg.export.run_folder import RunPaths
from jointreg.training.checkpoint import load_checkpoint
from jointreg.training.config import Recipe
from jointreg.training.data import TrainingData, load_training_data
from jointreg.training.distributed import Distributed, check_batch_sizes, start, stop
from jointreg.training.finish import finish_run
from jointreg.training.logger import RunLogger, log_registration_panel
from jointreg.training.networks import Networks, TrainingState, build_networks, restore_payload
from jointreg.training.objectives import RegistrationObjective
from jointreg.training.plan import REGISTRATION, Phase, build_plan, locate, round_ends, total_steps, warmup_ends
from jointreg.training.precision import MixedPrecision, resolve_precision, use_channels_last
from jointreg.training.prefetch import RealBatches
from jointreg.training.propagation import SegmentationGroups
from jointreg.training.volume_mode import VolumeGroups, VolumePairs
from jointreg.training.rounds import end_of_round, save_last
from jointreg.training.run_folder import open_run_folder, run_paths
from jointreg.training.steps import registration_step, segmentation_step
from jointreg.training.warm_start import FOLDER as WARMUP_FOLDER
from jointreg.training.warm_start import apply_warm_start, rng_fingerprint, save_warmup, warmup_length
from jointreg.utils.device import seed_everything, set_threads

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything the loop works with, built once by :func:`train`."""

    recipe: Recipe
    paths: RunPaths
    data: TrainingData
    nets: Networks
    plan: list[Phase]
    logger: RunLogger
    device: torch.device
    show_progress: bool
    distributed: Distributed = Distributed()
    fingerprint: str = ""  # torch's RNG state after building the networks (warm_start.py)


def train(
    recipe: Recipe,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool | None = None,
    warm_start: str | Path | None = None,
) -> dict[str, Any]:
    """Train the recipe's networks in a run folder; see the module docstring for the plan.

    Args:
        recipe: the experiment.
        run_dir: the run folder (default ``recipe.output / recipe.name``).
        resume: continue the run in ``run_dir`` from its last checkpoint; a folder that has no
            checkpoint yet starts at step 0 with its recipe.
        overwrite: replace an existing run folder. Not needed for a folder whose training never
            reached a checkpoint (a failed attempt): that one is replaced anyway.
        stop_after: stop (with a checkpoint) once this many global steps are done; the run can
            be resumed later. Used to time-box runs and by the resume tests.
        progress: show a progress bar (default: the recipe's logging.progress).
        warm_start: a ``checkpoints/registration_warmup`` folder of another run with the same
            warm-up (:mod:`~jointreg.training.warm_start`): a new run starts after its
            registration warm-up with that state. Ignored when resuming from a checkpoint.

    Returns:
        The run summary (also written to ``summary.json`` when the run completes).

    Raises:
        ConfigError: a negative ``stop_after``.
        InputError / ConfigError: the run folder cannot be used as asked
            (:func:`~jointreg.training.run_folder.prepare_run_folder`), e.g. ``--resume`` with
            a recipe that differs from its checkpoint's.
    """
    if stop_after is not None and (isinstance(stop_after, bool) or stop_after < 0):
        raise ConfigError(f"--stop-after: must be a number of steps >= 0, got {stop_after!r}")
    ctx, device = start(recipe.device)
    finished = False
    try:
        check_batch_sizes(recipe, ctx)
        paths = run_paths(recipe, run_dir)
        with ExitStack() as folder:
            from_checkpoint = _open_folder(folder, recipe, paths, ctx, resume=resume, overwrite=overwrite)
            summary = _train_in(recipe, paths, ctx, device, from_checkpoint, stop_after, progress, warm_start)
        finished = True
        return summary
    finally:
        stop(ctx, finished=finished)


def _open_folder(folder: ExitStack, recipe: Recipe, paths: RunPaths, ctx: Distributed, *, resume: bool,
                 overwrite: bool) -> bool:
    """Rank 0 prepares (and locks) the run folder; the other ranks learn whether it resumes."""
    if not ctx.is_main:
        answer = ctx.broadcast(None)
        if "error" in answer:
            raise JointregError(f"rank 0 could not start the run: {answer['error']}")
        return answer["from_checkpoint"]
    try:
        from_checkpoint = folder.enter_context(open_run_folder(recipe, paths, resume=resume, overwrite=overwrite))
    except BaseException as exc:
        ctx.broadcast({"error": str(exc)})
        raise
    ctx.broadcast({"from_checkpoint": from_checkpoint})
    return from_checkpoint


def _train_in(recipe: Recipe, paths: RunPaths, ctx: Distributed, device: torch.device, from_checkpoint: bool,
              stop_after: int | None, progress: bool | None, warm_start: str | Path | None = None) -> dict[str, Any]:
    show_progress = (recipe.logging.progress if progress is None else progress) and ctx.is_main
    seed_everything(recipe.seed)
    set_threads(recipe.threads)
    data = load_training_data(recipe, progress=show_progress)
    nets = build_networks(recipe, data, device)
    precision = resolve_precision(recipe.precision, device)
    payload = load_checkpoint(paths.last) if from_checkpoint else None
    started = None if payload is None else payload["state"].get("precision")
    if started is not None and started != precision:
        # precision: auto decided otherwise on this machine; the run goes on as it began, so
        # that it ends with the weights of an uninterrupted run.
        log.warning("%s: resuming in %s, the precision the run started in (precision: %s gives %s here)",
                    paths.root, started, recipe.precision, precision)
        precision = started
    for role in nets.roles:
        if role.trains:
            if use_channels_last(role.net, precision):  # before DDP sees the weights
                log.info("%s: channels-last weights (mixed precision)", role.name)
            role.trainer = ctx.wrap(role.net, device, unused_parameters=role.name == REGISTRATION) if ctx.active else None
            if precision != "float32":
                role.precision = MixedPrecision(precision, device)
    plan = build_plan(recipe)
    total = total_steps(plan)
    state = TrainingState()
    fingerprint = rng_fingerprint()
    if payload is not None:
        state = restore_payload(nets, payload)
    state.precision = precision
    logger = RunLogger(recipe, paths, state.step, enabled=ctx.is_main)
    if warm_start is not None and not from_checkpoint:
        apply_warm_start(Path(warm_start), nets, state)
    run = Run(recipe, paths, data, nets, plan, logger, device, show_progress, ctx, fingerprint)
    if from_checkpoint:  # after the logger exists, so that train.log says where the run resumed
        log.info("resumed %s at step %d of %d", paths.root, state.step, total)
    if recipe.precision == "auto":
        log.info("precision: auto → %s on %s", precision, device)
    try:
        state = run_plan(run, state, stop_after, saved=from_checkpoint)
        if state.step < total and not state.stopped_early:
            return {"status": "stopped", "step": state.step, "total_steps": total, "run": str(paths.root)}
        if not ctx.is_main:  # rank 0 exports and evaluates
            return {"status": "finished", "rank": ctx.rank, "steps": state.step, "run": str(paths.root)}
        summary = finish_run(recipe, paths, data, nets, state, device, show_progress)
        run.logger.evaluation(summary.get("evaluation"), state.step)  # test/<metric>/<class>
        return summary
    finally:
        run.logger.close()


def run_plan(run: Run, state: TrainingState, stop_after: int | None = None, *, saved: bool = False) -> TrainingState:
    """Walk the plan from ``state.step`` (to the end, or to ``stop_after`` steps).

    Args:
        saved: ``state`` is what ``checkpoints/last`` holds already (a resumed run).
    """
    from tqdm.auto import tqdm

    recipe, data, nets, ctx = run.recipe, run.data, run.nets, run.distributed
    main = ctx.is_main
    total, ends, warmups = total_steps(run.plan), round_ends(run.plan), warmup_ends(run.plan)
    registration_warmup = warmup_length(recipe)
    every = recipe.schedule.checkpoint_steps
    saved_step = state.step if saved else None
    inputs = step_inputs(recipe, data, nets, run.device, run.plan, ctx.share)
    sampler, groups, objective, batches = inputs.sampler, inputs.groups, inputs.objective, inputs.batches
    last_terms: dict[str, float] = {}
    started = time.perf_counter() - state.elapsed
    bar = tqdm(total=total, initial=state.step, desc=recipe.name, disable=None if run.show_progress else True,
               unit="step", dynamic_ncols=True)
    try:
        while state.step < total:
            if stop_after is not None and state.step >= stop_after:
                break
            g = state.step
            phase = locate(run.plan, g)
            rng = np.random.default_rng([recipe.seed, g])
            ctx.reseed(recipe.seed, g)
            seg_warm = nets.segmentor is not None and state.segmentation_steps >= recipe.schedule.segmentation_warmup
            role = nets.role(phase.network)
            if phase.network == REGISTRATION:
                pairs = ctx.share(sampler.sample(recipe.registration.batch_size, rng))
                batch = inputs.batch(pairs)
                anatomy = None
                if recipe.volumes.enabled and seg_warm and recipe.registration.anatomy_weight > 0:
                    anatomy = groups.anatomy(nets.segmentor, pairs, state.segmentation_steps)
                terms = registration_step(role.train_net, role.optimizer, batch, objective,
                                          segmentor=nets.segmentor if seg_warm else None, step=g, distributed=ctx,
                                          precision=role.precision, anatomy=anatomy)
                state.registration_steps += 1
                if main and recipe.logging.image_every and g % recipe.logging.image_every == 0:
                    log_registration_panel(run.logger, role.net, batch, num_classes=data.num_classes,
                                           ignore_index=data.ignore_index, step=g)
            else:
                cfg = recipe.segmentation
                drawn = batches.get(g)  # annotated slices drawn first from the step's generator
                rng, real = drawn.rng, (drawn.images, drawn.labels)
                warped = propagated = None
                if groups is not None:
                    groups.refresh(nets.registration, state.registration_steps)
                    warped, propagated = groups.draw(nets.registration, max(1, cfg.batch_size // 2), rng,
                                                     segmentor=nets.segmentor if seg_warm else None, share=ctx.share)
                terms = segmentation_step(role.train_net, role.optimizer, cfg, ignore_index=data.ignore_index,
                                          real=real, warped=warped, propagated=propagated, step=g, distributed=ctx,
                                          precision=role.precision)
                state.segmentation_steps += 1
            role.scheduler.step()
            state.step += 1
            terms = _log_step(run, phase.network, terms, g, total, role.optimizer.param_groups[0]["lr"])
            last_terms = terms
            bar.set_postfix_str(f"{phase.network[:3]} {terms.get('total', 0.0):.4f}", refresh=False)
            bar.update(1)
            state.elapsed = time.perf_counter() - started
            if main and state.step == registration_warmup and phase.network == REGISTRATION:
                save_warmup(run.paths.last.parent / WARMUP_FOLDER, recipe, role, state,
                            rng_unchanged=rng_fingerprint() == run.fingerprint)
            if state.step in ends:
                if main and end_of_round(recipe, run.paths, data, nets, state, run.logger,
                                         ends[state.step], state.step == total):
                    saved_step = state.step
                _share_selection(state, ctx)  # rank 0 validated: the others take its outcome
                ctx.check_same_weights({role.name: role.net for role in nets.roles})
            if saved_step != state.step and (state.step in warmups or (every and state.step % every == 0)):
                if main:
                    save_last(recipe, run.paths, nets, state)
                saved_step = state.step
            if state.stopped_early:
                break
    finally:
        bar.close()
        if batches is not None:
            batches.close()
    state.elapsed = time.perf_counter() - started
    if saved_step != state.step and main:  # stopped by stop_after between checkpoints
        save_last(recipe, run.paths, nets, state)
    log.info("last losses: %s", json.dumps({k: round(v, 5) for k, v in last_terms.items()}))
    return state


@dataclass
class StepInputs:
    """What the steps draw from: registration pairs and objective, the segmentor's
    registration-derived groups and its annotated-slice batches (``None`` where a network is
    absent)."""

    sampler: PairSampler | VolumePairs | None
    groups: SegmentationGroups | VolumeGroups | None
    objective: RegistrationObjective | None
    batches: RealBatches | None
    batch: Callable[[list], RegistrationBatch] | None = None  # the drawn pairs as tensors


def step_inputs(recipe: Recipe, data: TrainingData, nets: Networks, device: torch.device, plan: list[Phase],
                share) -> StepInputs:
    """The step inputs of a run (also built by benchmarks/train_steps.py). ``share`` keeps this
    process's part of each batch (:meth:`~jointreg.training.distributed.Distributed.share`);
    call ``batches.close()`` when done.

    Raises:
        InputError: the training volumes cannot form the pairs the recipe asks for.
    """
    sampler = groups = objective = make_batch = None
    if nets.registration is not None and recipe.volumes.enabled:
        sampler, groups, make_batch = _volume_inputs(recipe, data, device)
    elif nets.registration is not None:
        pairs = recipe.pairs
        make_batch = partial(registration_batch, data.train, ignore_index=data.ignore_index, device=device)
        try:
            sampler = PairSampler(
                data.train, radius=pairs.radius, cross_volume=pairs.cross_volume,
                unannotated_moving=pairs.unannotated_moving, annotated_fixed=pairs.annotated_fixed,
            )
            groups = SegmentationGroups(
                data.train, pairs=pairs, propagation=recipe.propagation,
                warped_weight=recipe.segmentation.warped_weight, propagated_weight=recipe.segmentation.propagated_weight,
                num_classes=data.num_classes, ignore_index=data.ignore_index, device=device,
            )
        except ValueError as exc:
            raise InputError(data.dataset.root, str(exc)) from None
    if nets.registration is not None:
        objective = RegistrationObjective(
            recipe.registration, num_classes=data.num_classes, ignore_index=data.ignore_index,
            penalty_weights=type(nets.registration).penalty_weights,
        )
    augment = None
    if nets.segmentor is not None and recipe.segmentation.augmentation.enabled:
        from jointreg.training.augment import SliceAugmenter

        augment = SliceAugmenter(recipe.segmentation.augmentation)
    batches = None
    if nets.segmentor is not None:
        batches = RealBatches(data.train, seed=recipe.seed, batch_size=recipe.segmentation.batch_size, share=share,
                              augment=augment, device=device, plan=plan, ahead=_prefetch(device))
    return StepInputs(sampler, groups, objective, batches, make_batch)


def _volume_inputs(recipe: Recipe, data: TrainingData, device: torch.device):
    """3D mode's pair sampler, segmentation groups and pair batches (:mod:`~jointreg.training.volume_mode`)."""
    from jointreg.training.volume_mode import BoxedVolumes, VolumeGroups, VolumePairs, training_box

    try:
        sampler = VolumePairs(data.train, unannotated_moving=recipe.pairs.unannotated_moving,
                              annotated_fixed=recipe.pairs.annotated_fixed)
    except ValueError as exc:
        raise InputError(data.dataset.root, str(exc)) from None
    boxed = BoxedVolumes(data.train, training_box(recipe, data.train), ignore_index=data.ignore_index)
    groups = VolumeGroups(data.train, boxed, warped_weight=recipe.segmentation.warped_weight,
                          propagated_weight=recipe.segmentation.propagated_weight, num_classes=data.num_classes,
                          ignore_index=data.ignore_index, device=device)
    if not groups.targets:
        log.warning("%s: every training volume is annotated on every slice; there is nothing to propagate onto "
                    "(the registration learns from the atlas pairs, the segmentor from the atlases alone)",
                    data.dataset.root)
    return sampler, groups, lambda pairs: boxed.batch(pairs, device)


def _prefetch(device: torch.device) -> bool:
    """Whether the next annotated-slice batch is built while the device trains (on CUDA)."""
    return device.type == "cuda"


_SELECTION = ("best_score", "best_step", "validations_without_improvement", "stopped_early", "history")


def _share_selection(state: TrainingState, ctx: Distributed) -> None:
    """Rank 0's validation outcome (best weights, patience, early stop) on every rank."""
    if ctx.active:
        for key, value in ctx.broadcast({k: getattr(state, k) for k in _SELECTION}).items():
            setattr(state, key, value)


def _log_step(run: Run, prefix: str, terms: dict[str, float], step: int, total: int, lr: float) -> dict[str, float]:
    """Log a step's loss terms every ``logging.log_every`` steps (averaged over the ranks of a
    multi-process run first); returns the terms as logged."""
    every = run.recipe.logging.log_every
    if every and step % every == 0:
        terms = run.distributed.mean(terms)
        run.logger.scalars(f"{prefix}/loss", terms, step)
        run.logger.scalars(prefix, {"lr": lr}, step)
        log.info("step %d/%d %s lr %.2e %s", step, total, prefix, lr, " ".join(f"{k} {v:.4f}" for k, v in terms.items()))
    return terms
