"""One optimisation step of each network, as small functions (no trainer class).

``registration_step``: similarity(moving∘φ, fixed) + β·(1 − SSIM) + α·smoothness(φ)
    + anatomy term Dice(moving_label∘φ, segmentor(fixed))   (once the segmentor is warm)
    + label term Dice(moving_label∘φ, fixed_label)          (pairs whose fixed slice is annotated)

``segmentation_step``: weighted CE + Dice on
    real annotated slices (real_weight),
    warped moving images with their warped labels (warped_weight; exactly aligned pairs),
    unannotated fixed images with propagated labels (propagated_weight × per-pixel trust).

Both return a dict of floats (the loss terms) for logging; they raise
:class:`TrainingDiverged` on a non-finite loss *before* touching the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jointreg.errors import JointregError
from jointreg.losses.regularization import bending_energy, diffusion
from jointreg.losses.segmentation import ce_dice_loss, soft_dice
from jointreg.losses.similarity import create_similarity_loss, ssim
from jointreg.spatial.labels import one_hot
from jointreg.spatial.warp import warp_labels, warp_onehot
from jointreg.training.batches import RegistrationBatch
from jointreg.training.config import RegistrationConfig, SegmentationConfig


class TrainingDiverged(JointregError):
    """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


_ADVICE = "The last good checkpoint is kept. Try a lower learning rate or a larger smoothness weight."


def _check_finite(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{what} loss became {loss.item()} at step {step}; stopping. {_ADVICE}")


def _check_weights(net: torch.nn.Module, what: str, step: int) -> None:
    # An update can turn weights infinite while its loss was still finite; the next forward pass
    # would then produce NaN flows. Catch it here, before any later step uses them.
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise TrainingDiverged(f"{what} weights became NaN or infinite at step {step}; stopping. {_ADVICE}")


class RegistrationLoss:
    """The registration objective of a recipe, built once (similarity module, weights)."""

    def __init__(self, config: RegistrationConfig, *, num_classes: int, ignore_index: int):
        self.config = config
        self.similarity = create_similarity_loss(config.similarity)
        self.smoothness = diffusion if config.smoothness == "diffusion" else bending_energy
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __call__(self, out, batch: RegistrationBatch, *, anatomy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its terms.

        Args:
            out: the network's ``RegistrationOutput``.
            batch: the pairs.
            anatomy: optional segmentor probabilities on the fixed images ``(B, K, H, W)``.
        """
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        terms["similarity"] = self.similarity(out.warped, batch.fixed)
        total = cfg.similarity_weight * terms["similarity"]
        if cfg.ssim_weight > 0:
            terms["ssim"] = 1.0 - ssim(out.warped, batch.fixed)
            total = total + cfg.ssim_weight * terms["ssim"]
        terms["smoothness"] = self.smoothness(out.flow)
        total = total + cfg.smoothness_weight * terms["smoothness"]
        if cfg.label_weight > 0 or (cfg.anatomy_weight > 0 and anatomy is not None):
            k = self.num_classes
            warped = warp_onehot(one_hot(batch.moving_label, k, ignore_index=self.ignore_index), out.flow)
            known = (warped[:, k:] < 0.5).float()  # where the moving label was annotated
            moving_annotated = (batch.moving_label != self.ignore_index).flatten(1).any(1)
            if cfg.label_weight > 0:
                fixed_known = (batch.fixed_label != self.ignore_index).float() * known
                use = moving_annotated & (fixed_known.flatten(1).sum(1) > 0)
                if use.any():
                    target = one_hot(batch.fixed_label, k, ignore_index=self.ignore_index)[:, :k]
                    terms["label_dice"] = 1.0 - soft_dice(
                        warped[use, 1:k], target[use, 1:], mask=fixed_known[use]
                    )
                    total = total + cfg.label_weight * terms["label_dice"]
            if cfg.anatomy_weight > 0 and anatomy is not None and moving_annotated.any():
                use = moving_annotated
                terms["anatomy_dice"] = 1.0 - soft_dice(warped[use, 1:k], anatomy[use, 1:], mask=known[use])
                total = total + cfg.anatomy_weight * terms["anatomy_dice"]
        return total, {name: float(value.detach()) for name, value in terms.items()}


def registration_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: RegistrationBatch,
    loss_fn: RegistrationLoss,
    *,
    segmentor: torch.nn.Module | None = None,
    step: int = 0,
) -> dict[str, float]:
    """One optimiser step of the registration network; returns the loss terms.

    Args:
        segmentor: when given (and the recipe has an anatomy weight), its softmax on the fixed
            images is the anatomy target; it is evaluated without gradients, in eval mode.
    """
    net.train()
    anatomy = None
    if segmentor is not None and loss_fn.config.anatomy_weight > 0:
        was_training = segmentor.training
        segmentor.eval()
        with torch.no_grad():
            anatomy = torch.softmax(segmentor(batch.fixed), dim=1)
        segmentor.train(was_training)
    out = net(batch.moving, batch.fixed)
    loss, terms = loss_fn(out, batch, anatomy=anatomy)
    _check_finite(loss, "registration", step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    _check_weights(net, "registration", step)
    terms["total"] = float(loss.detach())
    return terms


@dataclass
class PropagatedBatch:
    """Pairs turned into segmentation samples by the registration network.

    Attributes:
        warped_images, warped_labels: moving images and labels warped onto the fixed grid.
        fixed_images: the fixed images.
        fixed_targets: labels for the fixed images: the fixed slice's own label where known,
            the propagated label elsewhere; ``ignore_index`` where neither is trusted.
        trust: ``(B,)`` per-sample weight of the propagated targets (distance decay).
    """

    warped_images: torch.Tensor
    warped_labels: torch.Tensor
    fixed_images: torch.Tensor
    fixed_targets: torch.Tensor
    trust: torch.Tensor


def _dilate(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """Binary dilation of a ``(B, 1, *S)`` mask by a ``(2·margin + 1)``-wide square/cube."""
    if margin <= 0:
        return mask
    pool = torch.nn.functional.max_pool3d if mask.dim() == 5 else torch.nn.functional.max_pool2d
    return pool(mask.float(), kernel_size=2 * margin + 1, stride=1, padding=margin) > 0


def _intensity_ranges(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, percentiles: tuple[float, float]
) -> torch.Tensor:
    """``(B, K, 2)`` low/high intensity percentiles of each class in each (annotated) image."""
    q = torch.tensor([percentiles[0] / 100.0, percentiles[1] / 100.0], dtype=images.dtype, device=images.device)
    ranges = torch.full((images.shape[0], num_classes, 2), float("nan"), dtype=images.dtype, device=images.device)
    for b in range(images.shape[0]):
        for c in range(1, num_classes):
            values = images[b][labels[b] == c]
            if values.numel():
                ranges[b, c] = torch.quantile(values.float(), q).to(images.dtype)
    return ranges


def _background_beyond(
    propagated: torch.Tensor, distance: torch.Tensor, *, margin: int, ignore_index: int,
    foreground_within: int | None, fixed: torch.Tensor | None = None, ranges: torch.Tensor | None = None,
) -> torch.Tensor:
    """Background wherever no structure was propagated within ``margin`` pixels.

    The propagated structures keep their label on slices within ``foreground_within`` (any
    slice when ``None``) and are ignored beyond; the band of ``margin`` pixels around them is
    ignored, since the fixed slice's own structure may extend past the registered one. With
    ``fixed`` images and per-class intensity ``ranges`` (``(B, K, 2)``, NaN for a class the
    moving slice lacks), a pixel of that zone is background too when its intensity lies outside
    the range of every structure whose zone covers it: it cannot be any of them.
    """
    structure = (propagated > 0) & (propagated != ignore_index)
    zone = _dilate(structure, margin)
    unknown = torch.full_like(propagated, ignore_index)
    if fixed is not None and ranges is not None:
        # The zone is the union of the per-class zones; keep a pixel unknown only where its
        # intensity fits a class whose zone covers it.
        compatible = torch.zeros_like(zone)
        view = (-1, 1, *([1] * (propagated.dim() - 2)))
        for c in range(1, ranges.shape[1]):
            lo, hi = ranges[:, c, 0].view(view), ranges[:, c, 1].view(view)
            inside = (fixed >= lo) & (fixed <= hi)  # NaN bounds compare False
            compatible |= _dilate(propagated == c, margin) & inside
        zone = compatible
    out = torch.where(zone, unknown, torch.zeros_like(propagated))
    keep = structure
    if foreground_within is not None:
        near = (distance <= foreground_within).view(-1, *([1] * (propagated.dim() - 1)))
        keep = structure & near
    out = torch.where(keep, propagated, out)
    # Outside the moving slice's field of view nothing is known.
    return torch.where(propagated == ignore_index, unknown, out)


@torch.no_grad()
def propagate(
    net: torch.nn.Module,
    batch: RegistrationBatch,
    *,
    num_classes: int,
    ignore_index: int,
    trust: tuple[str, ...] = ("distance",),
    trust_decay: float = 0.15,
    trust_residual: float = 0.15,
    foreground_within: int | None = None,
    absent_residual: float | None = None,
    segmentor: torch.nn.Module | None = None,
    background_margin: int | None = None,
    appearance_percentiles: tuple[float, float] | None = None,
) -> PropagatedBatch:
    """Warp moving slices and labels onto fixed slices and build trusted targets.

    Labels are warped as one-hot maps (with "unknown" as its own channel) and the argmax is
    taken, so thin structures are not dropped. Trust criteria (see
    :class:`~jointreg.training.config.SegmentationConfig`): ``distance`` weighs each sample by
    ``exp(-trust_decay · d)``; ``residual`` ignores pixels where ``|moving∘φ − fixed|`` exceeds
    ``trust_residual``; ``agreement`` (with a segmentor) ignores pixels where the segmentor's
    prediction differs from the propagated label. With ``absent_residual``, a class whose
    propagated region matches the fixed image poorly (mean residual above the threshold) is
    absent from that slice and its pixels become background (only beyond ``foreground_within``
    when that is set). Beyond ``foreground_within``
    slices a sample is kept only when every class is absent (an all-background negative) and is
    ignored otherwise. With ``background_margin``, far slices are not dropped: every slice
    yields background wherever the structures were ruled out, beyond the margin of their
    propagated position or, with ``appearance_percentiles``, inside it where the intensity is
    outside the structure's range on the moving slice (see :func:`_background_beyond`); the
    structures themselves are kept only within ``foreground_within``. The fixed slice's own
    labels, where known, always win.
    """
    was_training = net.training
    net.eval()
    out = net(batch.moving, batch.fixed)
    net.train(was_training)
    warped_labels = warp_labels(batch.moving_label, out.flow, num_classes, ignore_index=ignore_index)
    propagated = warped_labels.clone()
    unknown = torch.full_like(propagated, ignore_index)
    if absent_residual is not None or "residual" in trust:
        residual = (out.warped - batch.fixed).abs().mean(1, keepdim=True)
    broadcast = (-1, *([1] * (propagated.dim() - 1)))
    if absent_residual is not None:
        # Absence is only decided beyond foreground_within (when set): near an annotated slice a
        # poor match means a poor warp, not a missing organ; erasing it teaches under-segmentation.
        may_be_absent = batch.distance > (foreground_within if foreground_within is not None else -1)
        for c in range(1, num_classes):
            region = propagated == c
            area = region.flatten(1).sum(1)
            mean = (residual * region).flatten(1).sum(1) / area.clamp_min(1)
            absent = ((area > 0) & (mean > absent_residual) & may_be_absent).view(broadcast)
            propagated = torch.where(region & absent, torch.zeros_like(propagated), propagated)
    # Whether a structure is still claimed, decided before pixel trust can hide it.
    structure_left = ((propagated > 0) & (propagated != ignore_index)).flatten(1).any(1)
    if "residual" in trust:
        propagated = torch.where(residual > trust_residual, unknown, propagated)
    if foreground_within is not None and background_margin is None:
        far = batch.distance > foreground_within
        drop = (far & structure_left).view(broadcast)
        negative = (far & ~structure_left).view(broadcast)
        propagated = torch.where(drop, unknown, propagated)
        # An all-background negative: registration found no structure on this far slice.
        propagated = torch.where(negative & (propagated == ignore_index), torch.zeros_like(propagated), propagated)
    if "agreement" in trust and segmentor is not None:
        was = segmentor.training
        segmentor.eval()
        predicted = segmentor(batch.fixed).argmax(1, keepdim=True)
        segmentor.train(was)
        propagated = torch.where(predicted != propagated, unknown, propagated)
    if background_margin is not None:
        ranges = None
        if appearance_percentiles is not None:
            ranges = _intensity_ranges(batch.moving, batch.moving_label, num_classes, appearance_percentiles)
        propagated = _background_beyond(
            propagated, batch.distance, margin=background_margin, ignore_index=ignore_index,
            foreground_within=foreground_within, fixed=batch.fixed, ranges=ranges,
        )
    targets = torch.where(batch.fixed_label != ignore_index, batch.fixed_label, propagated)
    if "distance" in trust:
        weights = torch.exp(-trust_decay * batch.distance)
    else:
        weights = torch.ones_like(batch.distance)
    return PropagatedBatch(out.warped, warped_labels, batch.fixed, targets, weights)


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
) -> dict[str, float]:
    """One optimiser step of the segmentor on real and/or registration-derived samples.

    Args:
        real: annotated images and labels.
        warped: its warped moving images and warped labels form the "warped" group.
        propagated: its fixed images and trusted propagated targets form the "propagated" group.
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
    logits = segmentor(images)
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
    _check_finite(total, "segmentation", step)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    _check_weights(segmentor, "segmentation", step)
    result = {name: float(value.detach()) for name, value in terms.items()}
    result["total"] = float(total.detach())
    return result
