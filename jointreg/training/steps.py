"""One optimisation step of each network, as small functions (no trainer class).

``registration_step``: the recipe's :class:`~jointreg.training.objectives.RegistrationObjective`
    (similarity, SSIM, smoothness, anatomy and label Dice, the network's penalties).

``segmentation_step``: weighted CE + Dice on
    real annotated slices (real_weight),
    warped moving images with their warped labels (warped_weight; exactly aligned pairs),
    unannotated fixed images with propagated labels (propagated_weight × per-sample trust;
    labelled by :class:`~jointreg.training.propagation.PropagationPolicy`).

Both return a dict of floats (the loss terms) for logging; they raise
:class:`TrainingDiverged` on a non-finite loss *before* touching the weights.
"""

from __future__ import annotations

import torch

from jointreg.data.batches import RegistrationBatch
from jointreg.errors import JointregError
from jointreg.losses.segmentation import ce_dice_loss
from jointreg.training.config import SegmentationConfig
from jointreg.training.distributed import Distributed
from jointreg.training.precision import MixedPrecision, autocast, backward_step
from jointreg.training.objectives import RegistrationObjective
from jointreg.training.propagation import PropagatedBatch


class TrainingDiverged(JointregError):
    """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


_ADVICE = "The last good checkpoint is kept. Try a lower learning rate or a larger smoothness weight."


def _check_finite(loss: torch.Tensor, what: str, step: int, distributed: Distributed | None) -> None:
    # In a multi-process run every rank must agree before any of them enters backward().
    if not (distributed.all_finite(loss) if distributed is not None else bool(torch.isfinite(loss))):
        raise TrainingDiverged(f"{what} loss became {loss.item()} at step {step}; stopping. {_ADVICE}")


def weights_finite(net: torch.nn.Module) -> bool:
    """Whether every weight of ``net`` is finite.

    The fast path is one fused L2 norm per tensor (``torch._foreach_norm``): a NaN or an
    infinity makes its tensor's norm non-finite. Only when a norm is not finite (which a huge but
    finite tensor can also cause, by overflow) are the tensors checked element by element. On
    CPU this is ~8× faster than ``isfinite(w).all()`` per tensor, which allocated a mask as large
    as the network every step (0.13 s per step for the resnet18 UNet; benchmarks/train_steps.py).
    """
    tensors = [p.detach() for p in net.parameters() if p.numel()]
    if not tensors:
        return True
    if bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _check_weights(net: torch.nn.Module, what: str, step: int) -> None:
    # An update can turn weights infinite while its loss was still finite; the next forward pass
    # would then produce NaN flows. Catch it here, before any later step uses them.
    if not weights_finite(net):
        raise TrainingDiverged(f"{what} weights became NaN or infinite at step {step}; stopping. {_ADVICE}")


def float32_output(out):
    """``out`` with every half-precision tensor (fields, extras, penalties) in float32."""
    import dataclasses

    def up(value):
        if isinstance(value, torch.Tensor):
            return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
        if isinstance(value, (tuple, list)):
            return type(value)(up(v) for v in value)
        if isinstance(value, dict):
            return {k: up(v) for k, v in value.items()}
        return value

    return dataclasses.replace(out, warped=up(out.warped), flow=up(out.flow), extras=up(out.extras),
                               penalties=up(out.penalties))


def registration_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: RegistrationBatch,
    loss_fn: RegistrationObjective,
    *,
    segmentor: torch.nn.Module | None = None,
    step: int = 0,
    distributed: Distributed | None = None,
    precision: MixedPrecision | None = None,
    anatomy: torch.Tensor | None = None,
) -> dict[str, float]:
    """One optimiser step of the registration network; returns the loss terms.

    Args:
        segmentor: when given (and the recipe has an anatomy weight), its softmax on the fixed
            images is the anatomy target; it is evaluated without gradients, in eval mode.
        distributed: in a multi-process run, the ranks agree on the finiteness check (``net``
            is then the DistributedDataParallel wrapper, which averages the gradients).
        precision: mixed precision for the forward pass and the loss (:mod:`~jointreg.training.precision`;
            ``None``: float32).
        anatomy: the anatomy target ``(B, K, *S)`` given directly instead of ``segmentor``'s
            softmax (3D mode: the slice segmentor's probabilities resampled into the box).
    """
    net.train()
    if anatomy is None and segmentor is not None and loss_fn.config.anatomy_weight > 0:
        was_training = segmentor.training
        segmentor.eval()
        with torch.no_grad():
            anatomy = torch.softmax(segmentor(batch.fixed), dim=1)
        segmentor.train(was_training)
    with autocast(precision):
        out = net(batch.moving, batch.fixed)
    # The objective outside autocast and in float32: SSIM's and NCC's local variances
    # (E[x²] − E[x]²) would cancel in bfloat16, and a float16 field's squared differences
    # overflow beyond 256 voxels.
    loss, terms = loss_fn(float32_output(out) if precision is not None else out, batch, anatomy=anatomy)
    _check_finite(loss, "registration", step, distributed)
    optimizer.zero_grad(set_to_none=True)
    backward_step(precision, loss, optimizer)
    _check_weights(net, "registration", step)
    terms["total"] = float(loss.detach())
    return terms


def segmentation_step(
    segmentor: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: SegmentationConfig,
    *,
    ignore_index: int,
    real: tuple[torch.Tensor, torch.Tensor] | None = None,
    warped: PropagatedBatch | None = None,
    propagated: PropagatedBatch | None = None,
    step: int = 0,
    distributed: Distributed | None = None,
    precision: MixedPrecision | None = None,
) -> dict[str, float]:
    """One optimiser step of the segmentor on real and/or registration-derived samples.

    Args:
        real: annotated images and labels.
        warped: its warped moving images and warped labels form the "warped" group.
        propagated: its fixed images and trusted propagated targets form the "propagated" group.
        distributed, precision: as for :func:`registration_step`.
    """
    segmentor.train()
    groups: list[tuple[str, float, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    if real is not None and config.real_weight > 0:
        groups.append(("real", config.real_weight, real[0], real[1], None))
    if warped is not None and config.warped_weight > 0:
        groups.append(("warped", config.warped_weight, warped.warped_images, warped.warped_labels, None))
    if propagated is not None and config.propagated_weight > 0:
        groups.append(("propagated", config.propagated_weight, propagated.fixed_images, propagated.fixed_targets, propagated.trust))
    if not groups:
        return {}
    images = torch.cat([g[2] for g in groups])
    with autocast(precision):
        logits = segmentor(images)
    logits = logits.float()  # the losses in float32 (softmax sums over many pixels)
    terms: dict[str, torch.Tensor] = {}
    total = logits.new_zeros(())
    start = 0
    for name, weight, group_images, targets, trust in groups:
        n = group_images.shape[0]
        terms[name] = ce_dice_loss(
            logits[start:start + n], targets, ignore_index=ignore_index,
            ce_weight=config.ce_weight, dice_weight=config.dice_weight, sample_weight=trust,
        )
        total = total + weight * terms[name]
        start += n
    _check_finite(total, "segmentation", step, distributed)
    optimizer.zero_grad(set_to_none=True)
    backward_step(precision, total, optimizer)
    _check_weights(segmentor, "segmentation", step)
    result = {name: float(value.detach()) for name, value in terms.items()}
    result["total"] = float(total.detach())
    return result
