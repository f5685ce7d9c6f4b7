"""The registration objective as a list of weighted terms (FMIRNet paper: MSE + β·(1 − SSIM) +
α·smoothness), plus the anatomy and label terms and the network's own named penalties.

=================  ============================================  ==============================
term               value                                         weight (recipe)
=================  ============================================  ==============================
``similarity``     similarity(moving∘φ, fixed)                   ``similarity_weight``
``ssim``           1 − SSIM(moving∘φ, fixed)                     ``ssim_weight`` (when > 0)
``smoothness``     diffusion or bending of ``out.regularized``   ``smoothness_weight``
``label_dice``     1 − Dice(moving label∘φ, fixed label)          ``label_weight``: pairs whose
                                                                 fixed slice is annotated
``anatomy_dice``   1 − Dice(moving label∘φ, segmentor(fixed))    ``anatomy_weight``: once the
                                                                 segmentor is warm
penalty names      ``out.penalties[name]``                       ``penalties[name]``, else the
                                                                 network's default
=================  ============================================  ==============================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch

from jointreg.data.batches import RegistrationBatch
from jointreg.training.config_checks import check_penalty_names
from jointreg.losses.regularization import bending_energy, diffusion
from jointreg.losses.segmentation import soft_dice
from jointreg.losses.similarity import create_similarity_loss, ssim
from jointreg.spatial.labels import one_hot
from jointreg.spatial.warp import warp_onehot
from jointreg.training.config import RegistrationConfig


@dataclass
class LossInputs:
    """What a term sees: the network output, the pairs, the anatomy target, and the warped
    moving label computed once for every term that needs it."""

    out: object
    batch: RegistrationBatch
    anatomy: torch.Tensor | None
    num_classes: int
    ignore_index: int

    @cached_property
    def warped_onehot(self) -> torch.Tensor:
        """``(B, K + 1, *S)`` the moving label warped as one-hot, "unknown" its last channel."""
        labels = one_hot(self.batch.moving_label, self.num_classes, ignore_index=self.ignore_index)
        return warp_onehot(labels, self.out.flow)

    @cached_property
    def known(self) -> torch.Tensor:
        """Where the warped moving label is known (annotated)."""
        return (self.warped_onehot[:, self.num_classes:] < 0.5).float()

    @cached_property
    def moving_annotated(self) -> torch.Tensor:
        return (self.batch.moving_label != self.ignore_index).flatten(1).any(1)


@dataclass(frozen=True)
class Term:
    """One weighted term; ``compute`` returns ``None`` when the batch has nothing for it."""

    name: str
    weight: float
    compute: Callable[[LossInputs], torch.Tensor | None] = field(repr=False)


def _label_dice(x: LossInputs) -> torch.Tensor | None:
    k = x.num_classes
    fixed_known = (x.batch.fixed_label != x.ignore_index).float() * x.known
    use = x.moving_annotated & (fixed_known.flatten(1).sum(1) > 0)
    if not use.any():
        return None
    target = one_hot(x.batch.fixed_label, k, ignore_index=x.ignore_index)[:, :k]
    return 1.0 - soft_dice(x.warped_onehot[use, 1:k], target[use, 1:], mask=fixed_known[use])


def _anatomy_dice(x: LossInputs) -> torch.Tensor | None:
    if x.anatomy is None or not x.moving_annotated.any():
        return None
    use, k = x.moving_annotated, x.num_classes
    return 1.0 - soft_dice(x.warped_onehot[use, 1:k], x.anatomy[use, 1:], mask=x.known[use])


class RegistrationObjective:
    """The registration loss of a recipe, built once.

    Args:
        config: the recipe's ``registration`` section.
        num_classes, ignore_index: the networks' label space.
        penalty_weights: the network's default weights of its named penalties
            (``type(net).penalty_weights``); ``config.penalties`` overrides them.

    Raises:
        ConfigError: ``registration.penalties`` names a penalty the network does not have.
    """

    def __init__(self, config: RegistrationConfig, *, num_classes: int, ignore_index: int,
                 penalty_weights: Mapping[str, float] | None = None):
        self.config = config
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        defaults = dict(penalty_weights or {})
        check_penalty_names(config.architecture, config.penalties, defaults)
        self.penalty_weights = {**defaults, **config.penalties}
        similarity = create_similarity_loss(config.similarity)
        smoothness = diffusion if config.smoothness == "diffusion" else bending_energy
        terms = [Term("similarity", config.similarity_weight, lambda x: similarity(x.out.warped, x.batch.fixed))]
        if config.ssim_weight > 0:
            terms.append(Term("ssim", config.ssim_weight, lambda x: 1.0 - ssim(x.out.warped, x.batch.fixed)))
        terms.append(Term("smoothness", config.smoothness_weight, lambda x: smoothness(x.out.regularized)))
        if config.label_weight > 0:
            terms.append(Term("label_dice", config.label_weight, _label_dice))
        if config.anatomy_weight > 0:
            terms.append(Term("anatomy_dice", config.anatomy_weight, _anatomy_dice))
        self.terms = terms

    def __call__(self, out, batch: RegistrationBatch, *, anatomy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its terms.

        Args:
            out: the network's ``RegistrationOutput``.
            batch: the pairs.
            anatomy: optional segmentor probabilities on the fixed images ``(B, K, *S)``.
        """
        inputs = LossInputs(out, batch, anatomy, self.num_classes, self.ignore_index)
        values: dict[str, torch.Tensor] = {}
        total = None
        for term in self.terms:
            value = term.compute(inputs)
            if value is None:
                continue
            values[term.name] = value
            total = term.weight * value if total is None else total + term.weight * value
        for name, value in out.penalties.items():
            if name not in self.penalty_weights:
                raise ValueError(f"the network emitted penalty {name!r} without declaring a default weight")
            values[name] = value
            total = total + self.penalty_weights[name] * value
        return total, {name: float(value.detach()) for name, value in values.items()}
