"""The 2D view of a dataset that every trainer uses: normalised slices on a fixed training grid.

A volume ``(X, Y, Z)`` is cut along one axis (by default the through-plane axis, the one with
the largest spacing). Each slice keeps the other two axes in their original order, so for
``axis=2`` slice ``k`` is ``volume[:, :, k]`` with shape ``(X, Y)``.

Slices are resampled onto a training grid of fixed size ``(H, W)`` by :class:`PlaneGeometry`:

* the scale is the same along both in-plane axes **in millimetres**, so training pixels are
  (almost exactly) square in mm whatever the source spacing, and it is chosen so that the whole
  source field of view fits;
* the resized slice is centred and padded. Images are padded with 0 (the bottom of the
  normalised intensity range), labels with background (0): the padding lies outside the field
  of view, where there is no anatomy. A slice with no annotation at all keeps ``ignore``
  everywhere, padding included (see :func:`slice_volume`), so that it stays unannotated.

Label maps are resampled as one-hot maps with bilinear interpolation followed by an argmax, so
that thin structures are not dropped the way nearest-neighbour resampling drops them. Shrinking
goes through exact halvings (enlarge to ``2**k`` times the target first), where ties are broken
in favour of the locally thinner structure, else in a checkerboard: a 1-pixel line survives any
shrink factor, and large regions keep their area (no class grows at another's expense).
``ignore`` is resampled as a class of its own.

Modules:

* :mod:`~jointreg.data.slices.status`: the slicing axis and the per-slice label status;
* :mod:`~jointreg.data.slices.spec`: :class:`SliceSpec` and intensity normalisation;
* :mod:`~jointreg.data.slices.resample`: image and label resampling of slice stacks;
* :mod:`~jointreg.data.slices.geometry`: :class:`PlaneGeometry`;
* :mod:`~jointreg.data.slices.volume`: :class:`SlicedVolume`, :func:`slice_volume`,
  :func:`load_sliced_dataset`.

Example:
    >>> spec = SliceSpec(size=(128, 128))                               # doctest: +SKIP
    >>> sliced = load_sliced_dataset(Dataset.open("data/liver"), spec)   # doctest: +SKIP
    >>> sliced[0].images.shape, sliced[0].annotated_indices              # doctest: +SKIP
    ((38, 128, 128), [17])
"""

from jointreg.data.slices.geometry import KINDS, PlaneGeometry
from jointreg.data.slices.spec import MIN_SIZE, NORMALIZATIONS, SliceSpec, normalize_intensities
from jointreg.data.slices.status import SliceStatus, slice_status, stack_status, through_plane_axis
from jointreg.data.slices.volume import SlicedVolume, load_sliced_dataset, slice_volume

__all__ = [
    "KINDS",
    "MIN_SIZE",
    "NORMALIZATIONS",
    "PlaneGeometry",
    "SliceSpec",
    "SliceStatus",
    "SlicedVolume",
    "load_sliced_dataset",
    "normalize_intensities",
    "slice_status",
    "slice_volume",
    "stack_status",
    "through_plane_axis",
]
