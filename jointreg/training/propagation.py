"""The sample-labelling policy: how registration turns pairs into segmentation samples.

A :class:`PropagationPolicy` is built once from the recipe (``propagation`` section) and labels
each batch of pairs: the moving slice's label is warped onto the fixed slice (one-hot, so thin
structures survive), then the configured rules decide which propagated pixels are trusted
(see :class:`~jointreg.training.config.PropagationConfig` for each setting):

1. ``absent_residual``: a structure whose propagated region matches the fixed image poorly is
   absent there (its pixels become background), beyond ``foreground_within`` only;
2. ``trust: [residual]``: pixels the registration could not match are ignored;
3. ``foreground_within`` without a margin: far slices are kept only as all-background negatives;
4. ``trust: [agreement]``: pixels where the warm segmentor disagrees are ignored;
5. ``background_margin`` (+ ``appearance_percentiles``): background wherever the structures are
   ruled out, the structures kept only within ``foreground_within`` slices;
6. the fixed slice's own labels, where known, always win; ``trust: [distance]`` weighs each
   sample by :func:`jointreg.inference.propagate.distance_trust`.

The warped group (moving images with their warped labels) needs none of this:
:meth:`PropagationPolicy.warp_only`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from jointreg.data.batches import RegistrationBatch
from jointreg.inference.propagate import distance_trust
from jointreg.spatial.warp import warp_labels
from jointreg.training.config import PropagationConfig


@dataclass
class PropagatedBatch:
    """Pairs turned into segmentation samples by the registration network.

    Attributes:
        warped_images, warped_labels: moving images and labels warped onto the fixed grid
            (``None`` for a propagated group labelled without registering its pairs: chain
            labels and no residual rule).
        fixed_images: the fixed images.
        fixed_targets: labels for the fixed images: the fixed slice's own label where known,
            the propagated label elsewhere; ``ignore_index`` where neither is trusted.
        trust: ``(B,)`` per-sample weight of the propagated targets (distance decay).
    """

    warped_images: torch.Tensor | None
    warped_labels: torch.Tensor | None
    fixed_images: torch.Tensor
    fixed_targets: torch.Tensor
    trust: torch.Tensor


def dilate(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """Binary dilation of a ``(B, 1, *S)`` mask by a ``(2·margin + 1)``-wide square/cube."""
    if margin <= 0:
        return mask
    pool = torch.nn.functional.max_pool3d if mask.dim() == 5 else torch.nn.functional.max_pool2d
    return pool(mask.float(), kernel_size=2 * margin + 1, stride=1, padding=margin) > 0


def intensity_ranges(
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


def background_beyond(
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
    zone = dilate(structure, margin)
    unknown = torch.full_like(propagated, ignore_index)
    if fixed is not None and ranges is not None:
        # The zone is the union of the per-class zones; keep a pixel unknown only where its
        # intensity fits a class whose zone covers it.
        compatible = torch.zeros_like(zone)
        view = (-1, 1, *([1] * (propagated.dim() - 2)))
        for c in range(1, ranges.shape[1]):
            lo, hi = ranges[:, c, 0].view(view), ranges[:, c, 1].view(view)
            inside = (fixed >= lo) & (fixed <= hi)  # NaN bounds compare False
            compatible |= dilate(propagated == c, margin) & inside
        zone = compatible
    out = torch.where(zone, unknown, torch.zeros_like(propagated))
    keep = structure
    if foreground_within is not None:
        near = (distance <= foreground_within).view(-1, *([1] * (propagated.dim() - 1)))
        keep = structure & near
    out = torch.where(keep, propagated, out)
    # Outside the moving slice's field of view nothing is known.
    return torch.where(propagated == ignore_index, unknown, out)


class PropagationPolicy:
    """Labels pairs for the segmentor as the recipe's ``propagation`` section says.

    Args:
        config: the recipe's ``propagation`` section.
        num_classes: classes of the networks (background included).
        ignore_index: the networks' ignore id.
    """

    def __init__(self, config: PropagationConfig, *, num_classes: int, ignore_index: int):
        self.config = config
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _register(self, net: torch.nn.Module, batch: RegistrationBatch):
        was_training = net.training
        net.eval()
        out = net(batch.moving, batch.fixed)
        net.train(was_training)
        warped_labels = warp_labels(batch.moving_label, out.flow, self.num_classes, ignore_index=self.ignore_index)
        return out, warped_labels

    @torch.no_grad()
    def warp_only(self, net: torch.nn.Module, batch: RegistrationBatch) -> PropagatedBatch:
        """The warped group: moving images and labels on the fixed grid, no trust rules."""
        out, warped_labels = self._register(net, batch)
        targets = torch.where(batch.fixed_label != self.ignore_index, batch.fixed_label, warped_labels)
        return PropagatedBatch(out.warped, warped_labels, batch.fixed, targets, torch.ones_like(batch.distance))

    @torch.no_grad()
    def label(self, net: torch.nn.Module, batch: RegistrationBatch, *, segmentor: torch.nn.Module | None = None,
              propagated: torch.Tensor | None = None, distance: torch.Tensor | None = None,
              warp: bool = True) -> PropagatedBatch:
        """Warp moving slices and labels onto fixed slices and build the trusted targets.

        Args:
            net: the registration network (evaluated in eval mode, without gradients).
            batch: the pairs.
            segmentor: the warm segmentor, for ``trust: [agreement]``.
            propagated: ``(B, 1, *S)`` labels already propagated onto the fixed slices (chain
                propagation) to use instead of the directly warped moving labels.
            distance: ``(B,)`` slice distances those labels travelled (default: the pairs'), for
                the distance rules (``foreground_within``, ``absent_residual``, distance trust).
            warp: the caller uses the warped images and labels too. Without it, and with
                ``propagated`` labels and no residual rule, the pairs are not registered at all
                (the targets are the same; the registration forward is saved).
        """
        cfg, ignore_index = self.config, self.ignore_index
        if distance is not None:
            batch = dataclasses.replace(batch, distance=distance)
        uses_residual = cfg.absent_residual is not None or "residual" in cfg.trust
        out = warped_labels = None
        if warp or propagated is None or uses_residual:
            out, warped_labels = self._register(net, batch)
        propagated = warped_labels.clone() if propagated is None else propagated.clone()
        unknown = torch.full_like(propagated, ignore_index)
        if uses_residual:
            residual = (out.warped - batch.fixed).abs().mean(1, keepdim=True)
        broadcast = (-1, *([1] * (propagated.dim() - 1)))
        if cfg.absent_residual is not None:
            # Absence is only decided beyond foreground_within (when set): near an annotated slice
            # a poor match means a poor warp, not a missing organ; erasing it teaches under-segmentation.
            within = cfg.foreground_within if cfg.foreground_within is not None else -1
            may_be_absent = batch.distance > within
            for c in range(1, self.num_classes):
                region = propagated == c
                area = region.flatten(1).sum(1)
                mean = (residual * region).flatten(1).sum(1) / area.clamp_min(1)
                absent = ((area > 0) & (mean > cfg.absent_residual) & may_be_absent).view(broadcast)
                propagated = torch.where(region & absent, torch.zeros_like(propagated), propagated)
        # Whether a structure is still claimed, decided before pixel trust can hide it.
        structure_left = ((propagated > 0) & (propagated != ignore_index)).flatten(1).any(1)
        if "residual" in cfg.trust:
            propagated = torch.where(residual > cfg.trust_residual, unknown, propagated)
        if cfg.foreground_within is not None and cfg.background_margin is None:
            far = batch.distance > cfg.foreground_within
            drop = (far & structure_left).view(broadcast)
            negative = (far & ~structure_left).view(broadcast)
            propagated = torch.where(drop, unknown, propagated)
            # An all-background negative: registration found no structure on this far slice.
            propagated = torch.where(negative & (propagated == ignore_index), torch.zeros_like(propagated), propagated)
        if "agreement" in cfg.trust and segmentor is not None:
            was = segmentor.training
            segmentor.eval()
            predicted = segmentor(batch.fixed).argmax(1, keepdim=True)
            segmentor.train(was)
            propagated = torch.where(predicted != propagated, unknown, propagated)
        if cfg.background_margin is not None:
            ranges = None
            if cfg.appearance_percentiles is not None:
                ranges = intensity_ranges(batch.moving, batch.moving_label, self.num_classes, cfg.appearance_percentiles)
            propagated = background_beyond(
                propagated, batch.distance, margin=cfg.background_margin, ignore_index=ignore_index,
                foreground_within=cfg.foreground_within, fixed=batch.fixed, ranges=ranges,
            )
        targets = torch.where(batch.fixed_label != ignore_index, batch.fixed_label, propagated)
        weights = distance_trust(batch.distance, cfg.trust_decay) if "distance" in cfg.trust else torch.ones_like(batch.distance)
        return PropagatedBatch(None if out is None else out.warped, warped_labels, batch.fixed, targets, weights)


class SegmentationGroups:
    """The registration-derived groups of a segmentation step: pairs drawn, then labelled.

    * warped: annotated slices (of the same or, with ``pairs.cross_volume``, another volume)
      within ``pairs.radius`` warped onto a fixed slice, with their warped labels;
    * propagated: fixed slices within ``propagation.radius`` of an annotated slice of their own
      volume, labelled by the :class:`PropagationPolicy`.

    When both groups use the same pairs (same radius, no cross-volume pairs), one draw feeds
    both, as the registration work is the same.

    Args:
        volumes: the training volumes.
        pairs: the recipe's ``pairs`` section; propagation: its ``propagation`` section.
        warped_weight, propagated_weight: a group with weight 0 is not drawn.

    Raises:
        ValueError: no pair can be drawn (e.g. no annotated slice).
    """

    def __init__(self, volumes, *, pairs, propagation: PropagationConfig, warped_weight: float,
                 propagated_weight: float, num_classes: int, ignore_index: int, device: torch.device):
        from jointreg.data.pairs import PairSampler

        self.volumes = volumes
        self.warped_weight, self.propagated_weight = warped_weight, propagated_weight
        self.ignore_index, self.device = ignore_index, device
        # Segmentation steps warp and propagate within volumes, from annotated slices only.
        # Cross-volume pairs are valid for the warped group (image and label move together).
        self.warp_sampler = PairSampler(volumes, radius=pairs.radius, cross_volume=pairs.cross_volume)
        radius = propagation.radius or pairs.radius
        same = radius == pairs.radius and not pairs.cross_volume
        self.propagation_sampler = self.warp_sampler if same else PairSampler(volumes, radius=radius)
        self.policy = PropagationPolicy(propagation, num_classes=num_classes, ignore_index=ignore_index)
        self.num_classes, self.radius = num_classes, float(radius)
        self.chain = propagation.method == "chain"
        self.verify = propagation.verify
        self.gate = propagation.gate
        self.step_gate = propagation.step_gate
        self.refinement_settings = (propagation.refine, propagation.refine_smoothness)
        self._chain_labels: dict[tuple[int, int], torch.Tensor] = {}
        self._chain_distance: dict[tuple[int, int], float] = {}
        self._chain_version: int | None = None

    def refresh(self, net: torch.nn.Module, version: int) -> None:
        """Chain-propagate every training volume's annotated labels onto its other slices with
        the registration as it is now (``version``: the registration steps done so far; nothing
        is recomputed while it stays the same). Uncovered pixels are unknown."""
        if not self.chain or version == self._chain_version:
            return
        from jointreg.data.pairs import labelled_slices
        from jointreg.inference.propagate import propagate_chain
        from jointreg.inference.refine import Refinement

        steps, smoothness = self.refinement_settings
        refinement = Refinement(steps=steps, smoothness=smoothness)
        self._chain_labels, self._chain_distance = {}, {}
        for v, volume in enumerate(self.volumes):
            annotated = labelled_slices(volume)
            targets = [s for s in range(volume.num_slices) if s not in set(annotated)]
            if not annotated or not targets:
                continue
            estimate = propagate_chain(net, volume.images, volume.labels, targets, annotated,
                                       num_classes=self.num_classes, ignore_index=self.ignore_index,
                                       radius=self.radius, device=self.device, refinement=refinement,
                                       step_gate=self.step_gate)
            probs, covered = estimate.probabilities()
            labels = torch.where(covered, probs.argmax(1), torch.full_like(covered, self.ignore_index, dtype=torch.int64))
            if self.verify is not None or self.gate:
                labels = self._verified(volume, labels, targets, annotated)
            for i, t in enumerate(targets):
                self._chain_labels[(v, t)] = labels[i]
                self._chain_distance[(v, t)] = float(min(abs(t - a) for a in annotated))
        self._chain_version = version

    def _verified(self, volume, labels: torch.Tensor, targets: list[int], annotated: list[int]) -> torch.Tensor:
        """The chain labels with each structure stopped where it no longer looks like the annotated
        one (``verify``), and its pixels that never look like it removed (``gate``)."""
        import numpy as np

        from jointreg.inference.verify import check_propagated

        stack = np.array(volume.labels, dtype=np.int64, copy=True)
        stack[targets] = labels.cpu().numpy()
        propagated = np.zeros(stack.shape, bool)
        propagated[targets] = True
        checked = check_propagated(stack, volume.images, annotated, range(1, self.num_classes), propagated=propagated,
                                   threshold=self.verify, gate=self.gate)
        return torch.from_numpy(checked[targets]).to(labels.device)

    def _chained(self, batch) -> dict[str, torch.Tensor]:
        """``label()``'s arguments for chain mode: the chain-propagated labels of the batch's fixed
        slices (``(B, 1, *S)``; the fixed slice's own label where it is annotated) and the
        distance to the nearest annotated slice they came from; nothing in direct mode."""
        if not self.chain:
            return {}
        keys = [tuple(p.fixed) for p in batch.pairs]
        labels = [self._chain_labels.get(key, batch.fixed_label[i, 0]) for i, key in enumerate(keys)]
        distance = [self._chain_distance.get(key, 0.0) for key in keys]
        return {"propagated": torch.stack(labels).unsqueeze(1),
                "distance": torch.tensor(distance, dtype=batch.distance.dtype, device=batch.distance.device)}

    def _batch(self, sampler, n: int, rng, share=None):
        from jointreg.data.batches import registration_batch

        pairs = sampler.sample(n, rng)
        if share is not None:
            pairs = share(pairs)
        return registration_batch(self.volumes, pairs, ignore_index=self.ignore_index, device=self.device)

    def draw(self, net: torch.nn.Module, n_pairs: int, rng, *, segmentor: torch.nn.Module | None = None,
             share=None) -> tuple[PropagatedBatch | None, PropagatedBatch | None]:
        """``(warped, propagated)`` groups of ``n_pairs`` pairs each (``None`` when weighted 0).

        Args:
            share: keeps this process's part of the drawn pairs in a multi-process run
                (:meth:`~jointreg.training.distributed.Distributed.share`; all of them when ``None``).
        """
        shared = self.propagated_weight > 0 and self.propagation_sampler is self.warp_sampler
        warped = propagated = None
        if self.warped_weight > 0:
            batch = self._batch(self.warp_sampler, n_pairs, rng, share)
            # The trusted targets are derived only when the same pairs also feed the propagated group.
            warped = (self.policy.label(net, batch, segmentor=segmentor, **self._chained(batch)) if shared
                      else self.policy.warp_only(net, batch))
        if self.propagated_weight > 0:
            if warped is not None and shared:
                propagated = warped
            else:
                batch = self._batch(self.propagation_sampler, n_pairs, rng, share)
                propagated = self.policy.label(net, batch, segmentor=segmentor, warp=False, **self._chained(batch))
        return warped, propagated
