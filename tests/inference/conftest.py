"""Run folders built without training, whose networks have known behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest


def build_identity_run(folder: Path, labels: dict[str, int], size=(64, 64), radius: int = 4, seed: int = 0,
                       architecture: str = "fmirnet") -> Path:
    """A run folder whose registration network returns exactly zero flow (FMIRNet with its flow
    heads zeroed, or the parameterless ``identity``) and whose segmentor is a randomly
    initialised FCN.

    With ``size`` equal to the in-plane shape of the data, slicing is exact, so registration-mode
    pseudo-labels must equal copying the nearest annotated slice.
    """
    import torch

    from jointreg.export.model_folder import save_model_folder
    from jointreg.nets.registration import create_registration_net
    from jointreg.nets.segmentation import create_segmentor

    torch.manual_seed(seed)
    if architecture == "identity":
        registration = create_registration_net("identity", spatial_dims=2)
    else:
        registration = create_registration_net(architecture, spatial_dims=2, features=[8, 16, 16])
        with torch.no_grad():
            for parameter in registration.heads.parameters():
                parameter.zero_()
    segmentor = create_segmentor("fcn", in_channels=1, classes=len(labels), features=[4, 8, 8, 8, 8], head_channels=8)
    preprocessing = {"axis": None, "size": list(size), "normalization": "auto", "ct_window": [-160.0, 240.0],
                     "mr_percentiles": [0.5, 99.5]}
    common = dict(preprocessing=preprocessing, labels=labels, modality="CT")
    save_model_folder(folder / "export" / "registration", registration.eval(), kind="registration",
                      architecture=architecture, extra={"pair_radius": radius}, **common)
    save_model_folder(folder / "export" / "segmentor", segmentor.eval(), kind="segmentor", architecture="fcn", **common)
    (folder / "recipe.yaml").write_text("name: identity\n", encoding="utf-8")
    return folder


@pytest.fixture
def identity_run(tmp_path):
    """``identity_run(labels, size=(64, 64))`` → a run folder (see :func:`build_identity_run`)."""

    def build(labels: dict[str, int], size=(64, 64), name: str = "identity_run", architecture: str = "fmirnet") -> Path:
        return build_identity_run(tmp_path / name, labels, size, architecture=architecture)

    return build


@pytest.fixture
def sparse_phantom_factory(tmp_path):
    """``sparse_phantom_factory(n_train, slices_per_volume=1, n_test=0)`` → a sparse liver-CT phantom dataset (64 × 64 × 24)."""
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    def build(n_train: int = 3, slices_per_volume: int = 1, seed: int = 2, n_test: int = 0) -> Path:
        full = generate_phantom_dataset(tmp_path / f"full{n_train}", "liver-ct", n_train=n_train, n_test=n_test, seed=seed, shape=(64, 64, 24))
        sparse = tmp_path / f"sparse{n_train}"
        sparsify_dataset(full, sparse, slices_per_volume=slices_per_volume, progress=False)
        return sparse

    return build
