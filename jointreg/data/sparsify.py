"""Simulate few labels: keep k annotated slices per volume (or n whole volumes), rest ``ignore``.

:func:`sparsify_dataset` turns a fully labelled dataset into the sparse one a clinician would
produce by annotating a few slices, while keeping the complete labels aside for evaluation::

    OUT/
      dataset.json          the source's, with the "ignore" label added (highest id)
      imagesTr/             hard links to the source images (copies across file systems)
      labelsTr/             kept slices (or volumes) as in the source, every other voxel "ignore"
      labelsTr_full/        the source's complete labels
      imagesTs/, labelsTs/  the test split, unchanged
      sparsify.json         the manifest: source, strategy, seed, axis and kept slices per case

Slice strategies, computed on the foreground area of each slice along the slicing axis:

* ``largest``: the k slices with the largest foreground area (ties: the lower index);
* ``even``: k slices evenly spaced over the foreground extent ``[first, last]``, the centres of
  k equal bins (index ``first + (j + 0.5) * n / k - 0.5`` rounded half up, ``n = last - first
  + 1``), so k = 1 is the middle of the extent;
* ``random``: k foreground slices drawn with the seed (each case has its own stream, derived
  from the seed and the case id, so adding a case does not change the others' draws);
* ``extremes``: the slices with the largest and the smallest foreground area, taken in turn
  (largest, smallest, second largest, second smallest, ...; ties: the lower index; slices
  without foreground never count as the smallest). On a cine loop with the LV blood pool as the
  only class, k = 2 keeps the end-diastolic and end-systolic frames, the two annotated frames
  of CAMUS and EchoNet-Dynamic.

A volume without foreground keeps no slice (a warning, and it is listed in the manifest). With
``volumes=n`` the seed picks n labelled cases that keep their full labels; the others become
``ignore`` everywhere.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.version import __version__
from jointreg.data.dataset import Dataset, write_spec
from jointreg.data.nifti import read_label, same_geometry, write_volume
from jointreg.utils.atomic import link_or_copy
from jointreg.data.slices import through_plane_axis
from jointreg.errors import ConfigError, InputError
from jointreg.utils.atomic import atomic_dir, write_json

logger = logging.getLogger(__name__)

STRATEGIES = ("largest", "even", "random", "extremes")
MANIFEST_NAME = "sparsify.json"


# --------------------------------------------------------------------------------------------
# slice selection (pure functions on per-slice foreground areas)
# --------------------------------------------------------------------------------------------
def foreground_areas(label: np.ndarray, axis: int, foreground_ids: Sequence[int]) -> np.ndarray:
    """Foreground voxels per slice along ``axis``: ``(S,)`` int64 for a label volume."""
    mask = np.isin(label, np.asarray(list(foreground_ids), dtype=label.dtype))
    other = tuple(a for a in range(label.ndim) if a != axis)
    return mask.sum(axis=other).astype(np.int64)


def select_slices(areas: np.ndarray, k: int, strategy: str, rng: np.random.Generator | None = None) -> list[int]:
    """Indices of the slices to keep, sorted.

    Args:
        areas: foreground voxels per slice, ``(S,)``.
        k: number of slices wanted (fewer when the volume has fewer foreground slices).
        strategy: ``"largest"``, ``"even"``, ``"random"`` or ``"extremes"`` (see the module
            docstring).
        rng: random generator, required for ``"random"``.

    Returns:
        Sorted slice indices; empty when no slice has foreground.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if k < 1:
        raise ConfigError(f"the number of slices to keep must be >= 1, got {k}")
    areas = np.asarray(areas)
    foreground = np.flatnonzero(areas > 0)
    if foreground.size == 0:
        return []
    if strategy == "largest":
        order = sorted(foreground.tolist(), key=lambda i: (-int(areas[i]), i))
        return sorted(order[:k])
    if strategy == "extremes":
        largest = sorted(foreground.tolist(), key=lambda i: (-int(areas[i]), i))
        smallest = sorted(foreground.tolist(), key=lambda i: (int(areas[i]), i))
        kept: list[int] = []
        for pair in zip(largest, smallest):
            for i in pair:
                if i not in kept and len(kept) < k:
                    kept.append(i)
        return sorted(kept)
    if strategy == "even":
        first, last = int(foreground[0]), int(foreground[-1])
        n = last - first + 1
        if k >= n:
            return list(range(first, last + 1))
        positions = first + (np.arange(k) + 0.5) * n / k - 0.5
        return sorted({int(np.floor(p + 0.5)) for p in positions})
    if rng is None:
        raise ValueError("the 'random' strategy needs a random generator")
    if k >= foreground.size:
        return foreground.tolist()
    return sorted(int(i) for i in rng.choice(foreground, size=k, replace=False))


def case_rng(seed: int, case: str) -> np.random.Generator:
    """A random stream for one case that depends only on the seed and the case id."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode("utf-8"))])


# --------------------------------------------------------------------------------------------
# the dataset operation
# --------------------------------------------------------------------------------------------
def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _check_request(
    source: Path, out: Path, slices_per_volume: int | None, volumes: int | None, strategy: str,
    axis: int | None, overwrite: bool,
) -> None:
    if (slices_per_volume is None) == (volumes is None):
        raise ConfigError("give exactly one of slices_per_volume (--slices-per-volume) and volumes (--volumes)")
    for name, value in (("slices_per_volume", slices_per_volume), ("volumes", volumes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if axis is not None and axis not in (0, 1, 2):
        raise ConfigError(f"axis must be 0, 1 or 2, got {axis!r}")
    src, dst = source.resolve(), out.resolve()
    if src == dst:
        raise InputError(out, "the output folder must differ from the source dataset")
    if _is_within(dst, src) or _is_within(src, dst):
        raise InputError(out, f"the output folder must not contain, or lie inside, the source dataset {source}")
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")


def _class_ids(dataset: Dataset, classes: Sequence[str] | None) -> dict[str, int]:
    foreground = dataset.spec.foreground_labels
    if not foreground:
        raise InputError(dataset.root / "dataset.json", "no foreground label is declared, nothing to sparsify")
    if classes is None:
        return dict(foreground)
    unknown = [c for c in classes if c not in foreground]
    if unknown:
        raise ConfigError(f"unknown class(es) {', '.join(unknown)}; valid: {', '.join(foreground)}")
    return {c: foreground[c] for c in classes}


def sparsify_dataset(
    source: str | PathLike[str],
    out: str | PathLike[str],
    *,
    slices_per_volume: int | None = None,
    volumes: int | None = None,
    strategy: str = "largest",
    axis: int | None = None,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a sparsely labelled copy of a dataset (see the module docstring for the layout).

    Args:
        source: a fully (or already sparsely) labelled dataset folder.
        out: the new dataset folder; built under a temporary name, it appears only when complete.
        slices_per_volume: keep this many slices per training volume ...
        volumes: ... or keep this many whole training volumes (exactly one of the two).
        strategy: slice choice, ``"largest"``, ``"even"``, ``"random"`` or ``"extremes"``.
        axis: slicing axis (default: each volume's through-plane axis, the largest spacing).
        seed: seed of the ``"random"`` strategy and of the choice of volumes.
        classes: foreground class names that count for the slice choice (default: all).
        overwrite: replace an existing ``out``.
        progress: show a progress bar.

    Returns:
        The manifest written to ``OUT/sparsify.json``.

    Raises:
        ConfigError: inconsistent options (both or neither of the counts, unknown strategy or
            class, more volumes than labelled cases).
        InputError: unusable source (unreadable files, a label whose shape or affine differs
            from its image's), ``out`` equal to, inside or around ``source``, or an existing
            ``out`` without ``overwrite``. Nothing is written in these cases.
    """
    from tqdm.auto import tqdm

    source, out = Path(source), Path(out)
    _check_request(source, out, slices_per_volume, volumes, strategy, axis, overwrite)
    dataset = Dataset.open(source)
    cases = dataset.cases("Tr")
    if not cases:
        raise InputError(dataset.images_dir("Tr"), "no training cases to sparsify")
    class_ids = _class_ids(dataset, classes)
    sparse_spec = dataset.spec.with_ignore()
    ignore = int(sparse_spec.ignore_label)  # type: ignore[arg-type]
    labelled = dataset.labelled_cases("Tr")
    if volumes is not None and volumes > len(labelled):
        raise ConfigError(f"asked for {volumes} annotated volumes but the dataset has {len(labelled)} labelled case(s)")
    kept_volumes: set[str] = set()
    if volumes is not None:
        rng = np.random.default_rng(int(seed))
        kept_volumes = {labelled[i] for i in rng.choice(len(labelled), size=volumes, replace=False)}

    manifest: dict[str, Any] = {
        "created_by": f"jointreg {__version__} sparsify",
        "source": str(source.resolve()),
        "mode": "slices" if slices_per_volume is not None else "volumes",
        "slices_per_volume": slices_per_volume,
        "volumes": volumes,
        "strategy": strategy if slices_per_volume is not None else None,
        "seed": int(seed),
        "axis": axis,
        "classes": list(class_ids),
        "ignore_label": ignore,
        "cases": {},
        "kept_volumes": sorted(kept_volumes) if volumes is not None else None,
        "no_foreground": [],
        "unlabelled": [],
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        target = Dataset(tmp, sparse_spec)
        for case in tqdm(cases, desc="sparsify", unit="case", disable=None if progress else True, leave=False):
            link_or_copy(dataset.image_path(case), target.image_path(case))
            entry = _sparsify_case(
                dataset, target, case, slices_per_volume=slices_per_volume, strategy=strategy, axis=axis,
                seed=seed, class_ids=class_ids, ignore=ignore, keep_volume=case in kept_volumes,
                volumes_mode=volumes is not None,
            )
            manifest["cases"][case] = entry
            if entry.get("unlabelled"):
                manifest["unlabelled"].append(case)
            elif slices_per_volume is not None and not entry["slices"]:
                manifest["no_foreground"].append(case)
        _copy_test_split(dataset, tmp)
        write_spec(tmp, sparse_spec)
        write_json(tmp / MANIFEST_NAME, manifest)
    for case in manifest["no_foreground"]:
        logger.warning("%s: no foreground slice (classes %s), no slice kept", case, ", ".join(class_ids))
    return manifest


def _sparsify_case(
    dataset: Dataset, target: Dataset, case: str, *, slices_per_volume: int | None, strategy: str,
    axis: int | None, seed: int, class_ids: dict[str, int], ignore: int, keep_volume: bool,
    volumes_mode: bool,
) -> dict[str, Any]:
    label_path = dataset.label_path(case)
    if not label_path.exists():
        # An unlabelled source case stays unlabelled: an all-ignore label of the image's geometry.
        image = dataset.read_image(case)
        target.write_label(case, np.full(image.shape, ignore, dtype=np.int16), reference=image)
        return {"unlabelled": True}
    label = read_label(label_path)
    # The image is only linked, but a label that does not fit it would make a broken dataset.
    mismatch = same_geometry(dataset.read_image(case), label)
    if mismatch is not None:
        raise InputError(label_path, f"label {mismatch} of image {dataset.image_path(case).name}")
    full_source = dataset.label_path(case, full=True)
    link_or_copy(full_source if full_source.exists() else label_path, target.label_path(case, full=True))
    if volumes_mode:
        sparse = label.array if keep_volume else np.full(label.shape, ignore, dtype=label.array.dtype)
        write_volume(target.label_path(case), sparse, reference=label, is_label=True)
        return {"kept": keep_volume}
    case_axis = axis if axis is not None else through_plane_axis(label.spacing)
    # class_ids never holds the ignore id, so an already sparse source counts known voxels only.
    areas = foreground_areas(label.array, case_axis, list(class_ids.values()))
    rng = case_rng(seed, case) if strategy == "random" else None
    kept = select_slices(areas, int(slices_per_volume), strategy, rng)  # type: ignore[arg-type]
    sparse = np.full(label.shape, ignore, dtype=np.int16 if ignore < 2**15 else np.int32)
    index: list[Any] = [slice(None)] * 3
    index[case_axis] = kept
    sparse[tuple(index)] = label.array[tuple(index)]
    write_volume(target.label_path(case), sparse, reference=label, is_label=True)
    return {
        "axis": case_axis,
        "num_slices": int(label.shape[case_axis]),
        "foreground_slices": int((areas > 0).sum()),
        "slices": kept,
        "areas": [int(areas[i]) for i in kept],
    }


def _copy_test_split(dataset: Dataset, tmp: Path) -> None:
    for folder in (dataset.images_dir("Ts"), dataset.labels_dir("Ts")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                link_or_copy(path, tmp / folder.name / path.name)
