"""Image panels for TensorBoard: fixed | moving | warped | difference | deformation grid | labels,
and the segmentation panel of each validation (fixed slices, ground-truth and predicted contours,
drawn by :mod:`jointreg.metrics.montage`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from jointreg.data.slices import SlicedVolume
from jointreg.inference.predict import channel_argmax, predict_stack
from jointreg.inference.scoring import truth_labels
from jointreg.metrics.montage import CLASS_COLOURS, MontageColumn, choose_slices, render_montage

_COLOURS = CLASS_COLOURS.astype(np.float32) / 255.0  # one palette for panels and montages


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


def panel_slices(volumes: Sequence[SlicedVolume], count: int, *, ignore_index: int) -> list[tuple[int, int]]:
    """``count`` fixed ``(volume, slice)`` slots to draw at every validation.

    Spread over the volumes (one each while there are enough), and within a volume evenly
    through its labelled extent (:func:`~jointreg.metrics.montage.choose_slices` on the truth
    alone): chosen from the labels, never from predictions, so every validation shows the same
    slices.
    """
    labelled = [v for v, volume in enumerate(volumes) if truth_labels(volume) is not None]
    if not labelled or count < 1:
        return []
    per_volume = -(-count // len(labelled))
    picks = [choose_slices(truth_labels(volumes[v]), [], per_volume, ignore_label=ignore_index) for v in labelled]
    # Round-robin over the volumes, so that a few slots still cover several of them.
    slots = [(v, chosen[rank]) for rank in range(per_volume) for v, chosen in zip(labelled, picks) if rank < len(chosen)]
    return slots[:count]


def segmentation_montage(
    segmentor: torch.nn.Module,
    volumes: Sequence[SlicedVolume],
    slots: Sequence[tuple[int, int]],
    labels: Mapping[str, int],
    *,
    tile: int = 128,
) -> np.ndarray:
    """The slots' images with ground-truth and predicted contours (RGB ``uint8``; one column per
    slot, :func:`jointreg.metrics.montage.render_montage`), on the training grid."""
    images = np.stack([volumes[v].images[s] for v, s in slots])
    predicted = channel_argmax(predict_stack(segmentor, images), 1)
    columns = [
        MontageColumn(np.clip(images[i], 0.0, 1.0), truth_labels(volumes[v])[s], (predicted[i],),
                      caption=f"{volumes[v].case} s{s}")
        for i, (v, s) in enumerate(slots)
    ]
    foreground = {n: int(i) for n, i in labels.items() if int(i) != 0}
    return render_montage(columns, foreground, rows=("prediction",), tile=tile)

