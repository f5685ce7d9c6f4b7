"""Warping images and labels by a dense displacement field (the spatial transformer).

Conventions (shared by all of :mod:`jointreg.spatial`):

* A displacement field ("flow") has shape ``(B, D, *S)`` with ``D = len(S)`` spatial dims, is in
  VOXEL units of the grid it lives on, and channel ``d`` is the displacement along spatial axis
  ``d`` of the tensor (the same order as ``S``: ``(X, Y[, Z])`` for our volumes).
* Warping pulls: ``warped(p) = moving(p + u(p))``; registration aims at ``fixed ≈ warped``.
* Voxel ``i`` of an axis of size ``n`` sits at coordinate ``i``; the first and last voxel centres
  are ``0`` and ``n - 1``. This is ``grid_sample``'s ``align_corners=True`` geometry, expressed in
  voxels instead of ``[-1, 1]``.

Why not ``torch.nn.functional.grid_sample``: its float normalisation to ``[-1, 1]`` and back is
not exact, so a zero field slightly blends neighbouring voxels (relative error ~1e-7 per voxel,
enough to change labels at ties and to break "identity is identity" checks). The sampler here
works directly in voxel coordinates: at integer positions the interpolation weights are exactly 0
and 1, so a zero field and whole-voxel shifts are bit-exact. It is built from ``gather`` and
elementwise ops only, so it runs on any device, is differentiable with respect to both the image
and the field, traces with ``torch.jit.trace`` and exports to ONNX (no GridSample operator
needed, 2D and 3D alike). :func:`flow_to_grid_sample_grid` converts a field for code that does use
``grid_sample``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jointreg.spatial.labels import one_hot

LINEAR_MODES = ("bilinear", "trilinear", "linear")
MODES = (*LINEAR_MODES, "nearest")
PADDING_MODES = ("border", "zeros")


def identity_grid(
    size: tuple[int, ...] | torch.Size, *, device=None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Voxel coordinates of every voxel of a grid.

    Args:
        size: spatial shape ``S`` (2 or 3 ints).
        device, dtype: of the result (floating dtype).

    Returns:
        ``(1, D, *S)`` tensor whose channel ``d`` holds each voxel's index along axis ``d``.
    """
    axes = [torch.arange(int(n), device=device, dtype=dtype) for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def _check(image: Tensor, flow: Tensor, mode: str, padding_mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}; got {padding_mode!r}")
    dims = flow.dim() - 2
    if dims < 1 or flow.shape[1] != dims:
        raise ValueError(f"flow must be (B, D, *S) with D = len(S); got shape {tuple(flow.shape)}")
    if not flow.is_floating_point():
        raise TypeError(f"flow must be a floating-point tensor; got {flow.dtype}")
    if image.dim() != flow.dim() or tuple(image.shape[2:]) != tuple(flow.shape[2:]):
        raise ValueError(
            f"image {tuple(image.shape)} and flow {tuple(flow.shape)} must share the spatial shape "
            "(image (B, C, *S), flow (B, D, *S))"
        )
    if image.shape[0] not in (1, flow.shape[0]):
        raise ValueError(f"image batch {image.shape[0]} must be 1 or the flow's batch {flow.shape[0]}")
    if mode != "nearest" and not image.is_floating_point():
        raise TypeError(f"linear warping needs a floating-point image; got {image.dtype} (use mode='nearest')")


def _row_major_strides(size: list[int]) -> list[int]:
    strides = [1] * len(size)
    for d in range(len(size) - 2, -1, -1):
        strides[d] = strides[d + 1] * size[d + 1]
    return strides


def sample(image: Tensor, coords: Tensor, *, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Sample ``image`` at absolute voxel coordinates.

    Args:
        image: ``(B or 1, C, *S)``; any dtype for ``mode="nearest"``, floating for linear modes.
        coords: ``(B, D, *S)`` floating voxel coordinates (channel ``d`` = position along axis ``d``).
        mode: ``"bilinear"`` (= trilinear in 3D; ``"linear"``/``"trilinear"`` are synonyms) or
            ``"nearest"`` (rounds half to even, like ``grid_sample``).
        padding_mode: ``"border"`` repeats the edge voxels outside the grid; ``"zeros"`` reads 0
            there (linear mode fades to 0 over the one voxel beyond the edge, as ``grid_sample``).

    Returns:
        ``(B, C, *S)`` in ``image``'s dtype.
    """
    _check(image, coords, mode, padding_mode)
    return _sample(image, coords, mode, padding_mode)


def _sample(image: Tensor, coords: Tensor, mode: str, padding_mode: str) -> Tensor:
    # A NaN displacement (a diverged network) must give NaN, not an out-of-range index:
    # sample at a safe position, then put NaN back where the coordinates were not finite.
    bad = ~torch.isfinite(coords).all(dim=1, keepdim=True)
    coords = torch.nan_to_num(coords, nan=0.0)
    out = _sample_finite(image, coords, mode, padding_mode)
    if out.is_floating_point():
        out = torch.where(bad, torch.full_like(out, float("nan")), out)
    return out


def _sample_finite(image: Tensor, coords: Tensor, mode: str, padding_mode: str) -> Tensor:
    batch, channels = coords.shape[0], image.shape[1]
    out_shape = (batch, channels, *coords.shape[2:])
    size = [int(n) for n in image.shape[2:]]
    dims = len(size)
    if mode == "nearest":
        coords = coords.round()  # before any shift, so that ties round as grid_sample does
    if padding_mode == "zeros":
        # One voxel of zeros around the grid turns "zeros" into "border" of the padded grid.
        image = F.pad(image, (1, 1) * dims)
        coords = coords + 1
        size = [n + 2 for n in size]
    strides = _row_major_strides(size)
    flat = image.reshape(image.shape[0], channels, -1)
    if flat.shape[0] != batch:
        flat = flat.expand(batch, channels, flat.shape[2])

    def gather(index: Tensor) -> Tensor:
        return torch.gather(flat, 2, index.reshape(batch, 1, -1).expand(batch, channels, -1))

    if mode == "nearest":
        index = None
        for d in range(dims):
            i = coords[:, d].clamp(0, size[d] - 1).long() * strides[d]
            index = i if index is None else index + i
        return gather(index).reshape(out_shape)

    base = None
    lower, upper = [], []
    for d in range(dims):
        q = coords[:, d].clamp(0, size[d] - 1)
        # The cell's lower corner; for q == n - 1 take the cell below with weight 1 on its top.
        q0 = q.floor().clamp(max=max(size[d] - 2, 0))
        t = (q - q0).to(image.dtype)
        lower.append(1 - t)
        upper.append(t)
        i = q0.long() * strides[d]
        base = i if base is None else base + i
    out = None
    for corner in itertools.product((0, 1), repeat=dims):
        offset = sum(strides[d] for d, c in enumerate(corner) if c and size[d] > 1)
        weight = None
        for d, c in enumerate(corner):
            w = upper[d] if c else lower[d]
            weight = w if weight is None else weight * w
        term = gather(base + offset if offset else base) * weight.reshape(batch, 1, -1)
        out = term if out is None else out + term
    return out.reshape(out_shape)


def warp(
    image: Tensor,
    flow: Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
    grid: Tensor | None = None,
) -> Tensor:
    """Pull-warp ``image`` by ``flow``: ``warped(p) = image(p + flow(p))``.

    Args:
        image: ``(B or 1, C, *S)``; floating for linear modes, any dtype for ``"nearest"``.
        flow: ``(B, D, *S)`` displacement in voxels, channel ``d`` along spatial axis ``d``.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding_mode: ``"border"`` or ``"zeros"`` (values read outside the grid).
        grid: the identity grid ``(1, D, *S)`` (see :func:`identity_grid`) when the caller caches
            it; built on the fly otherwise.

    Returns:
        ``(B, C, *S)`` warped image in ``image``'s dtype. A zero field returns ``image`` exactly.

    Example:
        >>> img = torch.arange(12.0).reshape(1, 1, 3, 4)
        >>> flow = torch.zeros(1, 2, 3, 4)
        >>> flow[:, 0] = 1.0  # every voxel reads the voxel one step further along axis 0
        >>> warp(img, flow)[0, 0]
        tensor([[ 4.,  5.,  6.,  7.],
                [ 8.,  9., 10., 11.],
                [ 8.,  9., 10., 11.]])
    """
    _check(image, flow, mode, padding_mode)
    if flow.dtype != coordinate_dtype(flow):
        flow = flow.float()
    if grid is None:
        grid = identity_grid(flow.shape[2:], device=flow.device, dtype=flow.dtype)
    return _sample(image, grid + flow, mode, padding_mode)


def coordinate_dtype(flow: Tensor) -> torch.dtype:
    """The dtype of the sampling coordinates for ``flow``: float32 for a half-precision field
    (from a network under bfloat16/float16 autocast), whose 8 or 11 significant bits would round
    the absolute coordinate 100.3 to 100 or 100.25; the field's own dtype otherwise."""
    return torch.float32 if flow.dtype in (torch.float16, torch.bfloat16) else flow.dtype


class Warp(nn.Module):
    """:func:`warp` as a module that caches the identity grid.

    The grid is a non-persistent buffer (never saved in a ``state_dict``) built from the flow's own
    shape, device and dtype, and rebuilt when any of these changes; so the module fits any input
    size and nothing about the size is stored in checkpoints.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}; got {padding_mode!r}")
        self.mode = mode
        self.padding_mode = padding_mode
        self.register_buffer("grid", torch.empty(0), persistent=False)

    def identity(self, flow: Tensor) -> Tensor:
        """The cached identity grid ``(1, D, *S)`` matching ``flow``."""
        if torch.jit.is_tracing():
            # Build the grid inside the traced graph (not from a cache that the first call
            # fills), so that every traced invocation records the same operations.
            return identity_grid(flow.shape[2:], device=flow.device, dtype=coordinate_dtype(flow))
        grid = self.grid
        stale = (
            grid.dim() != flow.dim()
            or tuple(grid.shape[2:]) != tuple(flow.shape[2:])
            or grid.device != flow.device
            or grid.dtype != coordinate_dtype(flow)
            # A grid made under inference_mode cannot take part in autograd later.
            or (grid.is_inference() and not torch.is_inference_mode_enabled())
        )
        if stale:
            grid = identity_grid(flow.shape[2:], device=flow.device, dtype=coordinate_dtype(flow))
            self.grid = grid
        return grid

    def forward(self, image: Tensor, flow: Tensor) -> Tensor:
        """Warp ``image`` ``(B or 1, C, *S)`` by ``flow`` ``(B, D, *S)``; see :func:`warp`."""
        return warp(image, flow, mode=self.mode, padding_mode=self.padding_mode, grid=self.identity(flow))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"


def warp_onehot(probs: Tensor, flow: Tensor, *, grid: Tensor | None = None) -> Tensor:
    """Differentiable label warping for training: linearly warp class probabilities.

    Uses border padding, so that every output voxel is a convex combination of input voxels and
    channels that summed to 1 still sum to 1.

    Args:
        probs: ``(B or 1, C, *S)`` one-hot labels or class probabilities (floating).
        flow: ``(B, D, *S)`` displacement in voxels.
        grid: optional cached identity grid ``(1, D, *S)``.

    Returns:
        ``(B, C, *S)`` warped probabilities.
    """
    return warp(probs, flow, mode="bilinear", padding_mode="border", grid=grid)


def warp_labels(
    labels: Tensor,
    flow: Tensor,
    num_classes: int,
    *,
    mode: str = "linear",
    ignore_index: int | None = None,
    grid: Tensor | None = None,
) -> Tensor:
    """Warp an integer label map without blurring or dropping structures.

    ``mode="linear"`` one-hot encodes the labels (classes ``0 .. num_classes - 1`` plus, when
    ``ignore_index`` is given, one extra channel for the ignore label so that unknown regions move
    with the anatomy), warps the channels linearly and takes the argmax. Exact ties (e.g. a
    one-voxel-wide structure under a half-voxel shift) go to the HIGHER label id, so thin
    foreground structures survive instead of vanishing into background; the ignore label, when
    present, counts as the highest. ``mode="nearest"`` picks the nearest voxel's label.

    Args:
        labels: ``(B or 1, 1, *S)`` integer label ids.
        flow: ``(B, D, *S)`` displacement in voxels.
        num_classes: number of classes proper (background included, ignore excluded).
        mode: ``"linear"`` or ``"nearest"``.
        ignore_index: the ignore label id, or ``None`` if the labels have none.
        grid: optional cached identity grid ``(1, D, *S)``.

    Returns:
        ``(B, 1, *S)`` warped labels, same dtype as ``labels``. Outside the grid the edge labels
        are repeated (border padding).
    """
    if labels.dim() < 3 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (B, 1, *S); got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor; got {labels.dtype}")
    if mode == "nearest":
        return warp(labels, flow, mode="nearest", padding_mode="border", grid=grid)
    if mode not in LINEAR_MODES:
        raise ValueError(f"mode must be 'linear' or 'nearest'; got {mode!r}")
    onehot = one_hot(labels, num_classes, ignore_index=ignore_index, dtype=flow.dtype)
    probs = warp_onehot(onehot, flow, grid=grid)
    channels = probs.shape[1]
    # argmax returns the first maximum; flipping the channels makes ties go to the highest id.
    index = (channels - 1) - torch.flip(probs, dims=(1,)).argmax(dim=1, keepdim=True)
    if ignore_index is not None:
        index = torch.where(index == num_classes, torch.full_like(index, ignore_index), index)
    return index.to(labels.dtype)


def flow_to_grid_sample_grid(flow: Tensor, grid: Tensor | None = None) -> Tensor:
    """The ``grid`` argument that makes ``F.grid_sample(image, grid, align_corners=True)`` warp
    like :func:`warp` (for interoperability with MONAI, VoxelMorph and other grid_sample code).

    Args:
        flow: ``(B, D, *S)`` displacement in voxels.
        grid: optional cached identity grid ``(1, D, *S)``.

    Returns:
        ``(B, *S, D)`` normalised coordinates in ``[-1, 1]`` (inside the image).
    """
    if flow.dtype != coordinate_dtype(flow):
        flow = flow.float()
    if grid is None:
        grid = identity_grid(flow.shape[2:], device=flow.device, dtype=flow.dtype)
    dims = flow.shape[1]
    size = torch.tensor([max(int(n) - 1, 1) for n in flow.shape[2:]], device=flow.device, dtype=flow.dtype)
    coords = (grid + flow) * (2 / size).view(1, dims, *([1] * dims)) - 1
    # Our channel d is tensor axis 2 + d, i.e. (X, Y[, Z]) for an (X, Y[, Z]) array; grid_sample
    # reads its last dimension in the reversed order (x = last axis W, y = H, z = D), so the
    # channels are moved last and flipped.
    return coords.movedim(1, -1).flip(-1)
