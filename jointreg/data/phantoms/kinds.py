"""The phantom kinds, and drawing one phantom volume from a kind and a seed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from jointreg.data.phantoms.cardiac_mr import CARDIAC_LABELS, CARDIAC_TISSUE_LABELS, CARDIAC_TISSUES, build_cardiac_mr
from jointreg.data.phantoms.echo import ECHO_LABELS, ECHO_TISSUE_LABELS, ECHO_TISSUES, build_echo_a4c
from jointreg.data.phantoms.grid import Grid, Shape3, Spacing3
from jointreg.data.phantoms.liver_ct import LIVER_LABELS, LIVER_TISSUE_LABELS, LIVER_TISSUES, build_liver_ct
from jointreg.errors import ConfigError


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic volume with its exact ground truth.

    Attributes:
        image: ``(X, Y, Z)`` float32 intensities (HU for CT, scanner-like integers for MR,
            0–255 grey levels for echo).
        label: ``(X, Y, Z)`` int16 class ids, see ``labels``.
        affine: 4×4 voxel-to-world matrix (RAS+, millimetres), diagonal, origin at the centre.
            For a cine loop (``echo-a4c``) axis 2 is time and its column holds the frame
            interval in milliseconds.
        labels: class name -> id, background included.
        kind: the phantom kind that made it (a key of :data:`PHANTOM_KINDS`).
        tissue: ``(X, Y, Z)`` uint8 tissue ids, finer than ``label`` (bone, fat, vessels...).
        tissues: tissue name -> id for ``tissue``.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    labels: dict[str, int]
    kind: str
    tissue: np.ndarray
    tissues: dict[str, int]

    @property
    def spacing(self) -> Spacing3:
        """Voxel size per array axis in millimetres (axis 2 of a cine loop: the frame interval in ms)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def modality(self) -> str:
        """Channel name for ``dataset.json`` (``CT``, ``MR`` or ``US``)."""
        return PHANTOM_KINDS[self.kind].modality

    def tissue_mask(self, *names: str) -> np.ndarray:
        """Boolean mask of the voxels whose tissue is one of ``names``."""
        unknown = [n for n in names if n not in self.tissues]
        if unknown:
            raise KeyError(f"unknown tissue(s) {unknown}; known: {sorted(self.tissues)}")
        return np.isin(self.tissue, [self.tissues[n] for n in names])


@dataclass(frozen=True)
class PhantomKind:
    """A registered phantom generator.

    Attributes:
        name: registry key, e.g. ``liver-ct``.
        modality: ``dataset.json`` channel name.
        labels: class name -> id written to ``dataset.json``.
        shape: default grid ``(X, Y, Z)``.
        spacing: default voxel size in millimetres; axis 2 is the through-plane axis (for a cine
            loop, time: the frame interval in milliseconds).
        build: ``build(rng, grid) -> (image, tissue)``.
        tissues: tissue names in id order (id = position).
        tissue_labels: tissue name -> class name for the tissues that carry a label.
        description: one line for ``--help``.
    """

    name: str
    modality: str
    labels: Mapping[str, int]
    shape: Shape3
    spacing: Spacing3
    build: Callable[[np.random.Generator, Grid], tuple[np.ndarray, np.ndarray]]
    tissues: tuple[str, ...]
    tissue_labels: Mapping[str, str]
    description: str

    @property
    def field_of_view(self) -> tuple[float, float, float]:
        """Default extent in millimetres along each axis."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]


# Every kind ``jointreg prepare phantom --kind`` accepts, by name.
PHANTOM_KINDS: dict[str, PhantomKind] = {
    "liver-ct": PhantomKind(
        name="liver-ct", modality="CT", labels=LIVER_LABELS, shape=(128, 128, 44), spacing=(2.8, 2.8, 5.0),
        build=build_liver_ct, tissues=LIVER_TISSUES, tissue_labels=LIVER_TISSUE_LABELS,
        description="axial portal-venous abdominal CT (HU): liver, kidneys, spleen (CHAOS ids)",
    ),
    "cardiac-mr": PhantomKind(
        name="cardiac-mr", modality="MR", labels=CARDIAC_LABELS, shape=(128, 128, 12), spacing=(1.8, 1.8, 8.0),
        build=build_cardiac_mr, tissues=CARDIAC_TISSUES, tissue_labels=CARDIAC_TISSUE_LABELS,
        description="short-axis cine bSSFP MR: rv, myocardium, lv (ACDC ids)",
    ),
    # A 2D+t loop: axis 2 is time and its "spacing" the frame interval in ms (see echo.py).
    "echo-a4c": PhantomKind(
        name="echo-a4c", modality="US", labels=ECHO_LABELS, shape=(112, 112, 32), spacing=(1.5, 1.5, 33.0),
        build=build_echo_a4c, tissues=ECHO_TISSUES, tissue_labels=ECHO_TISSUE_LABELS,
        description="apical four-chamber echo cine loop, frames on axis 2 (33 ms apart): lv, myocardium, atrium (CAMUS ids)",
    ),
}


def phantom_kind(name: str) -> PhantomKind:
    """Look up a phantom kind; an unknown name raises :class:`ConfigError` listing the valid ones."""
    try:
        return PHANTOM_KINDS[name]
    except KeyError:
        valid = ", ".join(sorted(PHANTOM_KINDS))
        raise ConfigError(f"unknown phantom kind {name!r}; valid kinds: {valid}") from None


def resolve_geometry(kind: str, shape: Shape3 | None = None, spacing: Spacing3 | None = None) -> tuple[Shape3, Spacing3]:
    """The grid a phantom is drawn on.

    The anatomy is defined in millimetres, so a changed ``shape`` alone keeps the kind's field of
    view (the spacing grows as the grid shrinks), a changed ``spacing`` alone keeps it too (the
    shape adapts), and both together set the field of view to ``shape × spacing``.

    Raises:
        ConfigError: a shape or spacing that is not three positive numbers, or a grid under
            8×8×3 voxels.
    """
    spec = phantom_kind(kind)
    if shape is not None:
        shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"phantom shape must be three positive integers, got {shape}")
        if shape[0] < 8 or shape[1] < 8 or shape[2] < 3:
            raise ConfigError(f"phantom shape {shape} is too small (at least 8×8×3 voxels)")
    if spacing is not None:
        spacing = tuple(float(v) for v in spacing)  # type: ignore[assignment]
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ConfigError(f"phantom spacing must be three positive millimetre values, got {spacing}")
    fov = spec.field_of_view
    if shape is None and spacing is None:
        return spec.shape, spec.spacing
    if spacing is None:
        return shape, tuple(f / n for f, n in zip(fov, shape))  # type: ignore[return-value]
    if shape is None:
        shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov, spacing))  # type: ignore[assignment]
        return resolve_geometry(kind, shape, spacing)
    return shape, spacing  # type: ignore[return-value]


def make_phantom(kind: str, seed: int, *, shape: Shape3 | None = None, spacing: Spacing3 | None = None) -> Phantom:
    """Draw one phantom volume.

    Args:
        kind: a key of :data:`PHANTOM_KINDS` (``liver-ct``, ``cardiac-mr``, ``echo-a4c``).
        seed: any non-negative integer; the same seed, kind, shape and spacing give a bit-identical
            phantom. With the default field of view the anatomy of a seed is the same at any shape.
        shape: grid ``(X, Y, Z)``; default the kind's (see :func:`resolve_geometry`).
        spacing: voxel size in millimetres; axis 2 is the through-plane axis (``echo-a4c``:
            the frame interval in milliseconds).

    Returns:
        A :class:`Phantom` with float32 image, int16 label, affine and label names.

    Raises:
        ConfigError: unknown kind, invalid shape/spacing or seed.
    """
    spec = phantom_kind(kind)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    keeps_fov = shape is None or spacing is None
    shape, spacing = resolve_geometry(kind, shape, spacing)
    fov = spec.field_of_view if keeps_fov else tuple(n * s for n, s in zip(shape, spacing))
    grid = Grid(shape, spacing, fov)  # type: ignore[arg-type]
    image, tissue = spec.build(phantom_rng(spec.name, seed), grid)
    lut = np.zeros(len(spec.tissues), np.int16)
    for tissue_name, class_name in spec.tissue_labels.items():
        lut[spec.tissues.index(tissue_name)] = spec.labels[class_name]
    return Phantom(
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=lut[tissue],
        affine=grid.affine,
        labels=dict(spec.labels),
        kind=spec.name,
        tissue=tissue,
        tissues={n: i for i, n in enumerate(spec.tissues)},
    )


def phantom_rng(kind: str, seed: int) -> np.random.Generator:
    """The random stream :func:`make_phantom` gives the kind's ``build`` for ``seed``.

    The kind's name is mixed into the seed so that two kinds with one seed are unrelated.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *kind.encode()]))


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` in a dataset generated with ``seed`` (well mixed, 32 bits)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def case_id(kind: str, index: int) -> str:
    """Case name in a generated dataset, e.g. ``liver_ct_003``."""
    return f"{kind.replace('-', '_')}_{index:03d}"
