"""jointreg.data.orientation: exact flips/permutations that keep every voxel's world position."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from jointreg.data.nifti import Volume
from jointreg.data.orientation import Reorientation, reorient, reorientation


def _indexed(shape=(3, 4, 5)) -> np.ndarray:
    """An array whose values are their own flat indices, so every voxel is recognisable."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def _world(affine: np.ndarray, shape) -> np.ndarray:
    """``(X, Y, Z, 3)`` world coordinates (mm) of every voxel centre."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _assert_same_voxels_in_space(before: Volume, after: Volume) -> None:
    """Every voxel of ``after`` holds the value ``before`` has at the same world point."""
    world = _world(after.affine, after.shape).reshape(-1, 3)
    back = (np.linalg.inv(before.affine) @ np.c_[world, np.ones(len(world))].T)[:3].T
    index = np.rint(back).astype(int)
    np.testing.assert_allclose(back, index, atol=1e-9)            # lands on voxel centres
    assert np.array_equal(before.array[tuple(index.T)], after.array.ravel())


def test_flip_known_answer():
    # Axis 0 runs towards patient left ("LAS"): RAS reverses it and moves the origin to the
    # far end, 2 voxels of 2 mm away.
    affine = np.diag([-2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, -5.0, 7.0)
    volume = Volume(_indexed(), affine)
    ras, change = reorient(volume, "RAS")
    assert np.array_equal(ras.array, volume.array[::-1])
    expected = np.diag([2.0, 1.0, 3.0, 1.0])
    expected[:3, 3] = (10.0 - 2.0 * 2.0, -5.0, 7.0)
    np.testing.assert_array_equal(ras.affine, expected)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    assert not change.is_identity and change.target_shape == (3, 4, 5)
    _assert_same_voxels_in_space(volume, ras)


def test_permutation_known_answer():
    # Axis 0 runs superior, axis 1 right, axis 2 anterior ("SRA"): RAS is a pure transpose.
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 5.0, 0.8, 1.2, 1.0
    affine[:3, 3] = (-3.0, 4.0, 9.0)
    volume = Volume(_indexed((3, 4, 5)), affine)
    ras, change = reorient(volume, "RAS")
    assert ras.shape == (4, 5, 3) == change.target_shape
    assert np.array_equal(ras.array, np.transpose(volume.array, (1, 2, 0)))
    expected = np.diag([0.8, 1.2, 5.0, 1.0])
    expected[:3, 3] = (-3.0, 4.0, 9.0)
    np.testing.assert_array_equal(ras.affine, expected)
    _assert_same_voxels_in_space(volume, ras)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "SAL", "ILP"])
@pytest.mark.parametrize("permutation", list(itertools.permutations(range(3))))
def test_any_orientation_keeps_world_positions_and_round_trips_exactly(codes, permutation):
    rng = np.random.default_rng(sum(permutation) + len(codes))
    flips = rng.choice([-1.0, 1.0], 3)
    # A slightly oblique affine: the closest axes are matched, the cosines are kept.
    c, s = np.cos(0.2), np.sin(0.2)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.eye(3)[:, permutation] @ np.diag(flips * [0.7, 1.1, 4.0])
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    volume = Volume(_indexed((4, 5, 6)), affine)
    moved, change = reorient(volume, codes)
    assert "".join(nib.aff2axcodes(moved.affine)) == codes
    _assert_same_voxels_in_space(volume, moved)
    back = change.inverse()
    assert np.array_equal(back.apply(moved.array), volume.array)
    np.testing.assert_allclose(back.map_affine(moved.affine), affine, atol=1e-12)


def test_channels_first_arrays_keep_their_channel_axis():
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])                    # "LPS"
    probabilities = np.stack([_indexed(), -_indexed()])         # (C, X, Y, Z)
    change = reorientation(affine, "RAS", (3, 4, 5))
    moved = change.apply(probabilities, channels_first=True)
    assert moved.shape == (2, 3, 4, 5) and moved.flags.c_contiguous
    assert np.array_equal(moved, probabilities[:, ::-1, ::-1, :])
    assert np.array_equal(change.inverse().apply(moved, channels_first=True), probabilities)


def test_target_given_as_an_affine_matches_its_codes():
    source = np.diag([1.0, -1.0, 1.0, 1.0])
    target = np.diag([-0.5, 0.5, 3.0, 1.0])                     # "LAS", other spacing
    by_affine = reorientation(source, target, (3, 4, 5))
    by_codes = reorientation(source, "LAS", (3, 4, 5))
    assert np.array_equal(by_affine.transform, by_codes.transform)


def test_identity_returns_the_volume_itself():
    volume = Volume(_indexed(), np.diag([1.0, 2.0, 3.0, 1.0]))
    same, change = reorient(volume, "RAS")
    assert same is volume and change.is_identity
    assert np.array_equal(change.inverse().transform, change.transform)


def test_header_and_path_are_carried_along(tmp_path):
    header = nib.Nifti1Header()
    volume = Volume(_indexed(), np.diag([-1.0, 1.0, 1.0, 1.0]), header, tmp_path / "x.nii.gz")
    moved, _ = reorient(volume, "RAS")
    assert moved.header is header and moved.path == volume.path


def test_errors():
    with pytest.raises(ValueError, match="does not match"):
        reorientation(np.eye(4), "LAS", (3, 4, 5)).apply(np.zeros((4, 4, 5)))
    flat = np.diag([1.0, 1.0, 0.0, 1.0])                        # axis 2 has no direction
    with pytest.raises(ValueError, match="axis 2 no direction"):
        reorientation(flat, "RAS", (3, 4, 5))
    assert isinstance(reorientation(np.eye(4), "RAS", (3, 4, 5)), Reorientation)
