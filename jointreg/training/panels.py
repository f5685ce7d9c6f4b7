"""Image panels for TensorBoard: fixed | moving | warped | difference | deformation grid | labels."""

from __future__ import annotations

import numpy as np
import torch

_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=np.float32
) / 255.0


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0.0, 1.0)
    return np.repeat(image[..., None], 3, axis=-1)


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.45, ignore_index: int | None = None) -> np.ndarray:
    """RGB ``(H, W, 3)`` of a grey image with coloured label regions (ignore left uncoloured)."""
    rgb = _grey(image)
    label = label.astype(np.int64)
    colour = _COLOURS[np.clip(label, 0, len(_COLOURS) - 1)]
    mask = label > 0
    if ignore_index is not None:
        mask &= label != ignore_index
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour[mask]
    return rgb


def grid_image(flow: torch.Tensor, spacing: int = 8) -> np.ndarray:
    """A regular grid warped by a 2D flow ``(2, H, W)``, as an RGB image."""
    from jointreg.spatial.warp import warp

    h, w = flow.shape[-2:]
    lines = torch.zeros(1, 1, h, w, dtype=flow.dtype, device=flow.device)
    lines[..., ::spacing, :] = 1.0
    lines[..., :, ::spacing] = 1.0
    warped = warp(lines, flow[None])[0, 0].detach().cpu().numpy()
    return _grey(1.0 - warped)


def registration_panel(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    warped: torch.Tensor,
    flow: torch.Tensor,
    *,
    warped_label: torch.Tensor | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:
    """One row ``(H, 6·W, 3)`` for the first pair of a batch (2D only)."""
    f = fixed[0, 0].detach().float().cpu().numpy()
    m = moving[0, 0].detach().float().cpu().numpy()
    wp = warped[0, 0].detach().float().cpu().numpy()
    diff = np.abs(wp - f)
    tiles = [_grey(f), _grey(m), _grey(wp), _grey(diff / max(float(diff.max()), 1e-6)), grid_image(flow[0].detach().float())]
    if warped_label is not None:
        tiles.append(overlay(f, warped_label[0, 0].detach().cpu().numpy(), ignore_index=ignore_index))
    return np.concatenate(tiles, axis=1)


def segmentation_panel(image: torch.Tensor, prediction: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> np.ndarray:
    """``image | prediction overlay | target overlay`` for the first sample."""
    im = image[0, 0].detach().float().cpu().numpy()
    return np.concatenate(
        [_grey(im), overlay(im, prediction[0].cpu().numpy()), overlay(im, target[0, 0].cpu().numpy(), ignore_index=ignore_index)],
        axis=1,
    )
