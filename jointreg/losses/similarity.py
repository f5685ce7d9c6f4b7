"""Image similarity for registration: MSE, NCC, local NCC, SSIM, mutual information.

Pure functions return one value per pair (``reduction="none"``: shape ``(B,)``) or their mean /
sum over the batch; images are ``(B, C, *S)`` (2D or 3D), device and dtype follow the input,
``mask`` (optional) is ``(B, 1, *S)`` or ``(B, C, *S)`` voxel weights (1 = counts, 0 = ignored).
All but :func:`mse` are similarities (higher = better); the loss modules at the end turn them into
losses (``1 - similarity``, ``-MI``) and :func:`create_similarity_loss` resolves them by name.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jointreg.errors import ConfigError

REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")


def _check_pair(x: Tensor, y: Tensor, mask: Tensor | None) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() < 3:
        raise ValueError(f"images must be (B, C, *S); got shape {tuple(x.shape)}")
    if mask is not None and (mask.dim() != x.dim() or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, 1 or C, *S) for images {tuple(x.shape)}")


def _weighted_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-pair mean over channels and voxels, weighted by ``mask``; ``(B,)``."""
    if mask is None:
        return values.flatten(1).mean(1)
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(torch.finfo(values.dtype).tiny)


def mse(x: Tensor, y: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Mean squared error ``mean((x - y)**2)`` per pair (a distance: lower = better)."""
    _check_pair(x, y, mask)
    return _reduce(_weighted_mean((x - y) ** 2, mask), reduction)


def ncc(x: Tensor, y: Tensor, *, mask: Tensor | None = None, eps: float = 1e-10, reduction: str = "mean") -> Tensor:
    """Global normalised cross-correlation (Pearson's r over all voxels and channels) per pair.

    ``ncc = Σ (x - x̄)(y - ȳ) / sqrt(Σ (x - x̄)² · Σ (y - ȳ)² + eps)`` (weighted by ``mask``), in
    ``[-1, 1]``; 1 for ``y = a·x + b`` with ``a > 0``; 0 when either image is constant. ``eps``
    (intensity⁴ units, per-voxel variances multiplied) only guards that case.
    """
    _check_pair(x, y, mask)
    x_centred = x - _weighted_mean(x, mask).view(-1, *([1] * (x.dim() - 1)))
    y_centred = y - _weighted_mean(y, mask).view(-1, *([1] * (y.dim() - 1)))
    cross = _weighted_mean(x_centred * y_centred, mask)
    var_x = _weighted_mean(x_centred**2, mask)
    var_y = _weighted_mean(y_centred**2, mask)
    return _reduce(cross / torch.sqrt(var_x * var_y + eps), reduction)


def _separable(x: Tensor, kernel: Tensor, padding: int) -> Tensor:
    """Filter every channel of ``x`` ``(N, C, *S)`` with the same 1D ``kernel`` along each axis."""
    dims = x.dim() - 2
    channels = x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    k = kernel.to(dtype=x.dtype, device=x.device)
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = k.numel()
        pad = [0] * dims
        pad[axis] = padding
        x = conv(x, k.view(1, 1, *shape).expand(channels, 1, *shape), padding=tuple(pad), groups=channels)
    return x


def _check_window(window: int, size: tuple[int, ...], what: str) -> None:
    if window < 1 or window % 2 == 0:
        raise ValueError(f"{what} window must be a positive odd number; got {window}")
    if min(size) < window:
        raise ValueError(f"{what} window {window} is larger than the image {tuple(size)}; pass a smaller window")


def lncc(
    x: Tensor,
    y: Tensor,
    *,
    window: int = 9,
    mask: Tensor | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> Tensor:
    """Local (windowed) normalised cross-correlation, squared, as in MONAI (and VoxelMorph).

    Over the ``window``-wide box (cube) of ``N = window**D`` voxels around each voxel ``p``,
    the image zero-padded at its border (MONAI's and VoxelMorph's convention), with window SUMS::

        cross(p) = Σ xy - Σx Σy / N,   var_x(p) = Σ x² - (Σx)² / N,   var_y(p) likewise,
        lncc(p)  = cross(p)² / (max(var_x(p), eps) · max(var_y(p), eps))

    then the (masked) mean over voxels and channels. In ``[0, 1]``; → 1 where ``y`` is an
    affine function of ``x`` (either sign). ``eps`` (intensity² · voxel units, MONAI's
    ``smooth_dr``) only keeps flat windows (``cross = 0``) from dividing by zero; faint but real
    texture (MR background, ~30 % of the windows of a CHAOS-T2 slice) counts fully.

    Equals ``-monai.losses.LocalNormalizedCrossCorrelationLoss(kernel_type="rectangular",
    kernel_size=window)`` (tested to 1e-5, 2D and 3D). VoxelMorph's ``NCC`` adds ``eps`` to the
    product ``var_x · var_y`` instead, which scores windows with ``var_x · var_y`` below
    ``eps`` near 0: the same value on textured windows, lower on faint ones (CHAOS-T2 slices:
    0.41 against 0.51). Before this definition, ``eps`` was added to the product of window
    MEANS, i.e. weighted ``N²`` times more (6561× for the default 2D window), and windows were
    shrunk at the border: 0.25 on that CHAOS-T2 pair.
    """
    _check_pair(x, y, mask)
    _check_window(window, tuple(x.shape[2:]), "lncc")
    channels = x.shape[1]
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    box = torch.ones(window, dtype=x.dtype, device=x.device)
    sum_x, sum_y, sum_xx, sum_yy, sum_xy = _separable(stats, box, window // 2).split(channels, dim=1)
    count = float(window ** (x.dim() - 2))
    cross = sum_xy - sum_x * sum_y / count
    var_x = (sum_xx - sum_x * sum_x / count).clamp_min(eps)
    var_y = (sum_yy - sum_y * sum_y / count).clamp_min(eps)
    return _reduce(_weighted_mean(cross**2 / (var_x * var_y), mask), reduction)


def _window_1d(window: int, kernel: str, sigma: float, dtype, device) -> Tensor:
    if kernel == "box":
        return torch.full((window,), 1.0 / window, dtype=dtype, device=device)
    if kernel == "gaussian":
        offsets = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
        weights = torch.exp(-(offsets**2) / (2 * sigma**2))
        return weights / weights.sum()
    raise ValueError(f"kernel must be 'gaussian' or 'box'; got {kernel!r}")


def ssim(
    x: Tensor,
    y: Tensor,
    *,
    window: int = 11,
    kernel: str = "gaussian",
    sigma: float = 1.5,
    data_range: float | None = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Structural similarity (Wang et al. 2004) per pair, 2D or 3D.

    Local statistics under a Gaussian (``sigma``) or box window of ``window`` voxels per axis,
    computed on the "valid" region (no padding; the map is ``window - 1`` voxels smaller per
    axis, as in scikit-image's mean and pytorch-msssim)::

        ssim(p) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
        C1 = (k1 L)², C2 = (k2 L)²

    averaged over the (masked) valid voxels and channels. ``L = data_range``; ``None`` takes
    ``max(y) - min(y)`` of each pair (``y`` is the reference). 1 for identical images.
    """
    _check_pair(x, y, mask)
    _check_window(window, tuple(x.shape[2:]), "ssim")
    channels = x.shape[1]
    if data_range is None:
        flat = y.detach().flatten(1)
        value_range = (flat.max(1).values - flat.min(1).values).clamp_min(torch.finfo(y.dtype).eps)
        value_range = value_range.view(-1, *([1] * (x.dim() - 1)))
    else:
        value_range = torch.as_tensor(float(data_range), dtype=x.dtype, device=x.device)
    c1 = (k1 * value_range) ** 2
    c2 = (k2 * value_range) ** 2
    weights = _window_1d(window, kernel, sigma, x.dtype, x.device)
    stats = _separable(torch.cat([x, y, x * x, y * y, x * y], dim=1), weights, 0)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(channels, dim=1)
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    if mask is not None:
        half = window // 2
        mask = mask[(slice(None), slice(None), *(slice(half, n - half) for n in mask.shape[2:]))]
    return _reduce(_weighted_mean(ssim_map, mask), reduction)


def mutual_information(
    x: Tensor,
    y: Tensor,
    *,
    bins: int = 32,
    sigma_ratio: float = 0.5,
    value_range: tuple[float, float] | None = None,
    normalized: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-10,
    reduction: str = "mean",
) -> Tensor:
    """Mutual information by Parzen windowing (differentiable), per pair, in nats.

    Intensities are mapped to ``[0, 1]`` (by ``value_range``, clamped, or each image's own
    min/max), each voxel spreads a Gaussian weight (``sigma = sigma_ratio`` × bin spacing) over
    ``bins`` equally spaced bin centres (normalised to sum 1), and the joint histogram is
    ``p(a, b) = Σ_voxels w_x(a) w_y(b) / N``. Then ``MI = Σ p(a, b) log(p(a, b) / (p(a) p(b)))``.
    ``sigma_ratio=0`` uses hard binning (nearest bin centre; not differentiable, for evaluation).
    With ``normalized=True``: ``NMI = 2 MI / (H(x) + H(y))`` in ``[0, 1]``; 1 for ``x = y`` with
    hard binning (Parzen smoothing spreads the joint histogram, so soft NMI stays below 1).
    Channels are treated as more samples.
    """
    _check_pair(x, y, mask)
    if bins < 2:
        raise ValueError(f"bins must be >= 2; got {bins}")

    def to_unit(image: Tensor) -> Tensor:
        flat = image.flatten(1)
        if value_range is not None:
            low, high = value_range
            return ((flat - low) / (high - low)).clamp(0, 1)
        low = flat.detach().min(1, keepdim=True).values
        high = flat.detach().max(1, keepdim=True).values
        return (flat - low) / (high - low).clamp_min(torch.finfo(image.dtype).eps)

    centres = torch.linspace(0, 1, bins, dtype=x.dtype, device=x.device)
    sigma = sigma_ratio / (bins - 1)

    def parzen(values: Tensor) -> Tensor:  # (B, N) -> (B, N, bins), rows sum to 1
        if sigma_ratio == 0:
            nearest = torch.round(values.detach() * (bins - 1)).long()
            return F.one_hot(nearest, bins).to(values.dtype)
        w = torch.exp(-((values.unsqueeze(-1) - centres) ** 2) / (2 * sigma**2))
        return w / w.sum(-1, keepdim=True)

    wx, wy = parzen(to_unit(x)), parzen(to_unit(y))
    if mask is None:
        voxel_weights = torch.ones_like(wx[..., 0])
    else:
        voxel_weights = mask.to(x.dtype).expand_as(x).flatten(1)
    total = voxel_weights.sum(1).clamp_min(torch.finfo(x.dtype).tiny).view(-1, 1, 1)
    joint = torch.bmm((wx * voxel_weights.unsqueeze(-1)).transpose(1, 2), wy) / total  # (B, bins, bins)
    px = joint.sum(2, keepdim=True)
    py = joint.sum(1, keepdim=True)
    mi = (joint * torch.log((joint + eps) / (px * py + eps))).sum((1, 2))
    if normalized:
        hx = -(px * torch.log(px + eps)).sum((1, 2))
        hy = -(py * torch.log(py + eps)).sum((1, 2))
        mi = 2 * mi / (hx + hy).clamp_min(eps)
    return _reduce(mi, reduction)


def nmi(x: Tensor, y: Tensor, **kwargs) -> Tensor:
    """Normalised mutual information ``2 MI / (H(x) + H(y))``; see :func:`mutual_information`."""
    return mutual_information(x, y, normalized=True, **kwargs)


# --- losses ----------------------------------------------------------------------------------


class _SimilarityLoss(nn.Module):
    """``forward(warped, fixed, mask=None) -> scalar``; lower is better."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class MSELoss(_SimilarityLoss):
    """``mse(warped, fixed)``."""

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction=reduction)

    def forward(self, warped: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Tensor:
        return mse(warped, fixed, mask=mask, **self.options)


class NCCLoss(_SimilarityLoss):
    """``1 - ncc(warped, fixed)``."""

    def __init__(self, eps: float = 1e-10, reduction: str = "mean"):
        super().__init__(eps=eps, reduction=reduction)

    def forward(self, warped: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Tensor:
        return 1 - ncc(warped, fixed, mask=mask, **self.options)


class LNCCLoss(_SimilarityLoss):
    """``1 - lncc(warped, fixed)`` with a ``window``-voxel box (MONAI's LNCC loss + 1)."""

    def __init__(self, window: int = 9, eps: float = 1e-5, reduction: str = "mean"):
        super().__init__(window=window, eps=eps, reduction=reduction)

    def forward(self, warped: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Tensor:
        return 1 - lncc(warped, fixed, mask=mask, **self.options)


class SSIMLoss(_SimilarityLoss):
    """``1 - ssim(warped, fixed)`` (``data_range=None``: the fixed image's range per pair)."""

    def __init__(
        self, window: int = 11, kernel: str = "gaussian", sigma: float = 1.5,
        data_range: float | None = 1.0, reduction: str = "mean",
    ):
        super().__init__(window=window, kernel=kernel, sigma=sigma, data_range=data_range, reduction=reduction)

    def forward(self, warped: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Tensor:
        return 1 - ssim(warped, fixed, mask=mask, **self.options)


class MILoss(_SimilarityLoss):
    """``-MI(warped, fixed)`` (nats), or ``1 - NMI`` with ``normalized=True``."""

    def __init__(
        self, bins: int = 32, sigma_ratio: float = 0.5, value_range: tuple[float, float] | None = None,
        normalized: bool = False, reduction: str = "mean",
    ):
        super().__init__(bins=bins, sigma_ratio=sigma_ratio, value_range=value_range, normalized=normalized,
                         reduction=reduction)

    def forward(self, warped: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Tensor:
        value = mutual_information(warped, fixed, mask=mask, **self.options)
        return 1 - value if self.options["normalized"] else -value


SIMILARITY_LOSSES: dict[str, type[_SimilarityLoss]] = {
    "mse": MSELoss,
    "ncc": NCCLoss,
    "lncc": LNCCLoss,
    "ssim": SSIMLoss,
    "mi": MILoss,
}


def create_similarity_loss(name: str, **kwargs) -> nn.Module:
    """Build a similarity loss by name (``mse``, ``ncc``, ``lncc``, ``ssim``, ``mi``).

    Raises:
        ConfigError: unknown name or option (the message lists the valid ones).
    """
    cls = SIMILARITY_LOSSES.get(name)
    if cls is None:
        raise ConfigError(f"unknown similarity {name!r}; valid names: {', '.join(SIMILARITY_LOSSES)}")
    valid = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"similarity {name!r}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return cls(**kwargs)

