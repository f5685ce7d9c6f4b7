"""Per-case montages: a few slices of a volume with ground-truth and predicted contours.

One picture per case lets a person judge a whole dataset of predictions or pseudo-labels by
eye in minutes, outside TensorBoard. Rendering is plain numpy (pillow only draws the text and
encodes the PNG), so a report of hundreds of cases renders in seconds and no plotting backend
is involved. The layout of :func:`render_montage`::

    title (case, scores)
    columns: the chosen slices, captioned
    rows:    "ground truth" (class contours), then one row per prediction: the ground-truth
             contours in white, the prediction's contours over them in the class colours, so a
             disagreement shows as two separate lines
    legend:  the class colours

A contour is the mask minus its erosion (4-neighbourhood, the image border counting as
outside): exactly the mask's pixels that touch a pixel outside it. Colours follow the class id
(:data:`CLASS_COLOURS`, the palette of the TensorBoard panels too).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

CLASS_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=np.uint8
)
"""RGB colour of class id ``i`` (background 0 unused); ids past the end cycle through 1..8."""

TRUTH_COLOUR = np.array([255, 255, 255], np.uint8)
"""The ground-truth contours under a prediction's."""

DEFAULT_SLICES = 4
DEFAULT_TILE = 160
IMAGE_MAX = 215.0
"""The brightest grey of an image tile (intensity 1.0)."""
_BACKGROUND = np.array([24, 24, 24], np.uint8)
_TEXT = (235, 235, 235)
_PAD = 4


def class_colour(class_id: int) -> np.ndarray:
    """The RGB ``uint8`` colour of a class id (1 → red, 2 → green, ...; cycles after 8)."""
    if class_id <= 0:
        return CLASS_COLOURS[0]
    return CLASS_COLOURS[1 + (class_id - 1) % (len(CLASS_COLOURS) - 1)]


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask: the mask minus its 4-neighbourhood erosion.

    Pixels on the image border count as touching the outside, so a mask reaching the border
    is closed there. A filled square gives exactly its outer ring of pixels.
    """
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1, constant_values=False)
    eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~eroded


def draw_contours(
    rgb: np.ndarray, labels: np.ndarray, class_ids: Sequence[int], *, colour: np.ndarray | None = None
) -> np.ndarray:
    """``rgb`` ``(H, W, 3)`` uint8 with the contour of each class of ``labels`` ``(H, W)`` drawn on it.

    Args:
        class_ids: the classes to draw (others, ``ignore`` included, are not drawn).
        colour: one colour for every class (the ground truth under a prediction); default: the
            class colours.
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    for class_id in class_ids:
        edge = contour(labels == class_id)
        out[edge] = class_colour(class_id) if colour is None else colour
    return out


def normalise(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """``image`` mapped to [0, 1] between two of its percentiles (float32; flat images → 0)."""
    image = np.asarray(image, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, np.float32)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        return np.zeros(image.shape, np.float32)
    return np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of the first two axes to ``shape`` (labels stay labels)."""
    rows = np.minimum((np.arange(shape[0]) + 0.5) * array.shape[0] / shape[0], array.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * array.shape[1] / shape[1], array.shape[1] - 1).astype(int)
    return array[rows][:, cols]


@dataclass(frozen=True)
class MontageColumn:
    """One slice of a montage, in display orientation (rows top to bottom).

    Attributes:
        image: ``(H, W)`` intensities in [0, 1] (:func:`normalise`), or ``None`` (dark tile).
        truth: ``(H, W)`` class ids of the ground truth, or ``None``.
        predictions: one ``(H, W)`` class-id map per prediction row.
        caption: shown above the column (e.g. ``slice 12``).
        aspect: physical height / width of a pixel (row spacing / column spacing).
    """

    image: np.ndarray | None
    truth: np.ndarray | None
    predictions: tuple[np.ndarray, ...]
    caption: str = ""
    aspect: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        for array in (self.image, self.truth, *self.predictions):
            if array is not None:
                return tuple(array.shape[:2])
        raise ValueError("a montage column needs an image, a truth or a prediction")


def _tile_shape(column: MontageColumn, tile: int) -> tuple[int, int]:
    h, w = column.shape
    height, width = h * column.aspect, float(w)
    scale = tile / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _tile(column: MontageColumn, labels: np.ndarray | None, truth_under: bool, class_ids: Sequence[int],
          shape: tuple[int, int]) -> np.ndarray:
    """One rendered tile: the image resized to ``shape``, then the contours at that resolution."""
    if column.image is None:
        rgb = np.zeros((*shape, 3), np.uint8)
    else:
        # Intensities up to 215 of 255, so that the white ground-truth contours stand out from bright tissue.
        grey = (np.clip(resize_nearest(np.nan_to_num(column.image), shape), 0.0, 1.0) * IMAGE_MAX).round().astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    if truth_under and column.truth is not None:
        rgb = draw_contours(rgb, resize_nearest(column.truth, shape), class_ids, colour=TRUTH_COLOUR)
    if labels is not None:
        rgb = draw_contours(rgb, resize_nearest(labels, shape), class_ids)
    return rgb


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def render_montage(
    columns: Sequence[MontageColumn],
    classes: Mapping[str, int],
    *,
    rows: Sequence[str] = ("prediction",),
    title: str = "",
    tile: int = DEFAULT_TILE,
) -> np.ndarray:
    """A montage as an RGB ``uint8`` array ``(height, width, 3)`` (layout: module docstring).

    Args:
        columns: the slices; every column has one prediction per name in ``rows``.
        classes: the foreground classes to draw (name → id in the label maps) and to list in
            the legend; other ids (``ignore`` included) are not drawn.
        rows: names of the prediction rows; a "ground truth" row comes first when any column
            has a truth.
        title: the line above the montage.
        tile: the longer side of each tile in pixels (slices are resampled to it, nearest
            neighbour, keeping their physical aspect).
    """
    from PIL import Image, ImageDraw

    if not columns:
        raise ValueError("a montage needs at least one column")
    for column in columns:
        if len(column.predictions) != len(rows):
            raise ValueError(f"each column needs {len(rows)} prediction(s), one per row; got {len(column.predictions)}")
    ids = [int(v) for v in classes.values() if int(v) != 0]
    with_truth = any(c.truth is not None for c in columns)
    row_names = (["ground truth"] if with_truth else []) + list(rows)
    font = _font()
    line = int(math.ceil(font.getbbox("Ag")[3])) + _PAD
    left = int(max(font.getlength(name) for name in row_names)) + 2 * _PAD
    top = (line if title else 0) + line
    legend = line + _PAD
    width = left + len(columns) * (tile + _PAD)
    height = top + len(row_names) * (tile + _PAD) + legend
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = _BACKGROUND
    for c, column in enumerate(columns):
        shape = _tile_shape(column, tile)
        x = left + c * (tile + _PAD) + (tile - shape[1]) // 2
        maps = ([column.truth] if with_truth else []) + list(column.predictions)
        for r, labels in enumerate(maps):
            y = top + r * (tile + _PAD) + (tile - shape[0]) // 2
            truth_under = not (with_truth and r == 0)
            canvas[y:y + shape[0], x:x + shape[1]] = _tile(column, labels, truth_under, ids, shape)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((_PAD, _PAD // 2), title, fill=_TEXT, font=font)
    for c, column in enumerate(columns):
        draw.text((left + c * (tile + _PAD), top - line + _PAD // 2), column.caption, fill=_TEXT, font=font)
    for r, name in enumerate(row_names):
        draw.text((_PAD, top + r * (tile + _PAD) + tile // 2 - line // 2), name, fill=_TEXT, font=font)
    x, y = _PAD, height - legend + _PAD // 2
    entries = [(name, class_colour(int(v))) for name, v in classes.items() if int(v) != 0]
    if with_truth and rows:
        entries.append(("ground truth (under the predictions)", TRUTH_COLOUR))
    for name, colour in entries:
        draw.rectangle([x, y + 2, x + line - 6, y + line - 4], fill=tuple(int(v) for v in colour))
        x += line
        draw.text((x, y), name, fill=_TEXT, font=font)
        x += int(font.getlength(name)) + 3 * _PAD
    return np.asarray(picture, dtype=np.uint8).copy()


def choose_slices(
    truth: np.ndarray | None,
    predictions: Sequence[np.ndarray],
    count: int = DEFAULT_SLICES,
    *,
    ignore_label: int | None = None,
) -> list[int]:
    """Which slices (along axis 0 of ``(S, H, W)`` maps) a montage shows, in increasing order.

    Half of them (rounded up) are the slices where the predictions disagree most with the
    truth (known voxels only; never a slice without disagreement); the rest spread evenly
    through the labelled extent (slices where any map has a foreground voxel; the whole
    volume when none has), so a good case still shows its structures from end to end.
    """
    maps = [m for m in (truth, *predictions) if m is not None]
    if not maps or count < 1:
        return []
    n = maps[0].shape[0]
    known = np.ones(maps[0].shape, bool) if truth is None or ignore_label is None else truth != ignore_label
    foreground = np.zeros(n, bool)
    for m in maps:
        foreground |= ((m > 0) & known).reshape(n, -1).any(1)
    chosen: list[int] = []
    if truth is not None and predictions:
        wrong = sum(((p != truth) & known).reshape(n, -1).sum(1) for p in predictions)
        for s in np.argsort(-wrong, kind="stable")[: (count + 1) // 2]:
            if wrong[s] > 0:
                chosen.append(int(s))
    extent = np.flatnonzero(foreground) if foreground.any() else np.arange(n)
    spare = [int(s) for s in extent if int(s) not in chosen]
    wanted = min(count - len(chosen), len(spare))
    if wanted > 0:
        picks = np.linspace(0, len(spare) - 1, wanted + 2)[1:-1] if len(spare) > wanted else np.arange(len(spare))
        chosen += [spare[int(round(p))] for p in picks]
    return sorted(set(chosen))


def through_plane_axis(spacing: Sequence[float]) -> int:
    """The axis with the largest spacing (the last of equals): the axis slices are taken along."""
    spacing = list(spacing)
    return max(range(len(spacing)), key=lambda a: (spacing[a], a))


def case_montage(
    image: np.ndarray | None,
    truth: np.ndarray | None,
    predictions: Mapping[str, np.ndarray],
    classes: Mapping[str, int],
    *,
    spacing: Sequence[float],
    count: int = DEFAULT_SLICES,
    title: str = "",
    ignore_label: int | None = None,
    tile: int = DEFAULT_TILE,
) -> np.ndarray:
    """The montage of one case from whole volumes (2D or 3D arrays of the same shape).

    Slices are taken along the through-plane axis (:func:`through_plane_axis`), chosen by
    :func:`choose_slices`, rotated by 90° for display (``np.rot90``: the second in-plane axis
    runs upwards) and shown with the in-plane spacing's aspect. The image is normalised with the
    volume's 1st–99th percentiles, the same window on every slice.

    Returns:
        The RGB ``uint8`` montage (:func:`render_montage`).
    """
    arrays = [a for a in (image, truth, *predictions.values()) if a is not None]
    if not arrays:
        raise ValueError("a case montage needs an image, a truth or a prediction")
    shape = arrays[0].shape
    spacing = [float(s) for s in spacing][: len(shape)]
    if len(shape) == 2:
        axis, stack = None, (lambda a: None if a is None else np.asarray(a)[None])
    else:
        axis = through_plane_axis(spacing)
        stack = (lambda a: None if a is None else np.moveaxis(np.asarray(a), axis, 0))
    picture = None if image is None else stack(normalise(image))
    truth_s = stack(truth)
    preds = [stack(p) for p in predictions.values()]
    in_plane = spacing if axis is None else [s for a, s in enumerate(spacing) if a != axis]
    aspect = in_plane[1] / in_plane[0] if in_plane[0] > 0 else 1.0
    indices = choose_slices(truth_s, preds, count, ignore_label=ignore_label) or [0]
    columns = [
        MontageColumn(
            image=None if picture is None else np.rot90(picture[s]),
            truth=None if truth_s is None else np.rot90(truth_s[s]),
            predictions=tuple(np.rot90(p[s]) for p in preds),
            caption="" if axis is None else f"slice {s}",
            aspect=aspect,
        )
        for s in indices
    ]
    return render_montage(columns, classes, rows=list(predictions), title=title, tile=tile)


def png_bytes(rgb: np.ndarray) -> bytes:
    """``rgb`` ``(H, W, 3)`` uint8 encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | PathLike[str], picture: np.ndarray | bytes) -> Path:
    """Write a PNG atomically (:mod:`jointreg.utils.atomic`): an RGB array or encoded bytes."""
    from jointreg.utils.atomic import atomic_path

    path = Path(path)
    data = picture if isinstance(picture, bytes) else png_bytes(picture)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
