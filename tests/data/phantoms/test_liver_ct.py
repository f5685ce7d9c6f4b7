"""jointreg.data.phantoms.liver_ct: CT-like intensities, CHAOS label ids, non-rigid anatomy."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from jointreg.data.phantoms import LIVER_LABELS, make_phantom

# Keeps the default 5 mm slices (what slice-to-slice tests need) at 1/4 of the in-plane voxels.
LIVER_SMALL = (64, 64, 44)


@lru_cache(maxsize=None)
def phantom(kind: str, seed: int, shape: tuple[int, int, int]):
    return make_phantom(kind, seed, shape=shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_liver_ct_intensities_are_ct_like(seed):
    p = phantom("liver-ct", seed, LIVER_SMALL)

    def median(*tissues):
        return float(np.median(p.image[p.tissue_mask(*tissues)]))

    assert median("air") == pytest.approx(-1000, abs=30)
    assert 40 <= float(np.median(p.image[p.label == 1])) <= 130          # liver, by its label
    assert median("bone_cortex", "bone_cancellous") > 300
    assert -130 <= median("fat") <= -60
    assert -920 <= median("lung") <= -760
    assert 30 <= float(np.median(p.image[p.label == 4])) <= 150           # spleen
    for label in (2, 3):                                                  # kidneys
        assert 30 <= float(np.median(p.image[p.label == label])) <= 210
    assert median("aorta") > median("liver") + 40                         # contrast-enhanced vessels
    assert p.image.min() >= -1024 and p.image.max() <= 3071
    assert np.array_equal(p.image, np.rint(p.image))                      # integer HU


@pytest.mark.parametrize("seed", range(4))
def test_liver_ct_labels_are_the_declared_ids_and_all_present(seed):
    p = phantom("liver-ct", seed, LIVER_SMALL)
    assert p.labels == LIVER_LABELS == {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
    assert set(np.unique(p.label).tolist()) == set(LIVER_LABELS.values())
    # Intrahepatic vessels belong to the liver label; the IVC and the aorta do not.
    assert (p.label[p.tissue_mask("liver_vessel")] == 1).all()
    assert (p.label[p.tissue_mask("ivc", "aorta", "gallbladder")] == 0).all()
    # Patient right is -X (RAS): the right kidney lies at lower x than the left one.
    x = np.arange(p.image.shape[0])[:, None, None]
    assert (x * (p.label == 2)).sum() / (p.label == 2).sum() < (x * (p.label == 3)).sum() / (p.label == 3).sum()


def test_liver_changes_non_rigidly_from_slice_to_slice():
    liver = phantom("liver-ct", 0, LIVER_SMALL).label == 1
    areas = liver.sum(axis=(0, 1))
    present = np.flatnonzero(areas)
    assert len(present) >= 20 and areas.std() / areas.mean() > 0.3
    consecutive = [dice(liver[..., k], liver[..., k + 1]) for k in present[:-1]]
    assert max(consecutive) < 1.0 and np.mean(consecutive) > 0.8
    top = int(np.argmax(areas))
    far = [dice(liver[..., top], liver[..., k]) for k in range(liver.shape[2]) if abs(k - top) >= 5]
    assert np.mean(far) < 0.6 < np.mean(consecutive) - 0.2


def test_liver_volume_varies_between_cases():
    volumes = []
    for seed in range(8):
        p = phantom("liver-ct", seed, (32, 32, 22))
        volumes.append((p.label == 1).sum() * np.prod(p.spacing) / 1000.0)
    volumes = np.array(volumes)
    assert 700 < volumes.mean() < 2200                       # millilitres, like adult livers
    assert volumes.std() / volumes.mean() > 0.1
