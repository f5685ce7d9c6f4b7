"""Volumes as stacks of normalised training slices: slicing one volume, loading a dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jointreg.data.nifti import Volume
from jointreg.data.slices.geometry import PlaneGeometry
from jointreg.data.slices.spec import SliceSpec, normalize_intensities
from jointreg.data.slices.status import SliceStatus, stack_status, through_plane_axis
from jointreg.errors import InputError

if TYPE_CHECKING:
    from jointreg.data.dataset import Dataset


@dataclass
class SlicedVolume:
    """One volume as a stack of training slices, with everything needed to map results back.

    Attributes:
        case: case id.
        axis: the slicing axis of the source volume.
        images: ``(S, H, W)`` float32 normalised slices (``S`` = source size along ``axis``).
        labels: ``(S, H, W)`` integer labels with the ``ignore`` id kept, or ``None``.
        status: per-slice :class:`SliceStatus`, computed on the source label slices.
        geometry: the in-plane map between source slices and the training grid.
        reference: the source image's geometry (affine, header, path); its array is a
            zero-memory placeholder of the right shape, usable as ``write_volume(reference=)``.
        source_shape: the source volume's shape ``(X, Y, Z)``.
        full_labels: ``(S, H, W)`` complete labels from ``labelsTr_full`` when requested.
    """

    case: str
    axis: int
    images: np.ndarray
    labels: np.ndarray | None
    status: tuple[SliceStatus, ...]
    geometry: PlaneGeometry
    reference: Volume
    source_shape: tuple[int, int, int]
    full_labels: np.ndarray | None = None

    @property
    def num_slices(self) -> int:
        return int(self.images.shape[0])

    @property
    def annotated_indices(self) -> list[int]:
        """Slices with any annotation: ``ANNOTATED`` or ``EMPTY`` (known background only)."""
        return [i for i, s in enumerate(self.status) if s is not SliceStatus.UNANNOTATED]

    @property
    def foreground_indices(self) -> list[int]:
        """Slices whose annotation holds foreground (``ANNOTATED``)."""
        return [i for i, s in enumerate(self.status) if s is SliceStatus.ANNOTATED]

    @property
    def unannotated_indices(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s is SliceStatus.UNANNOTATED]

    def to_volume(self, stack: np.ndarray, kind: str) -> np.ndarray:
        """Map training-grid slices back to an array in the source volume's shape and axes.

        Args:
            stack: ``(S, H, W)`` images or labels, or ``(S, C, H, W)`` probabilities.
            kind: ``"image"``, ``"label"`` or ``"probabilities"``.

        Returns:
            ``(X, Y, Z)`` (float32 images, integer labels), or ``(C, X, Y, Z)`` probabilities;
            ready for ``write_volume(path, array, reference=self.reference)``.
        """
        if stack.shape[0] != self.num_slices:
            raise ValueError(f"{self.case}: expected {self.num_slices} slices, got {stack.shape[0]}")
        source = self.geometry.to_source(stack, kind)
        if kind == "probabilities":
            return np.moveaxis(source, 0, self.axis + 1)
        return np.moveaxis(source, 0, self.axis)


def _source_stack(array: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(array, axis, 0)


def _shape_only(volume: Volume) -> Volume:
    # A broadcast view has the shape but no memory; write_volume only checks the shape.
    placeholder = np.broadcast_to(np.zeros((), dtype=np.float32), volume.shape)
    return Volume(placeholder, volume.affine, volume.header, volume.path)


def slice_volume(
    image: Volume,
    label: Volume | None,
    spec: SliceSpec,
    *,
    modality: str,
    ignore_label: int | None,
    case: str,
    full_label: Volume | None = None,
) -> SlicedVolume:
    """Cut a volume into normalised training slices.

    Args:
        image: the 3D image.
        label: its label map (same shape), or ``None``.
        spec: slicing and normalisation settings.
        modality: channel name of the dataset (selects ``"auto"`` normalisation).
        ignore_label: the ``ignore`` id, or ``None``.
        case: case id, kept for messages and outputs.
        full_label: complete labels (``labelsTr_full``), same shape, or ``None``.

    Raises:
        InputError: the image is not 3D, or a label's shape differs from the image's.

    Slices without any annotation are ``ignore`` everywhere on the training grid (padding
    included); other label slices are padded with background.
    """
    if image.array.ndim != 3:
        raise InputError(image.path, f"expected a 3D volume, found shape {image.shape}")
    for other, what in ((label, "label"), (full_label, "full label")):
        if other is not None and other.shape != image.shape:
            raise InputError(other.path, f"{what} shape {other.shape} differs from image shape {image.shape}")
    axis = spec.axis if spec.axis is not None else through_plane_axis(image.spacing)
    in_plane = [a for a in range(3) if a != axis]
    spacing = image.spacing
    geometry = PlaneGeometry(
        source_shape=(image.shape[in_plane[0]], image.shape[in_plane[1]]),
        source_spacing=(spacing[in_plane[0]], spacing[in_plane[1]]),
        size=spec.size,
    )
    normalised = normalize_intensities(image.array, spec.resolve_normalization(modality), spec)
    images = geometry.to_training(_source_stack(normalised, axis), "image")
    del normalised

    labels = None
    status = stack_status(None, ignore_label, image.shape[axis])
    if label is not None:
        source_labels = _source_stack(label.array, axis)
        status = stack_status(source_labels, ignore_label)
        labels = geometry.to_training(source_labels, "label")
        if ignore_label is not None:
            for i, s in enumerate(status):
                if s is SliceStatus.UNANNOTATED:
                    labels[i] = ignore_label
    full = None
    if full_label is not None:
        full = geometry.to_training(_source_stack(full_label.array, axis), "label")
    return SlicedVolume(
        case=case,
        axis=axis,
        images=images,
        labels=labels,
        status=status,
        geometry=geometry,
        reference=_shape_only(image),
        source_shape=tuple(int(v) for v in image.shape),  # type: ignore[arg-type]
        full_labels=full,
    )


def load_sliced_dataset(
    dataset: Dataset,
    spec: SliceSpec,
    *,
    split: str = "Tr",
    cases: Sequence[str] | None = None,
    full_labels: bool = False,
    progress: bool = True,
) -> list[SlicedVolume]:
    """Read and slice the cases of a dataset.

    Args:
        dataset: an opened :class:`~jointreg.data.dataset.Dataset`.
        spec: slicing and normalisation settings.
        split: ``"Tr"`` or ``"Ts"``.
        cases: case ids to load (default: every case of the split, sorted).
        full_labels: also load ``labels{split}_full`` (written by ``jointreg sparsify``).
        progress: show a progress bar (tqdm; silent when not a terminal).

    Returns:
        One :class:`SlicedVolume` per case, in the order of ``cases``. Cases without a label
        file get ``labels=None`` and every slice ``UNANNOTATED``; cases without a full label
        file (unlabelled in the source) get ``full_labels=None``.

    Raises:
        InputError: an unknown case, an unreadable file, or no ``labels{split}_full`` folder
            when ``full_labels`` is requested.
    """
    from tqdm.auto import tqdm

    available = dataset.cases(split)
    selected = list(available if cases is None else cases)
    missing = sorted(set(selected) - set(available))
    if missing:
        raise InputError(dataset.images_dir(split), f"no image for case(s) {', '.join(missing[:5])}")
    if full_labels and not dataset.has_full_labels(split):
        raise InputError(dataset.labels_dir(split, full=True), "folder not found: full labels are written by 'jointreg sparsify'")
    spec_ds = dataset.spec
    result = []
    for case in tqdm(selected, desc=f"slicing {split}", unit="case", disable=None if progress else True, leave=False):
        image = dataset.read_image(case, split)
        label_path = dataset.label_path(case, split)
        label = dataset.read_label(case, split) if label_path.exists() else None
        full_path = dataset.label_path(case, split, full=True)
        full = dataset.read_label(case, split, full=True) if full_labels and full_path.exists() else None
        result.append(
            slice_volume(
                image, label, spec, modality=spec_ds.modality, ignore_label=spec_ds.ignore_label,
                case=case, full_label=full,
            )
        )
    return result
