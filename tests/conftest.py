"""Shared fixtures: tiny synthetic datasets and the optional real data in ../shared/data."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic_threads(monkeypatch):
    # Keep tests from oversubscribing the CI machine's two cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loads ``benchmarks/NAME.py`` as a module (the scripts are not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real labelled data), or skip when this machine does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def affine_for(spacing=(1.5, 1.5, 4.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def make_dataset(tmp_path) -> Callable[..., Path]:
    """Factory for a small canonical dataset of ellipsoid 'organs'.

    ``make_dataset(n_cases=3, shape=(32, 32, 8), labels=None, ignore=False)`` returns the dataset
    folder. Labels: background 0, organ 1, second organ 2 (+ ignore 3 when ``ignore``).
    """
    from jointreg.data.dataset import Dataset, DatasetSpec

    def build(
        n_cases: int = 3,
        shape: tuple[int, int, int] = (32, 32, 8),
        spacing: tuple[float, float, float] = (1.5, 1.5, 4.0),
        modality: str = "CT",
        ignore: bool = False,
        name: str = "tiny",
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        labels = {"background": 0, "organ": 1, "other": 2}
        if ignore:
            labels["ignore"] = 3
        spec = DatasetSpec({"0": modality}, labels, n_cases, name=name)
        root = tmp_path / name
        ds = Dataset.create(root, spec)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
        for i in range(n_cases):
            centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
            radii = np.array([shape[0] / 4, shape[1] / 5, shape[2] / 3]) * rng.uniform(0.8, 1.2, 3)
            organ = (((grid - centre) / radii) ** 2).sum(-1) <= 1
            other = (((grid - centre - [shape[0] / 4, 0, 0]) / (radii / 2.5)) ** 2).sum(-1) <= 1
            label = np.zeros(shape, np.int16)
            label[organ] = 1
            label[other & ~organ] = 2
            image = (label * 60.0 + rng.normal(0, 5, shape)).astype(np.float32)
            ds.write_image(f"case{i:03d}", image, affine=affine_for(spacing))
            ds.write_label(f"case{i:03d}", label, affine=affine_for(spacing))
        return root

    return build


# A tiny finished joint run, shared by the inference, export and CLI tests (trained once per
# session, a few seconds). Barely trained: for plumbing and geometry, not for accuracy.
TINY_RUN_RECIPE = {
    "name": "tiny_run",
    "data": {"size": [32, 32]},
    "pairs": {"radius": 4},
    "registration": {"batch_size": 2, "arguments": {"features": [4, 8, 8]}},
    "segmentation": {
        "architecture": "fcn", "batch_size": 2,
        "arguments": {"features": [4, 8, 8, 8, 8], "head_channels": 8, "dropout": 0.0},
    },
    "schedule": {"registration_warmup": 2, "segmentation_warmup": 2, "rounds": 1,
                 "registration_steps": 1, "segmentation_steps": 1},
    "logging": {"image_every": 0, "log_every": 0, "progress": False, "tensorboard": False},
    "evaluation": {"enabled": False},
}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict[str, Path]:
    """``{"run", "sparse", "full"}``: a finished tiny run and the liver-CT phantom it trained on.

    The phantom has 3 training cases (64 × 64 × 24, one annotated slice each in ``sparse``) and
    one test case; ``run/export`` holds the registration network and the segmentor.
    """
    import copy

    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset
    from jointreg.training.config import recipe_from_dict
    from jointreg.training.loop import train

    root = tmp_path_factory.mktemp("trained_run")
    full = generate_phantom_dataset(root / "full", "liver-ct", n_train=3, n_test=1, seed=11, shape=(64, 64, 24))
    sparse = root / "sparse"
    sparsify_dataset(full, sparse, slices_per_volume=1, progress=False)
    data = copy.deepcopy(TINY_RUN_RECIPE)
    data["output"] = str(root / "runs")
    data["data"]["dataset"] = str(sparse)
    summary = train(recipe_from_dict(data), progress=False)
    return {"run": Path(summary["run"]), "sparse": sparse, "full": full}
