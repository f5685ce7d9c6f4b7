"""Recipes: one YAML file per experiment, loaded into frozen dataclasses.

Every knob of a run is a field here; the resolved recipe is written into the run folder
(``recipe.yaml``) so a run can always be reproduced and resumed. Unknown keys and wrong types are
errors naming the key path. Paths in a recipe are relative to the current working directory.

The same recipe type covers every method of the comparison (README, "Training"; the
studies in ``recipes/study_*.yaml``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from jointreg.errors import ConfigError, InputError
from jointreg.inference.refine import REFINE_SMOOTHNESS
from jointreg.training.config_checks import _non_negative, _positive, check_network_arguments
from jointreg.training.config_volumes import VolumesConfig, check_volume_mode
from jointreg.training.recipe_migration import move_propagation_keys
from jointreg.utils.typed import apply_overrides, from_mapping, to_mapping


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how its volumes become 2D training slices.

    Attributes:
        dataset: canonical dataset folder (see ``jointreg prepare`` / ``jointreg sparsify``).
        axis: slicing axis; ``None`` = the through-plane axis (largest spacing).
        size: training size (H, W) in pixels; any size works (networks pad internally).
        normalization: ``auto`` picks CT windowing or MR percentile clipping from dataset.json.
        labels: ``sparse`` trains on ``labelsTr`` (few annotations, rest ``ignore``); ``full``
            trains on ``labelsTr_full`` (every slice annotated: the upper bound).
        validation_cases: training cases held out for validation/model selection.
        validation_count: or hold out this many cases (chosen with the seed).
        validation_labels: labels scored on validation cases; ``full`` uses ``labelsTr_full``
            when present (one or two fully annotated volumes kept for validation).
        classes: train on these classes only (names from dataset.json); the other structures
            become background. Empty: every class.
    """

    dataset: str = ""
    classes: tuple[str, ...] = ()
    axis: int | None = None
    size: tuple[int, int] = (128, 128)
    normalization: Literal["auto", "ct", "mr", "none"] = "auto"
    ct_window: tuple[float, float] = (-160.0, 240.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    labels: Literal["sparse", "full"] = "sparse"
    validation_cases: tuple[str, ...] = ()
    validation_count: int = 0
    validation_labels: Literal["sparse", "full"] = "full"

    def __post_init__(self):
        if min(self.size) < 8:
            raise ConfigError(f"data.size: {list(self.size)} is too small (at least 8 pixels)")
        if self.validation_count < 0:
            raise ConfigError("data.validation_count: must be >= 0")
        if self.validation_cases and self.validation_count:
            raise ConfigError("data: give validation_cases or validation_count, not both")


@dataclass(frozen=True)
class PairConfig:
    """How registration pairs are drawn.

    Attributes:
        radius: a fixed slice lies within this many slices of its (annotated) moving slice.
        cross_volume: probability that a pair's fixed slice comes from another volume (at the
            same relative position along the slicing axis, within the radius); used by
            registration steps and by the segmentor's warped group, never for propagated labels.
        unannotated_moving: probability that the moving slice is an unannotated slice (image
            terms only; gives the registration net more pairs to learn from).
        annotated_fixed: probability that a registration pair joins two annotated slices of
            different volumes, so that ``registration.label_weight`` supervises the alignment.
            Used for registration steps only; segmentation steps propagate within volumes.
    """

    radius: int = 6
    cross_volume: float = 0.0
    unannotated_moving: float = 0.0
    annotated_fixed: float = 0.0

    def __post_init__(self):
        if self.radius < 1:
            raise ConfigError("pairs.radius: must be >= 1")
        for name in ("cross_volume", "unannotated_moving", "annotated_fixed"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"pairs.{name}: must be a probability in [0, 1], got {value}")


@dataclass(frozen=True)
class RegistrationConfig:
    """The registration network and its loss (FMIRNet paper: MSE + β·(1 − SSIM) + α·smoothness).

    Attributes:
        anatomy_weight: Dice(warped moving label, segmentor(fixed)) once the segmentor is warm.
        label_weight: Dice(warped moving label, fixed label) for pairs whose fixed slice is annotated.
        penalties: weights of the network's named penalties (e.g. an affine network's pull
            towards the identity); unset ones keep the network's default weight.
    """

    enabled: bool = True
    architecture: str = "fmirnet"
    arguments: dict[str, Any] = field(default_factory=dict)
    similarity: str = "mse"
    similarity_weight: float = 1.0
    ssim_weight: float = 0.1
    smoothness: Literal["diffusion", "bending"] = "diffusion"
    smoothness_weight: float = 0.02
    anatomy_weight: float = 0.0
    label_weight: float = 0.0
    penalties: dict[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8

    def __post_init__(self):
        _positive("registration", batch_size=self.batch_size, lr=self.lr)
        _non_negative("registration.penalties", **self.penalties)
        _non_negative(
            "registration", similarity_weight=self.similarity_weight, ssim_weight=self.ssim_weight,
            smoothness_weight=self.smoothness_weight, anatomy_weight=self.anatomy_weight,
            label_weight=self.label_weight, weight_decay=self.weight_decay,
        )


@dataclass(frozen=True)
class AugmentationConfig:
    """Augmentation of segmentation batches (albumentations; seeded per step)."""

    enabled: bool = True
    rotate: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.06
    elastic: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: tuple[float, float] = (0.8, 1.25)
    noise: float = 0.02
    probability: float = 0.8


@dataclass(frozen=True)
class SegmentationConfig:
    """The segmentor and how much each group of samples weighs in its loss.

    Attributes:
        real_weight: loss weight of annotated slices (their real labels).
        warped_weight: weight of warped moving images with their warped labels (exactly aligned).
        propagated_weight: weight of unannotated fixed images with propagated labels (how they
            are labelled: the ``propagation`` section).
        postprocessing: ``auto`` keeps only the largest connected component of each class
            where that does not lower the Dice on the validation cases, as nnU-Net decides it
            (nothing without validation cases: ``data.validation_count``);
            ``largest_component`` applies it to every class, ``none`` never. The decision is
            stored in the exported segmentor and applied by ``segment`` and ``pseudolabel``.
    """

    enabled: bool = True
    architecture: str = "unet"
    arguments: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 8
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    real_weight: float = 1.0
    warped_weight: float = 0.5
    propagated_weight: float = 0.5
    postprocessing: Literal["auto", "largest_component", "none"] = "auto"
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    def __post_init__(self):
        _positive("segmentation", batch_size=self.batch_size, lr=self.lr)
        _non_negative(
            "segmentation", ce_weight=self.ce_weight, dice_weight=self.dice_weight,
            real_weight=self.real_weight, warped_weight=self.warped_weight,
            propagated_weight=self.propagated_weight,
        )


@dataclass(frozen=True)
class PropagationConfig:
    """How registration turns the training volumes' other slices into segmentation samples
    (the propagated group; policy in :mod:`jointreg.training.propagation`).

    Attributes:
        method: how the annotated label reaches a fixed slice: ``direct`` registers the
            annotated slice straight onto it; ``chain`` composes the registrations of adjacent
            slices from the nearest annotated slice on each side (recomputed for every training
            volume whenever the registration has changed, and fused with distance weights as
            ``jointreg pseudolabel --propagation chain`` does). The distance rules then use the
            distance to the nearest annotated slice; ``residual`` and ``absent_residual`` still
            judge the direct registration of the drawn pair.
        verify: with ``method: chain``, each chain-propagated structure stops at the first slice
            where fewer than this fraction of its pixels have the annotated structure's
            intensities (:mod:`jointreg.inference.verify`); beyond, it is background. ``None``: off.
        gate: with ``method: chain``, the percentile ``q`` of the appearance gate: chain-propagated
            pixels of a structure whose intensity lies outside the ``q`` .. ``100 − q``
            percentiles of its annotated voxels become background
            (:func:`jointreg.inference.verify.gate_by_appearance`, as ``pseudolabel --gate``). 0: off.
        step_gate: with ``method: chain``, the same gate applied after every step of the chain,
            before the next (``pseudolabel --step-gate``): the propagated label shrinks where the
            organ does and ends where it ends. 0: off.
        refine: with ``method: chain``, Adam steps of instance optimisation of every adjacent
            pair's field before the labels are composed (:mod:`jointreg.inference.refine`);
            0: the network's fields as they are.
        refine_smoothness: the refinement's diffusion weight ``λ`` (``pseudolabel
            --refine-smoothness``; default 0.001, results/ms_cmr_cv.md part i).
        radius: slice radius of the propagated pairs (default: ``pairs.radius``); the warped
            group always uses ``pairs.radius``.
        trust: which criteria decide how much a propagated label is trusted (any combination):
            ``distance``: each propagated slice weighs ``exp(-trust_decay · slice distance)``;
            ``residual``: pixels where the registered moving image still differs from the fixed
            image by more than ``trust_residual`` (intensities in [0, 1]) become ``ignore``;
            ``agreement``: once the segmentor is warm, pixels where it disagrees with the
            propagated label become ``ignore``. An empty list trusts every propagated pixel.
        foreground_within: beyond this slice distance a propagated slice is used only as a
            negative: when registration finds every structure absent there (see
            ``absent_residual``) it becomes all background, otherwise it is ignored. Far
            slices thus teach the segmentor where the structure is not, without claiming where
            it is. With ``background_margin`` set, far slices are not dropped but give the
            negatives described there. ``None``: no limit.
        absent_residual: a structure counts as absent from a fixed slice when the mean
            ``|moving∘φ − fixed|`` (intensities in [0, 1]) inside its propagated region exceeds
            this value: registration found nothing that looks like it; its pixels become
            background. With ``foreground_within`` set, decided only beyond it (near an
            annotated slice a poor match is a poor warp, not a missing organ). ``None``: never.
        background_margin: turns every propagated slice (at any distance) into a source of
            negatives: pixels farther than this many pixels from every propagated structure are
            background; the band within the margin is ignored; the propagated structures keep
            their label within ``foreground_within`` slices (all slices when ``None``) and are
            ignored beyond. It rests only on registration putting the structure somewhere near
            where the fixed slice has it (results/chaos_t2_liver_study.md). ``None``: off.
        appearance_percentiles: with ``background_margin``, pixels inside the margin whose
            intensity lies outside these percentiles of the structure's intensities on the
            annotated (moving) slice become background too: they cannot be that structure (same
            volume, same intensity scale). ``None``: off.
    """

    method: Literal["direct", "chain"] = "direct"
    verify: float | None = None
    gate: float = 0.0
    step_gate: float = 0.0
    refine: int = 0
    refine_smoothness: float = REFINE_SMOOTHNESS
    radius: int | None = None
    trust: tuple[Literal["distance", "residual", "agreement"], ...] = ("distance",)
    trust_decay: float = 0.15
    trust_residual: float = 0.15
    foreground_within: int | None = None
    absent_residual: float | None = None
    background_margin: int | None = None
    appearance_percentiles: tuple[float, float] | None = None

    def __post_init__(self):
        _non_negative("propagation", trust_decay=self.trust_decay, trust_residual=self.trust_residual)
        if self.radius is not None and self.radius < 1:
            raise ConfigError("propagation.radius: must be >= 1")
        if self.verify is not None:
            if not 0.0 <= self.verify <= 1.0:
                raise ConfigError(f"propagation.verify: must be a fraction in [0, 1], got {self.verify}")
            if self.method != "chain":
                raise ConfigError("propagation.verify: needs propagation.method: chain")
        if not 0.0 <= self.gate < 50.0:
            raise ConfigError(f"propagation.gate: must be a percentile in [0, 50), got {self.gate}")
        if self.gate and self.method != "chain":
            raise ConfigError("propagation.gate: needs propagation.method: chain")
        if not 0.0 <= self.step_gate < 50.0:
            raise ConfigError(f"propagation.step_gate: must be a percentile in [0, 50), got {self.step_gate}")
        if self.step_gate and self.method != "chain":
            raise ConfigError("propagation.step_gate: needs propagation.method: chain")
        if self.refine < 0:
            raise ConfigError(f"propagation.refine: must be >= 0 steps, got {self.refine}")
        if self.refine and self.method != "chain":
            raise ConfigError("propagation.refine: needs propagation.method: chain")
        if not 0.0 <= self.refine_smoothness < float("inf"):
            raise ConfigError(f"propagation.refine_smoothness: must be a weight >= 0, got {self.refine_smoothness}")
        if self.background_margin is not None and self.background_margin < 0:
            raise ConfigError("propagation.background_margin: must be >= 0")
        if self.appearance_percentiles is not None:
            lo, hi = self.appearance_percentiles
            if not 0.0 <= lo < hi <= 100.0:
                raise ConfigError(
                    f"propagation.appearance_percentiles: need 0 <= low < high <= 100, got {[lo, hi]}"
                )
            if self.background_margin is None:
                raise ConfigError("propagation.appearance_percentiles: needs propagation.background_margin")
        if self.foreground_within is not None and self.foreground_within < 0:
            raise ConfigError("propagation.foreground_within: must be >= 0")


@dataclass(frozen=True)
class ScheduleConfig:
    """Warm-up of each network alone, then ``rounds`` of K_reg / K_seg alternating steps.

    Attributes:
        validate_every: validate (and keep the best segmentor) every this many rounds.
        patience: stop after this many validations without improvement (``None``: never).
        lr_schedule: ``constant`` or ``cosine`` decay over each network's total steps.
        checkpoint_every: write the resume checkpoint every this many rounds.
        checkpoint_steps: also write it every this many global steps (``0``: only at the end of
            each warm-up and of the rounds above), so that a crash loses at most this many steps.
    """

    registration_warmup: int = 200
    segmentation_warmup: int = 200
    rounds: int = 10
    registration_steps: int = 50
    segmentation_steps: int = 50
    validate_every: int = 1
    patience: int | None = None
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    checkpoint_every: int = 1
    checkpoint_steps: int = 100

    def __post_init__(self):
        _non_negative(
            "schedule", registration_warmup=self.registration_warmup,
            segmentation_warmup=self.segmentation_warmup, rounds=self.rounds,
            registration_steps=self.registration_steps, segmentation_steps=self.segmentation_steps,
            checkpoint_steps=self.checkpoint_steps,
        )
        _positive("schedule", validate_every=self.validate_every, checkpoint_every=self.checkpoint_every)


@dataclass(frozen=True)
class LoggingConfig:
    """What a run logs (TensorBoard tags: :mod:`jointreg.training.logger`).

    Attributes:
        monitor: ``training`` also scores the networks, at every validation, on the first
            ``monitor_cases`` training volumes against their complete labels (``labelsTr_full``,
            kept by ``jointreg sparsify``), for TensorBoard and ``train.log`` only: never used to
            select weights or stop early, and isolated from the training's random draws, so
            the weights are those of the same run without it. ``none``: off.
        panel_slices: fixed slices drawn (ground-truth and predicted contours) at every
            validation, of the validation cases and of the monitored volumes; 0: none.
    """

    tensorboard: bool = True
    log_every: int = 20
    image_every: int = 200
    progress: bool = True
    monitor: Literal["none", "training"] = "none"
    monitor_cases: int = 4
    panel_slices: int = 4

    def __post_init__(self):
        _non_negative("logging", log_every=self.log_every, image_every=self.image_every,
                      panel_slices=self.panel_slices)
        _positive("logging", monitor_cases=self.monitor_cases)


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation of the final segmentor on the dataset's test split (``imagesTs``/``labelsTs``)."""

    enabled: bool = True
    split: Literal["Ts", "Tr"] = "Ts"
    write_predictions: bool = True


@dataclass(frozen=True)
class Recipe:
    """A complete experiment. See ``recipes/*.yaml`` for commented examples."""

    name: str = "run"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    precision: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    output: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    volumes: VolumesConfig = field(default_factory=VolumesConfig)

    def __post_init__(self):
        if not self.registration.enabled and not self.segmentation.enabled:
            raise ConfigError("recipe: enable registration, segmentation, or both")
        if self.registration.anatomy_weight > 0 and not self.segmentation.enabled:
            raise ConfigError("registration.anatomy_weight needs segmentation.enabled: true")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"name: {self.name!r} cannot be used as a run folder name")
        # Checked with the recipe, not when training starts, so that a typo fails before a run
        # folder is made (whether CUDA is there is only known on the machine that trains).
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: must be >= 1, got {self.threads}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device.lower()):
            raise ConfigError(f"device: {self.device!r} is not valid (use auto, cpu, cuda or cuda:N)")
        check_volume_mode(self)

    @property
    def mode(self) -> str:
        """``joint``, ``registration`` (registration only) or ``segmentation`` (segmentor only)."""
        if self.registration.enabled and self.segmentation.enabled:
            return "joint"
        return "registration" if self.registration.enabled else "segmentation"

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def replace(self, **changes: Any) -> Recipe:
        return replace(self, **changes)


def recipe_from_dict(data: Any, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Build a recipe from a mapping, after applying ``key=value`` overrides."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a YAML mapping of sections")
    data, overrides = move_propagation_keys(data, list(overrides))
    recipe = from_mapping(Recipe, apply_overrides(data, overrides))
    check_network_arguments(recipe)
    return recipe


def load_recipe(path: str | PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe (``yaml.safe_load``, bounded), apply overrides, and validate it.

    Raises:
        InputError: unreadable file, invalid or oversized YAML (naming the file).
        ConfigError: unknown keys, wrong types, inconsistent settings (naming the key).
    """
    from jointreg.utils.yaml_io import load_yaml_file

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "is a folder, expected a recipe file (YAML)" if path.is_dir() else "recipe file not found")
    data = load_yaml_file(path, what="recipe")
    try:
        return recipe_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML text (the resolved form written into every run folder)."""
    import yaml

    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None)
