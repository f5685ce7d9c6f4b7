"""A tiny sparse phantom dataset shared by the training tests (built once per session)."""

from __future__ import annotations

import pytest

TINY = {
    "data": {"size": [32, 32], "classes": ["liver"]},
    "registration": {"batch_size": 2, "arguments": {"features": [4, 8, 8]}},
    "segmentation": {
        "architecture": "fcn", "batch_size": 2,
        "arguments": {"features": [4, 8, 8, 8, 8], "head_channels": 8, "dropout": 0.1},
        "augmentation": {"probability": 0.5},
    },
    "schedule": {"registration_warmup": 3, "segmentation_warmup": 3, "rounds": 2,
                 "registration_steps": 2, "segmentation_steps": 2},
    "logging": {"image_every": 4, "log_every": 1, "progress": False},
}


@pytest.fixture(scope="session")
def sparse_phantom(tmp_path_factory):
    """A liver-CT phantom dataset (3 train + 1 test volumes, 64×64×32, 6.9 mm slices), one slice per volume."""
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    root = tmp_path_factory.mktemp("phantom")
    full = generate_phantom_dataset(root / "full", "liver-ct", n_train=3, n_test=1, seed=3, shape=(64, 64, 32))
    sparsify_dataset(full, root / "sparse", slices_per_volume=1, progress=False)
    return root / "sparse"


@pytest.fixture
def tiny_recipe(sparse_phantom, tmp_path):
    """A factory: ``tiny_recipe(**overrides_as_dotted_keys)`` → Recipe writing into tmp_path."""
    import copy

    from jointreg.training.config import recipe_from_dict

    def build(*overrides: str, name: str = "tiny"):
        data = copy.deepcopy(TINY)
        data["name"] = name
        data["output"] = str(tmp_path / "runs")
        data["data"]["dataset"] = str(sparse_phantom)
        return recipe_from_dict(data, list(overrides))

    return build
