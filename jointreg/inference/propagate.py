"""Propagate the annotated slices of a volume onto its other slices, and fuse with a segmentor.

Everything here works on one volume on the training grid: ``images`` ``(S, H, W)`` normalised
slices and ``labels`` ``(S, H, W)`` class ids ``0 .. K-1`` with ``ignore_index`` (= ``K``) where
unknown (see :class:`~jointreg.data.slices.SlicedVolume`).

**Registration estimate.** For a target slice ``t`` the sources are the nearest annotated slices
on each side (``per_side`` per side, :func:`nearest_sources`), ``d_j = |t - s_j|`` slices away.
Each source's label, one-hot encoded with "unknown" as an extra channel, is warped onto ``t``
(bilinear, so thin structures are not dropped) either

* ``direct``: by the field registering source image ``s_j`` (moving) onto target image ``t``
  (fixed), or
* ``chain``: through the neighbours, ``s_j → s_j ± 1 → … → t``, composing one warp per adjacent
  slice pair (``P_{s+1} = P_s ∘ φ_{s→s+1}``); chains start at every annotated slice and stop at
  the next one, so ``chain`` always uses the nearest annotated slice on each side. With a
  ``step_gate`` ``q``, every step is verified before the next: the propagated pixels of a class
  whose intensity lies outside the ``q`` .. ``100 − q`` percentiles of its annotated voxels, and
  the specks a 3 × 3 opening removes, go to background (holes filled again,
  :func:`jointreg.inference.verify.kept_by_appearance`), so what a step removed is not carried
  on. Registration keeps an organ's area (a smooth field does not make tissue vanish); the
  gate at every step lets the label shrink where the organ does and vanish where it ends
  (Sli2Vol's verification inside the chain).

The warped maps ``R_j`` (classes) and ``u_j`` (the unknown channel) are averaged with the
distance weights ``w_j = exp(-d_j / r)``, ``r`` = the pairing radius the registration network
was trained with::

    R(x) = Σ_j w_j R_j(x) / Σ_j w_j (1 - u_j(x))          where Σ_j w_j (1 - u_j(x)) > 1e-6

Pixels that no source covers (every source was unknown there) have no registration estimate.

**Fusion** with the segmentor's softmax ``S`` (:func:`fuse`), per target slice:

* ``registration``: ``P = R``; uncovered pixels take ``S`` (background without a segmentor);
* ``segmentor``: ``P = S``;
* ``fusion`` (agreement-weighted): ``P = λ R + (1 - λ) S`` with
  ``λ = c · (1 + a) / 2``, ``c = max_j w_j`` (how close the nearest source is) and ``a`` the
  soft Dice agreement of ``R`` and ``S`` over the foreground classes on the covered pixels (1 when
  both are empty). Next to an annotated slice, with a segmentor that agrees, registration
  dominates; far away, or where the two disagree, the segmentor gets more weight. Uncovered
  pixels take ``S``.

The label is ``argmax P`` (after mapping ``P`` back to the source grid, see
:mod:`jointreg.inference.pseudolabel`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from jointreg.utils.device import module_device

if TYPE_CHECKING:  # torch is imported where it is used: `import jointreg.inference.pseudolabel` stays light
    import torch

    from jointreg.inference.refine import Refinement

MODES = ("registration", "segmentor", "fusion")
PROPAGATIONS = ("direct", "chain")
_EPS = 1e-6


@dataclass(frozen=True)
class Source:
    """One annotated slice used for a target slice."""

    slice: int
    distance: int
    weight: float

    def to_json(self) -> dict[str, float | int]:
        return {"slice": self.slice, "distance": self.distance, "weight": round(self.weight, 6)}


def distance_trust(distance, decay: float):
    """The one trust rule for a label propagated ``distance`` slices: ``exp(-decay · distance)``.

    Training (``propagation.trust: [distance]``, ``decay = propagation.trust_decay``) and bulk
    pseudo-labels (``decay = 1 / radius``, see :func:`distance_weight`) both weigh by it. An
    exponential is the rule because registration errors compound with every slice a label
    travels: each further slice multiplies the trust by the same factor ``exp(-decay)``.

    Args:
        distance: slices, a number or a tensor (then the result is a tensor like it).
        decay: per-slice rate (>= 0).
    """
    if hasattr(distance, "exp"):  # a tensor (torch is not imported here: see above)
        return (-decay * distance).exp()
    return math.exp(-decay * float(distance))


def distance_weight(distance: int, radius: float) -> float:
    """:func:`distance_trust` with ``decay = 1 / radius``: the trust falls to ``1/e`` at the pair
    radius the registration network was trained on."""
    return distance_trust(distance, 1.0 / float(radius))


def nearest_sources(annotated: Sequence[int], index: int, per_side: int) -> list[int]:
    """The ``per_side`` nearest annotated slices below and above ``index`` (itself excluded).

    Returns:
        Slice indices, nearest first (ties: the lower slice first).

    Example:
        >>> nearest_sources([2, 5, 9, 20], 7, 1)
        [5, 9]
        >>> nearest_sources([2, 5, 9, 20], 7, 2)
        [5, 9, 2, 20]
    """
    below = [a for a in annotated if a < index][-per_side:] if per_side > 0 else []
    above = [a for a in annotated if a > index][:per_side] if per_side > 0 else []
    return sorted(below + above, key=lambda a: (abs(a - index), a))


def nearest_slice_labels(labels: np.ndarray, annotated: Sequence[int]) -> np.ndarray:
    """The baseline without registration: every slice takes the label of its nearest annotated slice.

    Args:
        labels: ``(S, ...)`` label slices along the first axis.
        annotated: indices of the annotated slices (ties go to the lower one).

    Returns:
        A copy of ``labels`` where every non-annotated slice holds its nearest annotated slice's
        label (unchanged when there is no annotated slice).
    """
    out = np.array(labels, copy=True)
    if not len(annotated):
        return out
    marks = np.asarray(sorted(annotated))
    for s in range(out.shape[0]):
        if s not in annotated:
            out[s] = labels[int(marks[np.argmin(np.abs(marks - s))])]
    return out


@dataclass
class RegistrationEstimate:
    """Distance-weighted sums of warped one-hot labels, for ``targets`` (in order).

    Attributes:
        targets: slice indices.
        numerator: ``(T, K, H, W)`` ``Σ_j w_j R_j``.
        known: ``(T, H, W)`` ``Σ_j w_j (1 - u_j)``.
        sources: per target, the sources used.
    """

    targets: list[int]
    numerator: torch.Tensor
    known: torch.Tensor
    sources: list[list[Source]] = field(default_factory=list)

    def probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``R`` ``(T, K, H, W)`` (0 where uncovered) and the covered mask ``(T, H, W)`` (bool)."""
        covered = self.known > _EPS
        probs = self.numerator / self.known.clamp_min(_EPS).unsqueeze(1)
        return probs * covered.unsqueeze(1), covered

    def confidence(self, t: int) -> float:
        """``c = max_j w_j`` of the ``t``-th target (0 without sources)."""
        return max((s.weight for s in self.sources[t]), default=0.0)


def _as_tensor(array: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype or torch.float32)


def _onehot(labels: np.ndarray, num_classes: int, ignore_index: int, device: torch.device) -> torch.Tensor:
    from jointreg.spatial.labels import one_hot

    import torch

    index = _as_tensor(labels.astype(np.int64), device, torch.int64).unsqueeze(1)
    return one_hot(index, num_classes, ignore_index=ignore_index)


def _pair_flows(net: torch.nn.Module, moving: torch.Tensor, fixed: torch.Tensor, refinement: Refinement | None) -> torch.Tensor:
    """The network's displacement for each (moving, fixed) pair, refined when asked."""
    flow = net(moving, fixed).flow
    if refinement is not None and refinement.enabled:
        from jointreg.inference.refine import refine_flow

        flow = refine_flow(moving, fixed, flow, refinement)
    return flow


def propagate_direct(
    net: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    targets: Sequence[int],
    annotated: Sequence[int],
    *,
    num_classes: int,
    ignore_index: int,
    per_side: int = 1,
    radius: float = 6.0,
    batch_size: int = 16,
    device: torch.device | None = None,
    refinement: Refinement | None = None,
) -> RegistrationEstimate:
    """Warp the nearest annotated slices directly onto each target slice (see the module docstring).

    Args:
        net: registration network, ``net(moving, fixed).flow`` ``(B, 2, H, W)`` in pixels.
        images: ``(S, H, W)`` float32 slices.
        labels: ``(S, H, W)`` ids with ``ignore_index`` where unknown.
        targets: slices to estimate.
        annotated: slices whose labels are propagated.
        per_side: sources per side.
        radius: distance scale of the weights (slices).
        batch_size: pairs per forward pass.
        device: where to run (default: the network's).
        refinement: instance optimisation of each pair's field (:mod:`jointreg.inference.refine`);
            ``None`` or 0 steps: the network's field as it is.
    """
    import torch

    from jointreg.spatial.warp import warp_onehot

    with torch.no_grad():
        device = device or module_device(net)
        k = num_classes
        h, w = images.shape[1:]
        numerator = torch.zeros((len(targets), k, h, w), device=device)
        known = torch.zeros((len(targets), h, w), device=device)
        sources: list[list[Source]] = []
        pairs: list[tuple[int, int, float]] = []  # (target position, source slice, weight)
        for position, t in enumerate(targets):
            chosen = [Source(s, abs(t - s), distance_weight(abs(t - s), radius)) for s in nearest_sources(annotated, t, per_side)]
            sources.append(chosen)
            pairs += [(position, s.slice, s.weight) for s in chosen]
        was_training = net.training
        net.eval()
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            moving = _as_tensor(images[[p[1] for p in chunk]], device).unsqueeze(1)
            fixed = _as_tensor(images[[targets[p[0]] for p in chunk]], device).unsqueeze(1)
            flow = _pair_flows(net, moving, fixed, refinement)
            warped = warp_onehot(_onehot(labels[[p[1] for p in chunk]], k, ignore_index, device), flow)
            for i, (position, _, weight) in enumerate(chunk):
                numerator[position] += weight * warped[i, :k]
                known[position] += weight * (1.0 - warped[i, k])
        net.train(was_training)
        return RegistrationEstimate(list(targets), numerator, known, sources)


def propagate_chain(
    net: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    targets: Sequence[int],
    annotated: Sequence[int],
    *,
    num_classes: int,
    ignore_index: int,
    radius: float = 6.0,
    batch_size: int = 16,
    device: torch.device | None = None,
    refinement: Refinement | None = None,
    step_gate: float = 0.0,
) -> RegistrationEstimate:
    """Propagate each annotated slice slice-by-slice until the next annotated one (see the module docstring).

    Every adjacent pair is registered once per direction (batched), then the warps are applied
    in sequence; a target receives the chains of the nearest annotated slice on each side.

    Args:
        step_gate: the percentile ``q`` of the gate applied after every step (0: none); the
            ranges come from ``images`` and ``labels`` on the annotated slices.
    """
    import torch

    from jointreg.inference.verify import appearance_ranges
    from jointreg.spatial.warp import warp_onehot

    with torch.no_grad():
        device = device or module_device(net)
        k = num_classes
        n, h, w = images.shape
        position = {t: i for i, t in enumerate(targets)}
        marks = sorted(annotated)
        is_annotated = set(marks)
        # chains: (start slice, direction, slices visited in order)
        chains: list[tuple[int, int, list[int]]] = []
        for a in marks:
            for step in (1, -1):
                path, s = [], a + step
                while 0 <= s < n:
                    if s in position:
                        path.append(s)
                    if s in is_annotated or s not in position:
                        break
                    s += step
                if path:
                    chains.append((a, step, path))
        # the adjacent registrations every chain needs: (moving, fixed)
        needed = sorted({(s - step, s) for _, step, path in chains for s in path})
        flows: dict[tuple[int, int], torch.Tensor] = {}
        was_training = net.training
        net.eval()
        for start in range(0, len(needed), batch_size):
            chunk = needed[start:start + batch_size]
            moving = _as_tensor(images[[m for m, _ in chunk]], device).unsqueeze(1)
            fixed = _as_tensor(images[[f for _, f in chunk]], device).unsqueeze(1)
            flow = _pair_flows(net, moving, fixed, refinement)
            for i, pair in enumerate(chunk):
                flows[pair] = flow[i:i + 1]
        net.train(was_training)
        ranges = appearance_ranges(images, labels, marks, range(1, k), step_gate)
        numerator = torch.zeros((len(targets), k, h, w), device=device)
        known = torch.zeros((len(targets), h, w), device=device)
        sources: list[list[Source]] = [[] for _ in targets]
        for a, step, path in chains:
            current = _onehot(labels[[a]], k, ignore_index, device)
            for s in path:
                current = warp_onehot(current, flows[(s - step, s)])
                if ranges:
                    current = _gate_step(current, images[s], ranges)
                weight = distance_weight(abs(s - a), radius)
                i = position[s]
                numerator[i] += weight * current[0, :k]
                known[i] += weight * (1.0 - current[0, k])
                sources[i].append(Source(a, abs(s - a), weight))
        for entry in sources:
            entry.sort(key=lambda src: (src.distance, src.slice))
        return RegistrationEstimate(list(targets), numerator, known, sources)


def _gate_step(current: torch.Tensor, image: np.ndarray, ranges: dict[int, tuple[float, float]]) -> torch.Tensor:
    """One chain step's propagated one-hot ``(1, K + 1, H, W)`` (last channel: unknown) with the
    pixels of each class that the appearance gate does not keep moved to background."""
    import torch

    from jointreg.inference.verify import kept_by_appearance

    k = current.shape[1] - 1
    label = current[0, :k].argmax(0)
    label = torch.where(current[0, k] > 0.5, k, label).cpu().numpy()  # unknown pixels belong to no class
    out = current
    for c, (low, high) in ranges.items():
        region = label == c
        if not region.any():
            continue
        drop = region & ~kept_by_appearance(region, image, low, high)
        if drop.any():
            if out is current:
                out = current.clone()
            mask = torch.from_numpy(drop).to(current.device)
            out[0, 0] = torch.where(mask, out[0, 0] + out[0, c], out[0, 0])
            out[0, c] = torch.where(mask, torch.zeros_like(out[0, c]), out[0, c])
    return out


def foreground_agreement(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Soft Dice of two probability maps ``(K, H, W)`` over the foreground classes (1 when both are empty).

    Args:
        a, b: class probabilities, channel 0 = background.
        mask: ``(H, W)`` pixels to compare (default: all).
    """
    fa, fb = a[1:], b[1:]
    if mask is not None:
        fa, fb = fa * mask, fb * mask
    total = float(fa.sum() + fb.sum())
    if total < _EPS:
        return 1.0
    return float(2.0 * (fa * fb).sum()) / total


@dataclass
class FusedSlice:
    """Provenance of one fused target slice."""

    method: str
    registration_weight: float | None = None
    agreement: float | None = None
    uncovered_fraction: float | None = None
    sources: list[Source] = field(default_factory=list)


def fuse(
    mode: str,
    estimate: RegistrationEstimate | None,
    segmentor_probs: torch.Tensor | None,
    *,
    num_classes: int,
) -> tuple[torch.Tensor, list[FusedSlice]]:
    """Combine the registration estimate and the segmentor's probabilities (module docstring).

    Args:
        mode: ``registration``, ``segmentor`` or ``fusion``.
        estimate: from :func:`propagate_direct` / :func:`propagate_chain` (``None``: no source).
        segmentor_probs: ``(T, K, H, W)`` softmax, or ``None`` (registration mode only).
        num_classes: ``K``.

    Returns:
        ``(T, K, H, W)`` fused probabilities and, per target, how it was obtained.

    Raises:
        ValueError: a mode that needs an input that is missing.
    """
    import torch

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode != "registration" and segmentor_probs is None:
        raise ValueError(f"mode {mode!r} needs the segmentor's probabilities")
    no_source = estimate is None or not any(estimate.sources)
    if mode == "segmentor" or (no_source and segmentor_probs is not None):
        return segmentor_probs, [FusedSlice("segmentor") for _ in range(segmentor_probs.shape[0])]
    if estimate is None:
        raise ValueError("without a registration estimate the segmentor's probabilities are needed")
    registered, covered = estimate.probabilities()
    if segmentor_probs is None:
        fallback = torch.zeros_like(registered)
        fallback[:, 0] = 1.0  # background where no source reaches and there is no segmentor
    else:
        fallback = segmentor_probs
    out = torch.empty_like(registered)
    info = []
    for t in range(registered.shape[0]):
        mask = covered[t]
        sources = list(estimate.sources[t])
        uncovered = round(1.0 - float(mask.float().mean()), 6)
        if not sources:
            out[t] = fallback[t]
            info.append(FusedSlice("segmentor" if segmentor_probs is not None else "background", uncovered_fraction=1.0))
            continue
        if mode == "registration":
            out[t] = torch.where(mask, registered[t], fallback[t])
            info.append(FusedSlice("registration", 1.0, None, uncovered, sources))
            continue
        agreement = foreground_agreement(registered[t], fallback[t], mask)
        weight = estimate.confidence(t) * (1.0 + agreement) / 2.0
        fused = weight * registered[t] + (1.0 - weight) * fallback[t]
        out[t] = torch.where(mask, fused, fallback[t])
        info.append(FusedSlice("fusion", round(weight, 6), round(agreement, 6), uncovered, sources))
    return out, info
