"""Writing a canonical dataset of phantoms (``jointreg prepare phantom``)."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import numpy as np

from jointreg.data.phantoms.grid import Shape3, Spacing3
from jointreg.data.phantoms.kinds import case_id, case_seed, make_phantom, phantom_kind, resolve_geometry
from jointreg.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def generate_phantom_dataset(
    out: str | PathLike[str],
    kind: str = "liver-ct",
    *,
    n_train: int = 12,
    n_test: int = 4,
    seed: int = 0,
    shape: Shape3 | None = None,
    spacing: Spacing3 | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a canonical dataset of phantoms (``imagesTr``/``labelsTr``, ``imagesTs``/``labelsTs``).

    Case ``i`` (training cases first, then test cases, numbered on) is
    ``make_phantom(kind, case_seed(seed, i))``, so a training set of 12 holds the same 12 volumes
    whatever ``n_test`` is. ``dataset.json`` records the kind, seed, geometry and case seeds under
    ``"phantom"``. The folder is built under a temporary name and appears only when complete.

    Args:
        out: the dataset folder to create.
        kind: a key of :data:`PHANTOM_KINDS`.
        n_train: training cases (at least 1).
        n_test: test cases (0 for none: no ``imagesTs``).
        seed: dataset seed.
        shape, spacing: grid, see :func:`resolve_geometry`.
        overwrite: replace an existing ``out``.
        progress: show a progress bar (on a terminal only).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: ``out`` exists (without ``overwrite``) or is not a folder.
        ConfigError: unknown kind, bad counts, shape, spacing or seed.
    """
    from tqdm import tqdm

    from jointreg.data.dataset import Dataset, DatasetSpec
    from jointreg.utils.atomic import atomic_dir

    spec = phantom_kind(kind)
    # Named as the user counts them: prepare says --cases / --test-cases, the demo --train-cases.
    counts = (("the number of training cases", n_train, 1), ("the number of test cases", n_test, 0), ("the seed", seed, 0))
    for name, value, low in counts:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    keeps_fov = shape is None or spacing is None
    grid_shape, grid_spacing = resolve_geometry(kind, shape, spacing)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")

    seeds = {case_id(kind, i): case_seed(seed, i) for i in range(n_train + n_test)}
    dataset_spec = DatasetSpec(
        channel_names={"0": spec.modality},
        labels=dict(spec.labels),
        num_training=int(n_train),
        name=f"jointreg {kind} phantom",
        extra={"phantom": {
            "kind": kind, "seed": int(seed), "shape": list(grid_shape), "spacing": list(grid_spacing),
            "case_seeds": seeds, "description": spec.description,
        }},
    )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        dataset = Dataset.create(tmp, dataset_spec)
        # disable=None: a bar on a terminal, none in logs and pipes.
        bar = tqdm(total=n_train + n_test, desc=f"{kind} phantoms", unit="case", disable=None if progress else True)
        with bar:
            for i, (case, case_rng_seed) in enumerate(seeds.items()):
                split = "Tr" if i < n_train else "Ts"
                phantom = make_phantom(
                    kind, case_rng_seed, shape=grid_shape, spacing=None if keeps_fov else grid_spacing
                )
                dataset.write_image(case, phantom.image, affine=phantom.affine, split=split)
                dataset.write_label(case, phantom.label, affine=phantom.affine, split=split)
                bar.update(1)
    log.info("wrote %d %s phantom cases to %s", n_train + n_test, kind, out)
    return out
