"""The alternating registration/segmentation loop (the orchestrator).

The run is a fixed *plan* of phases: registration warm-up, segmentation warm-up, then
``rounds`` × (K_reg registration steps, K_seg segmentation steps); networks that the recipe
disables simply have no phases. A single global step counter walks the plan. Every random draw
of step ``g`` comes from ``numpy.random.default_rng([seed, g])`` (pairs, slices, augmentation
seeds), and torch's global RNG (dropout) is saved in checkpoints, so stopping after any step
and resuming reproduces the uninterrupted run exactly.

After each round: validation (every ``validate_every`` rounds, keeping the best weights),
a checkpoint (every ``checkpoint_every`` rounds), early stopping on ``patience``. At the end:
the selected weights are exported as model folders, and the segmentor (or the registration
network) is evaluated on the dataset's test split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointreg.data.dataset import Dataset, DatasetSpec
from jointreg.data.pairs import PairSampler, labelled_slices
from jointreg.data.slices import SlicedVolume, SliceSpec, load_sliced_dataset
from jointreg.errors import ConfigError, InputError, JointregError
from jointreg.training.batches import labelled_batch, registration_batch
from jointreg.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from jointreg.training.config import Recipe, dump_recipe, recipe_from_dict
from jointreg.training.steps import RegistrationLoss, propagate, registration_step, segmentation_step
from jointreg.utils.atomic import write_json, write_text
from jointreg.utils.device import resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)

REGISTRATION = "registration"
SEGMENTATION = "segmentation"


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    network: str  # "registration" | "segmentation"
    steps: int
    round: int  # -1 for warm-up


def build_plan(recipe: Recipe) -> list[Phase]:
    """The ordered phases of a run (empty phases dropped)."""
    s = recipe.schedule
    reg, seg = recipe.registration.enabled, recipe.segmentation.enabled
    plan = []
    if reg and s.registration_warmup:
        plan.append(Phase(REGISTRATION, s.registration_warmup, -1))
    if seg and s.segmentation_warmup:
        plan.append(Phase(SEGMENTATION, s.segmentation_warmup, -1))
    for r in range(s.rounds):
        if reg and s.registration_steps:
            plan.append(Phase(REGISTRATION, s.registration_steps, r))
        if seg and s.segmentation_steps:
            plan.append(Phase(SEGMENTATION, s.segmentation_steps, r))
    return plan


def _round_ends(plan: list[Phase]) -> dict[int, int]:
    """Global step (exclusive end) → round index, for the last phase of each round."""
    ends, position = {}, 0
    for i, phase in enumerate(plan):
        position += phase.steps
        last_of_round = i + 1 == len(plan) or plan[i + 1].round != phase.round
        if last_of_round:
            ends[position] = phase.round
    return ends


def _locate(plan: list[Phase], step: int) -> Phase:
    position = 0
    for phase in plan:
        if step < position + phase.steps:
            return phase
        position += phase.steps
    raise IndexError(step)


# --------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def run_folder(recipe: Recipe, run_dir: str | Path | None = None) -> RunPaths:
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

    path = RunPaths(Path(run_dir)).recipe
    if not path.is_file():
        raise InputError(run_dir, "not a jointreg run folder (recipe.yaml is missing)")
    try:
        return recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError:
        raise InputError(path, "invalid YAML") from None


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """The sliced training/validation volumes and the label space the networks use.

    Attributes:
        labels: class name → id of the networks (background 0, consecutive; a subset of the
            dataset's classes when the recipe selects some).
        label_lut: maps dataset label ids (ignore included) to network ids.
    """

    dataset: Dataset
    spec: DatasetSpec
    slice_spec: SliceSpec
    train: list[SlicedVolume]
    validation: list[SlicedVolume]
    labels: dict[str, int]
    ignore_index: int
    label_lut: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {name: i for name, i in self.labels.items() if i != 0}

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Dataset label ids → network label ids."""
        return self.label_lut[labels]


def class_subset(spec: DatasetSpec, names: tuple[str, ...], source: Path) -> tuple[dict[str, int], np.ndarray, int]:
    """Network labels, a dataset-id → network-id lookup table, and the network's ignore id.

    With ``names`` empty the dataset's classes are kept as they are.
    """
    classes = spec.class_labels
    unknown = [n for n in names if n not in classes or classes[n] == 0]
    if unknown:
        valid = ", ".join(n for n, i in classes.items() if i != 0)
        raise ConfigError(f"data.classes: {unknown[0]!r} is not a foreground class of {source} (classes: {valid})")
    kept = [n for n, i in classes.items() if i != 0 and (not names or n in names)]
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(kept)}}
    background_name = next(n for n, i in classes.items() if i == 0)
    if background_name != "background":
        labels = {background_name: 0, **{n: v for n, v in labels.items() if n != "background"}}
    ignore_index = len(labels)
    top = max([*spec.labels.values(), 0])
    lut = np.zeros(top + 1, np.int16)
    for name, i in classes.items():
        lut[i] = labels.get(name, 0)
    if spec.ignore_label is not None:
        lut[spec.ignore_label] = ignore_index
    return labels, lut, ignore_index


def check_label_ids(spec: DatasetSpec, source: Path) -> None:
    ids = sorted(spec.class_labels.values())
    if ids != list(range(len(ids))):
        raise InputError(source, f"class ids must be consecutive 0..{len(ids) - 1}, found {ids}")


def slice_spec_for(recipe: Recipe) -> SliceSpec:
    d = recipe.data
    return SliceSpec(
        axis=d.axis, size=tuple(d.size), normalization=d.normalization,
        ct_window=tuple(d.ct_window), mr_percentiles=tuple(d.mr_percentiles),
    )


def load_training_data(recipe: Recipe, *, progress: bool = True) -> TrainingData:
    """Open the recipe's dataset, slice it, split off validation cases, and check it is usable.

    Raises:
        InputError / ConfigError: no dataset, no annotated slice, class-count mismatches,
            missing full labels for ``labels: full``, unknown validation cases.
    """
    if not recipe.data.dataset:
        raise ConfigError("data.dataset: no dataset given (set it in the recipe or with --set data.dataset=PATH)")
    dataset = Dataset.open(recipe.data.dataset)
    spec = dataset.spec
    check_label_ids(spec, dataset.root / "dataset.json")
    labels, lut, ignore_index = class_subset(spec, tuple(recipe.data.classes), dataset.root / "dataset.json")
    num_classes = len(labels)
    if num_classes < 2:
        raise InputError(dataset.root / "dataset.json", "needs at least one foreground class")
    classes_arg = recipe.segmentation.arguments.get("classes")
    if classes_arg is not None and int(classes_arg) != num_classes:
        raise ConfigError(
            f"segmentation.arguments.classes = {classes_arg} disagrees with {dataset.root / 'dataset.json'}, "
            f"which declares {num_classes} classes ({', '.join(labels)})"
        )
    cases = dataset.cases("Tr")
    if not cases:
        raise InputError(dataset.images_dir("Tr"), "no training cases")
    missing_labels = [c for c in cases if not dataset.label_path(c).exists()]
    if missing_labels:
        raise InputError(dataset.label_path(missing_labels[0]), "label file missing (run jointreg validate)")
    validation_cases = _validation_cases(recipe, cases)
    full = recipe.data.labels == "full"
    has_full = dataset.has_full_labels("Tr")
    if full and not has_full and spec.ignore_label is not None:
        raise InputError(dataset.root, "data.labels is 'full' but the dataset has no labelsTr_full/ folder")
    slice_spec = slice_spec_for(recipe)
    train_cases = [c for c in cases if c not in validation_cases]
    if not train_cases:
        raise ConfigError("data: every training case is used for validation")
    train = load_sliced_dataset(dataset, slice_spec, cases=train_cases, full_labels=full and has_full, progress=progress)
    if full and has_full:
        # A case without its own full-label file keeps its (sparse) labels.
        train = [
            _restatus(dataclasses.replace(v, labels=v.full_labels, full_labels=None), ignore_index)
            if v.full_labels is not None else v
            for v in train
        ]
    validation = []
    if validation_cases:
        want_full = recipe.data.validation_labels == "full" and has_full
        validation = load_sliced_dataset(dataset, slice_spec, cases=validation_cases, full_labels=want_full, progress=progress)
    if not any(labelled_slices(v) for v in train):
        raise InputError(dataset.root / "labelsTr", "no annotated slice in any training case (nothing to learn from)")
    if not np.array_equal(lut, np.arange(len(lut))):
        train = [_remap_volume(v, lut, ignore_index) for v in train]
        validation = [_remap_volume(v, lut, ignore_index) for v in validation]
    return TrainingData(dataset, spec, slice_spec, train, validation, labels, ignore_index, lut)


def _remap_volume(volume: SlicedVolume, lut: np.ndarray, ignore_index: int) -> SlicedVolume:
    labels = None if volume.labels is None else lut[volume.labels]
    full = None if volume.full_labels is None else lut[volume.full_labels]
    volume = dataclasses.replace(volume, labels=labels, full_labels=full)
    return _restatus(volume, ignore_index) if labels is not None else volume


def _restatus(volume: SlicedVolume, ignore_index: int) -> SlicedVolume:
    from jointreg.data.slices import slice_status

    status = tuple(slice_status(volume.labels[i], ignore_index) for i in range(volume.labels.shape[0]))
    return dataclasses.replace(volume, status=status)


def _validation_cases(recipe: Recipe, cases: list[str]) -> list[str]:
    d = recipe.data
    if d.validation_cases:
        unknown = [c for c in d.validation_cases if c not in cases]
        if unknown:
            raise ConfigError(f"data.validation_cases: unknown case(s) {unknown}; cases are e.g. {cases[:3]}")
        return list(d.validation_cases)
    if d.validation_count:
        if d.validation_count >= len(cases):
            raise ConfigError(f"data.validation_count: {d.validation_count} leaves no training case (of {len(cases)})")
        rng = np.random.default_rng([recipe.seed, 7])
        return sorted(rng.choice(cases, size=d.validation_count, replace=False).tolist())
    return []


# --------------------------------------------------------------------------------------------
# Networks and optimisers
# --------------------------------------------------------------------------------------------
@dataclass
class Networks:
    registration: torch.nn.Module | None
    segmentor: torch.nn.Module | None
    reg_optimizer: torch.optim.Optimizer | None = None
    seg_optimizer: torch.optim.Optimizer | None = None
    reg_scheduler: Any = None
    seg_scheduler: Any = None


def _lr_lambda(kind: str, total: int):
    if kind == "constant" or total <= 0:
        return lambda step: 1.0
    # Cosine decay to 5 % of the base rate over the network's total steps.
    return lambda step: 0.05 + 0.95 * 0.5 * (1.0 + np.cos(np.pi * min(step, total) / total))


def build_networks(recipe: Recipe, data: TrainingData, device: torch.device) -> Networks:
    reg = seg = None
    plan = build_plan(recipe)
    if recipe.registration.enabled:
        from jointreg.nets.registration import create_registration_net

        args = {"spatial_dims": 2, "in_channels": 1, **recipe.registration.arguments}
        reg = create_registration_net(recipe.registration.architecture, **args).to(device)
    if recipe.segmentation.enabled:
        from jointreg.nets.segmentation import create_segmentor

        args = {"in_channels": 1, **recipe.segmentation.arguments, "classes": data.num_classes}
        seg = create_segmentor(recipe.segmentation.architecture, **args).to(device)
    nets = Networks(reg, seg)
    if reg is not None:
        cfg = recipe.registration
        nets.reg_optimizer = torch.optim.Adam(reg.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = sum(p.steps for p in plan if p.network == REGISTRATION)
        nets.reg_scheduler = torch.optim.lr_scheduler.LambdaLR(nets.reg_optimizer, _lr_lambda(recipe.schedule.lr_schedule, total))
    if seg is not None:
        cfg = recipe.segmentation
        nets.seg_optimizer = torch.optim.AdamW(seg.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = sum(p.steps for p in plan if p.network == SEGMENTATION)
        nets.seg_scheduler = torch.optim.lr_scheduler.LambdaLR(nets.seg_optimizer, _lr_lambda(recipe.schedule.lr_schedule, total))
    return nets


# --------------------------------------------------------------------------------------------
# State and checkpoints
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingState:
    step: int = 0
    registration_steps: int = 0
    segmentation_steps: int = 0
    best_score: float | None = None
    best_step: int | None = None
    validations_without_improvement: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def _checkpoint_state(nets: Networks, state: TrainingState) -> dict[str, Any]:
    payload: dict[str, Any] = {"state": dataclasses.asdict(state), "rng": rng_state()}
    for name, net, opt, sched in (
        ("registration", nets.registration, nets.reg_optimizer, nets.reg_scheduler),
        ("segmentor", nets.segmentor, nets.seg_optimizer, nets.seg_scheduler),
    ):
        if net is not None:
            payload[name] = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    return payload


def _restore(nets: Networks, payload: dict[str, Any]) -> TrainingState:
    for name, net, opt, sched in (
        ("registration", nets.registration, nets.reg_optimizer, nets.reg_scheduler),
        ("segmentor", nets.segmentor, nets.seg_optimizer, nets.seg_scheduler),
    ):
        if net is not None:
            net.load_state_dict(payload[name]["model"])
            opt.load_state_dict(payload[name]["optimizer"])
            sched.load_state_dict(payload[name]["scheduler"])
    set_rng_state(payload["rng"])
    return TrainingState(**payload["state"])


def _save_best(paths: RunPaths, nets: Networks) -> None:
    payload = {}
    if nets.registration is not None:
        payload["registration"] = nets.registration.state_dict()
    if nets.segmentor is not None:
        payload["segmentor"] = nets.segmentor.state_dict()
    save_checkpoint(paths.best, payload)


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------
class _Logger:
    """TensorBoard scalars/images and the run's log file."""

    def __init__(self, recipe: Recipe, paths: RunPaths, start_step: int):
        self.recipe = recipe
        self.writer = None
        if recipe.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(paths.tensorboard), purge_step=start_step or None)
        self.handler = logging.FileHandler(paths.log, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.handler.setLevel(logging.INFO)
        root = logging.getLogger("jointreg")
        root.addHandler(self.handler)
        self._old_level = root.level
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, np.clip(np.nan_to_num(image), 0, 1), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        root = logging.getLogger("jointreg")
        root.removeHandler(self.handler)
        root.setLevel(self._old_level)
        self.handler.close()


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def _prepare_run_folder(recipe: Recipe, paths: RunPaths, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not paths.recipe.is_file():
            raise InputError(paths.root, "cannot resume: not a jointreg run folder (recipe.yaml is missing)")
        stored = read_run_recipe(paths.root)
        diff = recipe_differences(stored, recipe)
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
        import shutil

        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text(paths.recipe, dump_recipe(recipe))


def _sample_labelled(volumes: list[SlicedVolume], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    slots = [(v, s) for v, vol in enumerate(volumes) for s in labelled_slices(vol)]
    return [slots[i] for i in rng.integers(len(slots), size=n)]


def train(
    recipe: Recipe,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train the recipe's networks in a run folder; see the module docstring for the plan.

    Args:
        recipe: the experiment.
        run_dir: the run folder (default ``recipe.output / recipe.name``).
        resume: continue the run in ``run_dir`` from its last checkpoint.
        overwrite: replace an existing run folder.
        stop_after: stop (with a checkpoint) once this many global steps are done; the run can
            be resumed later. Used to time-box runs and by the resume tests.
        progress: show a progress bar (default: the recipe's logging.progress).

    Returns:
        The run summary (also written to ``summary.json`` when the run completes).
    """
    paths = run_folder(recipe, run_dir)
    _prepare_run_folder(recipe, paths, resume=resume, overwrite=overwrite)
    show_progress = recipe.logging.progress if progress is None else progress
    seed_everything(recipe.seed)
    set_threads(recipe.threads)
    device = resolve_device(recipe.device)
    data = load_training_data(recipe, progress=show_progress)
    nets = build_networks(recipe, data, device)
    plan = build_plan(recipe)
    total = sum(p.steps for p in plan)
    state = TrainingState()
    if resume:
        state = _restore(nets, load_checkpoint(paths.last))
        log.info("resumed %s at step %d of %d", paths.root, state.step, total)
    logger = _Logger(recipe, paths, state.step)
    try:
        state = _run_plan(recipe, paths, data, nets, plan, state, logger, device, stop_after, show_progress)
        if state.step < total and not state.stopped_early:
            return {"status": "stopped", "step": state.step, "total_steps": total, "run": str(paths.root)}
        return _finish(recipe, paths, data, nets, state, device, show_progress)
    finally:
        logger.close()


def _run_plan(recipe, paths, data, nets, plan, state, logger, device, stop_after, show_progress) -> TrainingState:
    from tqdm.auto import tqdm

    total = sum(p.steps for p in plan)
    round_ends = _round_ends(plan)
    sampler = None
    if nets.registration is not None:
        pairs_cfg = recipe.pairs
        try:
            sampler = PairSampler(
                data.train, radius=pairs_cfg.radius, cross_volume=pairs_cfg.cross_volume,
                unannotated_moving=pairs_cfg.unannotated_moving, annotated_fixed=pairs_cfg.annotated_fixed,
            )
            # Segmentation steps warp and propagate within volumes, from annotated slices only.
            # Cross-volume pairs are valid for the warped group (image and label move together).
            warp_sampler = PairSampler(data.train, radius=pairs_cfg.radius, cross_volume=pairs_cfg.cross_volume)
            propagation_radius = recipe.segmentation.propagation_radius or pairs_cfg.radius
            propagation_sampler = (
                warp_sampler if propagation_radius == pairs_cfg.radius and not pairs_cfg.cross_volume
                else PairSampler(data.train, radius=propagation_radius)
            )
        except ValueError as exc:
            raise InputError(data.dataset.root, str(exc)) from None
        reg_loss = RegistrationLoss(recipe.registration, num_classes=data.num_classes, ignore_index=data.ignore_index)
    augment = None
    if nets.segmentor is not None and recipe.segmentation.augmentation.enabled:
        from jointreg.training.augment import SliceAugmenter

        augment = SliceAugmenter(recipe.segmentation.augmentation)
    seg_warm_after = recipe.schedule.segmentation_warmup
    last_terms: dict[str, float] = {}
    started = time.perf_counter() - state.elapsed
    bar = tqdm(total=total, initial=state.step, desc=recipe.name, disable=None if show_progress else True, unit="step", dynamic_ncols=True)
    try:
        while state.step < total:
            if stop_after is not None and state.step >= stop_after:
                break
            g = state.step
            phase = _locate(plan, g)
            rng = np.random.default_rng([recipe.seed, g])
            seg_warm = nets.segmentor is not None and state.segmentation_steps >= seg_warm_after
            if phase.network == REGISTRATION:
                pairs = sampler.sample(recipe.registration.batch_size, rng)
                batch = registration_batch(data.train, pairs, ignore_index=data.ignore_index, device=device)
                terms = registration_step(
                    nets.registration, nets.reg_optimizer, batch, reg_loss,
                    segmentor=nets.segmentor if seg_warm else None, step=g,
                )
                nets.reg_scheduler.step()
                state.registration_steps += 1
                prefix = "registration"
                if recipe.logging.image_every and g % recipe.logging.image_every == 0:
                    _log_registration_panel(logger, nets.registration, batch, data, g)
            else:
                cfg = recipe.segmentation
                slots = _sample_labelled(data.train, cfg.batch_size, rng)
                seeds = rng.integers(0, 2**31 - 1, size=len(slots)).tolist()
                real = labelled_batch(data.train, slots, augment=augment, seeds=seeds, device=device)
                warped = propagated = None
                if nets.registration is not None:
                    derive = dict(
                        num_classes=data.num_classes, ignore_index=data.ignore_index, trust=tuple(cfg.trust),
                        trust_decay=cfg.trust_decay, trust_residual=cfg.trust_residual,
                        foreground_within=cfg.foreground_within, absent_residual=cfg.absent_residual,
                        background_margin=cfg.background_margin, appearance_percentiles=cfg.appearance_percentiles,
                        segmentor=nets.segmentor if seg_warm else None,
                    )
                    n_pairs = max(1, cfg.batch_size // 2)
                    shared = cfg.propagated_weight > 0 and propagation_sampler is warp_sampler
                    if cfg.warped_weight > 0:
                        pairs = warp_sampler.sample(n_pairs, rng)
                        batch = registration_batch(data.train, pairs, ignore_index=data.ignore_index, device=device)
                        # The warped group uses only the warped images and labels; the trusted
                        # targets are derived only when the same pairs also feed the propagated group.
                        warped = propagate(
                            nets.registration, batch,
                            **(derive if shared else dict(num_classes=data.num_classes, ignore_index=data.ignore_index, trust=())),
                        )
                    if cfg.propagated_weight > 0:
                        if warped is not None and shared:
                            propagated = warped
                        else:
                            pairs = propagation_sampler.sample(n_pairs, rng)
                            batch = registration_batch(data.train, pairs, ignore_index=data.ignore_index, device=device)
                            propagated = propagate(nets.registration, batch, **derive)
                terms = segmentation_step(
                    nets.segmentor, nets.seg_optimizer, cfg, ignore_index=data.ignore_index,
                    real=real, warped=warped, propagated=propagated, step=g,
                )
                nets.seg_scheduler.step()
                state.segmentation_steps += 1
                prefix = "segmentation"
            state.step += 1
            last_terms = terms
            if recipe.logging.log_every and g % recipe.logging.log_every == 0:
                logger.scalars(f"{prefix}/loss", terms, g)
                lr = (nets.reg_optimizer if prefix == "registration" else nets.seg_optimizer).param_groups[0]["lr"]
                logger.scalars(prefix, {"lr": lr}, g)
                log.info("step %d/%d %s lr %.2e %s", g, total, prefix, lr,
                         " ".join(f"{k} {v:.4f}" for k, v in terms.items()))
            bar.set_postfix_str(f"{prefix[:3]} {terms.get('total', 0.0):.4f}", refresh=False)
            bar.update(1)
            if state.step in round_ends:
                round_index = round_ends[state.step]
                state.elapsed = time.perf_counter() - started
                _end_of_round(recipe, paths, data, nets, state, logger, round_index, state.step == total)
                if state.stopped_early:
                    break
    finally:
        bar.close()
    state.elapsed = time.perf_counter() - started
    if state.step < total or state.stopped_early:
        save_checkpoint(paths.last, _checkpoint_state(nets, state))
    log.info("last losses: %s", json.dumps({k: round(v, 5) for k, v in last_terms.items()}))
    return state


def _log_registration_panel(logger: _Logger, net, batch, data: TrainingData, step: int) -> None:
    from jointreg.spatial.warp import warp_labels
    from jointreg.training.panels import registration_panel

    if logger.writer is None:
        return
    with torch.no_grad():
        net.eval()
        out = net(batch.moving[:1], batch.fixed[:1])
        net.train()
        warped_label = warp_labels(batch.moving_label[:1], out.flow, data.num_classes, ignore_index=data.ignore_index)
    panel = registration_panel(
        batch.fixed[:1], batch.moving[:1], out.warped, out.flow, warped_label=warped_label, ignore_index=data.ignore_index
    )
    logger.image("registration/fixed|moving|warped|diff|grid|labels", panel, step)


def _end_of_round(recipe, paths, data, nets, state, logger, round_index: int, final: bool) -> None:
    s = recipe.schedule
    is_warmup = round_index < 0
    if data.validation and not is_warmup and ((round_index + 1) % s.validate_every == 0 or final):
        scores = _validate(recipe, data, nets)
        logger.scalars("validation", scores, state.step)
        state.history.append({"step": state.step, "round": round_index, **scores})
        score = scores.get("dice", scores.get("label_dice", scores.get("ncc")))
        log.info("round %d validation: %s", round_index, json.dumps({k: round(v, 4) for k, v in scores.items()}))
        if score is not None and (state.best_score is None or score > state.best_score):
            state.best_score, state.best_step = float(score), state.step
            state.validations_without_improvement = 0
            _save_best(paths, nets)
        else:
            state.validations_without_improvement += 1
            if s.patience is not None and state.validations_without_improvement >= s.patience:
                log.info("early stopping at step %d (no improvement in %d validations)", state.step, s.patience)
                state.stopped_early = True
    if not is_warmup and ((round_index + 1) % s.checkpoint_every == 0 or final or state.stopped_early):
        save_checkpoint(paths.last, _checkpoint_state(nets, state))


def _validate(recipe: Recipe, data: TrainingData, nets: Networks) -> dict[str, float]:
    from jointreg.training.validation import validate_registration, validate_segmentor

    scores: dict[str, float] = {}
    use_full = recipe.data.validation_labels == "full"
    if nets.segmentor is not None:
        scores.update(validate_segmentor(nets.segmentor, data.validation, num_classes=data.num_classes,
                                         ignore_index=data.ignore_index, use_full_labels=use_full))
    if nets.registration is not None:
        reg_scores = validate_registration(nets.registration, data.validation, radius=recipe.pairs.radius,
                                           num_classes=data.num_classes, ignore_index=data.ignore_index)
        scores.update({k if nets.segmentor is None else f"registration/{k}": v for k, v in reg_scores.items()})
    return scores


# --------------------------------------------------------------------------------------------
# End of run: selection, export, evaluation
# --------------------------------------------------------------------------------------------
def _finish(recipe, paths, data, nets, state, device, show_progress) -> dict[str, Any]:
    from jointreg.export.model_folder import save_model_folder

    if state.best_step is not None and paths.best.is_dir():
        best = load_checkpoint(paths.best)
        if nets.registration is not None:
            nets.registration.load_state_dict(best["registration"])
        if nets.segmentor is not None:
            nets.segmentor.load_state_dict(best["segmentor"])
        log.info("selected the weights of step %d (validation score %.4f)", state.best_step, state.best_score)
    preprocessing = data.slice_spec.to_dict()
    labels = data.labels
    extra = {"run": recipe.name, "recipe_mode": recipe.mode, "step": state.step}
    from jointreg.inference.segment import TRAINING_GEOMETRY, describe_training_geometry

    # What `jointreg segment` compares new inputs with (orientation, spacing): see docs/inference.md.
    extra[TRAINING_GEOMETRY] = describe_training_geometry(data.train)
    exported = {}
    if nets.registration is not None:
        exported["registration"] = str(save_model_folder(
            paths.export / "registration", nets.registration, kind="registration",
            architecture=recipe.registration.architecture, preprocessing=preprocessing, labels=labels,
            modality=data.spec.modality, extra={**extra, "pair_radius": recipe.pairs.radius},
        ))
    if nets.segmentor is not None:
        exported["segmentor"] = str(save_model_folder(
            paths.export / "segmentor", nets.segmentor, kind="segmentor",
            architecture=recipe.segmentation.architecture, preprocessing=preprocessing, labels=labels,
            modality=data.spec.modality, extra=extra,
        ))
    summary: dict[str, Any] = {
        "status": "finished",
        "run": str(paths.root),
        "name": recipe.name,
        "mode": recipe.mode,
        "steps": state.step,
        "registration_steps": state.registration_steps,
        "segmentation_steps": state.segmentation_steps,
        "stopped_early": state.stopped_early,
        "best_step": state.best_step,
        "best_validation": state.best_score,
        "train_seconds": round(state.elapsed, 1),
        "device": str(device),
        "exported": exported,
        "history": state.history,
    }
    if recipe.evaluation.enabled:
        summary["evaluation"] = evaluate_run_models(recipe, paths, data, nets, progress=show_progress)
    write_json(paths.summary, summary)
    return summary


def evaluate_run_models(recipe: Recipe, paths: RunPaths, data: TrainingData, nets: Networks, *, progress: bool) -> dict[str, Any]:
    """Evaluate the final networks on the recipe's evaluation split (source geometry, mm)."""
    split = recipe.evaluation.split
    ds = data.dataset
    cases = [c for c in ds.cases(split) if ds.label_path(c, split).exists()]
    if not cases:
        log.warning("no labelled %s cases to evaluate on", split)
        return {"cases": 0}
    result: dict[str, Any] = {"split": split, "cases": len(cases)}
    volumes = [_remap_volume(v, data.label_lut, data.ignore_index)
               for v in load_sliced_dataset(ds, data.slice_spec, split=split, cases=cases, progress=progress)]
    if nets.segmentor is not None:
        from jointreg.inference.evaluation import evaluate_segmentor_on_volumes

        result["segmentation"] = evaluate_segmentor_on_volumes(
            nets.segmentor, volumes, ds, split=split,
            predictions_dir=paths.predictions if recipe.evaluation.write_predictions else None,
            report_dir=paths.evaluation, labels=data.foreground_labels, label_lut=data.label_lut,
            progress=progress,
        )
    if nets.registration is not None:
        from jointreg.inference.evaluation import evaluate_registration_on_volumes

        result["registration"] = evaluate_registration_on_volumes(
            nets.registration, volumes, radius=recipe.pairs.radius, num_classes=data.num_classes,
            ignore_index=data.ignore_index, out_json=paths.evaluation / "registration.json",
        )
    return result
