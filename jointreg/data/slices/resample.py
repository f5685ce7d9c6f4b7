"""In-plane resampling of slice stacks: bilinear for images, one-hot + argmax for labels.

Label maps are resampled as one-hot maps with bilinear interpolation followed by an argmax, so
that thin structures are not dropped the way nearest-neighbour resampling drops them. Shrinking
goes through exact halvings (enlarge to ``2**k`` times the target first), where ties are broken
in favour of the locally thinner structure, else in a checkerboard: a 1-pixel line survives any
shrink factor, and large regions keep their area (no class grows at another's expense).
"""

from __future__ import annotations

import numpy as np

# Slices resampled per interpolate call: bounds the one-hot memory of label maps.
_CHUNK = 16


def resize_bilinear(batch: np.ndarray, size: tuple[int, int], *, antialias: bool) -> np.ndarray:
    """Bilinear resize of ``(N, C, h, w)`` float32 to ``(N, C, *size)``, pixel areas aligned.

    ``align_corners=False`` maps the outer pixel edges onto each other, which is what keeping
    the field of view means. ``antialias`` only acts along axes that shrink.
    """
    if tuple(batch.shape[-2:]) == tuple(size):
        return np.array(batch, dtype=np.float32, copy=True)
    import torch
    import torch.nn.functional as F

    shrinks = batch.shape[-2] > size[0] or batch.shape[-1] > size[1]
    tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    out = F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias and shrinks)
    return out.numpy()


def _label_steps(shape: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int]]:
    """Intermediate grids for resampling labels from ``shape`` to ``size``.

    Enlarging keeps every 1-pixel structure (some sample lies within half a pixel of it, so its
    one-hot weight is >= 0.5), and so does exact halving (each sample averages a 2 × 2 block,
    and a 1- or 2-pixel line covering half of it wins the tie, see :func:`_thinness`). Any shrink
    is therefore done as "enlarge to 2**k times the target, then halve k times".
    """
    if all(n <= t for n, t in zip(shape, size)):
        return [tuple(size)]
    doubled = tuple(2 * t if n > t else t for n, t in zip(shape, size))
    if doubled == tuple(shape):
        return [tuple(size)]
    return [*_label_steps(shape, doubled), tuple(size)]  # type: ignore[list-item]


_RUN_CAP = 4


def _thinness(index: np.ndarray) -> np.ndarray:
    """``(N, h, w)`` float32 in ``[1/4, 1]``: 1 / the pixel's class run length (capped at 4).

    The run length is the number of consecutive pixels of the same class through the pixel,
    along whichever axis is shorter: 1 for a 1-pixel line, 2 for a 2-pixel one, >= 4 for the
    inside and the straight boundaries of large regions. Grid borders continue the run.
    """
    pad = _RUN_CAP - 1
    padded = np.pad(index, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    h, w = index.shape[1:]
    shortest = np.full(index.shape, _RUN_CAP, dtype=np.int16)
    for axis in (1, 2):
        run = np.ones(index.shape, dtype=np.int16)
        for direction in (-1, 1):
            same = np.ones(index.shape, dtype=bool)
            for k in range(1, _RUN_CAP):
                dy, dx = (direction * k, 0) if axis == 1 else (0, direction * k)
                same &= index == padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
                run += same
        np.minimum(shortest, run, out=shortest)
    return 1.0 / np.minimum(shortest, _RUN_CAP).astype(np.float32)


# Tie-breakers, far below any real difference of interpolation weights (multiples of 1/4 in
# the halving steps where ties happen): the locally thinner structure wins a tie (a 1- or
# 2-pixel line against the region around it), and a tie between two wide regions (a straight
# boundary halfway between two training pixels) alternates in a checkerboard, so that no class
# grows at the expense of another on average.
_THIN_BONUS = 1e-2
_CHECKER_BONUS = 1e-5


def _one_label_step(index: np.ndarray, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    channels = np.arange(num_classes)[None, :, None, None]
    weight = 1.0 + np.float32(_THIN_BONUS) * _thinness(index)
    onehot = (index[:, None] == channels) * weight[:, None]
    scores = resize_bilinear(onehot.astype(np.float32), size, antialias=False)
    rows, cols = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    even = ((rows + cols) % 2 == 0)[None, None]
    rank = np.where(even, channels, num_classes - 1 - channels).astype(np.float32)
    scores += np.float32(_CHECKER_BONUS / max(num_classes - 1, 1)) * rank
    return scores.argmax(axis=1)


def resize_labels(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize integer label slices ``(S, h, w)`` by one-hot bilinear interpolation + argmax.

    Shrinking goes through :func:`_label_steps`, so 1-pixel-wide structures survive; an
    integer id keeps its value (``ignore`` is a class like the others).
    """
    classes = np.unique(stack)
    out = np.empty((stack.shape[0], *size), dtype=np.int16 if classes.size == 0 or classes.max() < 2**15 else np.int32)
    if classes.size <= 1:
        out[...] = classes[0] if classes.size else 0
        return out
    steps = _label_steps(tuple(stack.shape[-2:]), tuple(size))  # type: ignore[arg-type]
    for start in range(0, stack.shape[0], _CHUNK):
        index = np.searchsorted(classes, stack[start : start + _CHUNK])
        for step in steps:
            index = _one_label_step(index, classes.size, step)
        out[start : start + _CHUNK] = classes[index]
    return out
