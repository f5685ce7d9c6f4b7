"""Registration metrics, one value per pair: image agreement between the fixed and the warped
moving image (NCC, NMI, SSIM, MSE) and regularity of the displacement field (% folding, SDlogJ).

Everything runs without gradients and returns ``(B,)`` tensors on the input's device; images
are ``(B, C, *S)``, fields ``(B, D, *S)`` in voxels, 2D or 3D. Formulas: ``docs/registration.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jointreg.losses import similarity as _similarity
from jointreg.spatial.jacobian import jacobian_determinant

SDLOGJ_CLIP = 1e-9


@torch.no_grad()
def ncc(warped: Tensor, fixed: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Global normalised cross-correlation (Pearson's r over voxels and channels) per pair,
    in ``[-1, 1]``, higher = better; see :func:`jointreg.losses.similarity.ncc`."""
    return _similarity.ncc(warped, fixed, mask=mask, reduction="none")


@torch.no_grad()
def nmi(warped: Tensor, fixed: Tensor, *, bins: int = 32, mask: Tensor | None = None) -> Tensor:
    """Normalised mutual information ``2 MI / (H(warped) + H(fixed))`` per pair, in ``[0, 1]``
    (1 for identical images): joint histogram of ``bins`` hard bins spanning each image's own
    min–max range."""
    return _similarity.mutual_information(
        warped, fixed, bins=bins, sigma_ratio=0.0, normalized=True, mask=mask, reduction="none"
    )


@torch.no_grad()
def ssim(warped: Tensor, fixed: Tensor, *, data_range: float | None = None, window: int = 11) -> Tensor:
    """SSIM per pair (Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, valid region); the dynamic
    range ``L`` is the fixed image's ``max - min`` per pair unless ``data_range`` is given."""
    return _similarity.ssim(warped, fixed, data_range=data_range, window=window, reduction="none")


@torch.no_grad()
def mse(warped: Tensor, fixed: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean squared intensity difference per pair (lower = better)."""
    return _similarity.mse(warped, fixed, mask=mask, reduction="none")


@torch.no_grad()
def folding_percent(flow: Tensor) -> Tensor:
    """Percentage of voxels where the deformation folds: ``100 · #{p : det J_φ(p) <= 0} / N``.

    ``J_φ = I + ∇u`` of ``φ(p) = p + u(p)`` by central differences (one-sided at the edges, all
    ``N`` voxels counted); see :func:`jointreg.spatial.jacobian_determinant`.

    Args:
        flow: ``(B, D, *S)`` displacement in voxels.

    Returns:
        ``(B,)`` percentages in ``[0, 100]``.
    """
    det = jacobian_determinant(flow)
    return (det <= 0).flatten(1).to(flow.dtype).mean(1) * 100


@torch.no_grad()
def sdlogj(flow: Tensor, *, clip: float = SDLOGJ_CLIP) -> Tensor:
    """Standard deviation of the log Jacobian determinant over the interior.

    ``SDlogJ = std_p log(max(det J_φ(p), clip))`` over the voxels at least one voxel away from
    every edge (population std, ``ddof = 0``). 0 for any field with a constant determinant
    (identity, translations, uniform scalings); smooth, plausible fields score ~0.1 or less.

    Args:
        flow: ``(B, D, *S)`` displacement in voxels, every spatial size >= 3.
        clip: lower bound of the determinant before the log (folded voxels).

    Returns:
        ``(B,)`` SDlogJ values.
    """
    if min(flow.shape[2:]) < 3:
        raise ValueError(f"sdlogj needs every spatial size >= 3 (interior voxels); got {tuple(flow.shape[2:])}")
    det = jacobian_determinant(flow)
    inner = det[(slice(None), *(slice(1, -1) for _ in range(det.dim() - 1)))]
    log_det = torch.log(inner.clamp_min(clip)).flatten(1)
    return log_det.std(dim=1, unbiased=False)


@torch.no_grad()
def registration_metrics(warped: Tensor, fixed: Tensor, flow: Tensor | None = None) -> dict[str, Tensor]:
    """All registration metrics of a batch: ``ncc``, ``nmi``, ``ssim``, ``mse`` and, with a
    ``flow``, ``folding_percent`` and ``sdlogj``; each a ``(B,)`` tensor."""
    scores = {
        "ncc": ncc(warped, fixed),
        "nmi": nmi(warped, fixed),
        "ssim": ssim(warped, fixed),
        "mse": mse(warped, fixed),
    }
    if flow is not None:
        scores["folding_percent"] = folding_percent(flow)
        scores["sdlogj"] = sdlogj(flow)
    return scores
