"""Tests for jointreg.data.phantoms, data_tools/phantom.py and the difficulty benchmark's protocol."""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from jointreg.data.phantoms import (
    CARDIAC_LABELS,
    LIVER_LABELS,
    PHANTOM_KINDS,
    case_id,
    case_seed,
    generate_phantom_dataset,
    make_phantom,
    resolve_geometry,
)
from jointreg.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]
# Keeps the default 5 mm slices (what slice-to-slice tests need) at 1/4 of the in-plane voxels.
LIVER_SMALL = (64, 64, 44)
CARDIAC_SMALL = (64, 64, 12)


@lru_cache(maxsize=None)
def phantom(kind: str, seed: int, shape: tuple[int, int, int]):
    return make_phantom(kind, seed, shape=shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# --- reproducibility ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,shape", [("liver-ct", (48, 48, 22)), ("cardiac-mr", CARDIAC_SMALL)])
def test_same_seed_gives_identical_phantom(kind, shape):
    a, b = make_phantom(kind, 5, shape=shape), make_phantom(kind, 5, shape=shape)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.label, b.label)
    assert np.array_equal(a.tissue, b.tissue)
    assert np.array_equal(a.affine, b.affine)


@pytest.mark.parametrize("kind,shape,structure", [("liver-ct", (48, 48, 22), 1), ("cardiac-mr", CARDIAC_SMALL, 2)])
def test_different_seeds_give_different_anatomy(kind, shape, structure):
    a, b = make_phantom(kind, 1, shape=shape), make_phantom(kind, 2, shape=shape)
    assert not np.array_equal(a.image, b.image)
    assert dice(a.label == structure, b.label == structure) < 0.9


def test_anatomy_of_a_seed_does_not_depend_on_the_grid_shape():
    # Only the white noise depends on the shape; organs are the same in millimetres.
    fine, coarse = make_phantom("liver-ct", 3, shape=(64, 64, 22)), make_phantom("liver-ct", 3, shape=(32, 32, 11))
    for value in LIVER_LABELS.values():
        if value:
            ml_fine = (fine.label == value).sum() * np.prod(fine.spacing) / 1000
            ml_coarse = (coarse.label == value).sum() * np.prod(coarse.spacing) / 1000
            assert ml_coarse == pytest.approx(ml_fine, rel=0.2)


def test_case_seeds_are_stable():
    # Datasets, the demo and results/phantom_difficulty.json rely on these exact values.
    assert case_seed(0, 0) == 2968811710
    assert case_seed(0, 1) == 3964924996
    assert len({case_seed(s, i) for s in range(4) for i in range(50)}) == 200
    assert case_id("liver-ct", 3) == "liver_ct_003"


# --- geometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(PHANTOM_KINDS))
def test_default_geometry_has_the_through_plane_axis_last(kind):
    p = phantom(kind, 0, PHANTOM_KINDS[kind].shape)
    assert p.image.shape == PHANTOM_KINDS[kind].shape
    assert p.image.dtype == np.float32 and p.label.dtype == np.int16
    assert np.isfinite(p.image).all()
    assert np.argmax(p.spacing) == 2 and p.spacing[2] > 1.5 * max(p.spacing[:2])
    centre = (np.array(p.image.shape) - 1) / 2.0
    np.testing.assert_allclose(p.affine[:3, :3] @ centre + p.affine[:3, 3], 0.0, atol=1e-9)


def test_resolve_geometry_keeps_the_field_of_view():
    assert resolve_geometry("liver-ct") == ((128, 128, 44), (2.8, 2.8, 5.0))
    shape, spacing = resolve_geometry("liver-ct", shape=(64, 64, 22))
    assert shape == (64, 64, 22) and spacing == pytest.approx((5.6, 5.6, 10.0))
    shape, spacing = resolve_geometry("cardiac-mr", spacing=(3.6, 3.6, 8.0))
    assert shape == (64, 64, 12) and spacing == (3.6, 3.6, 8.0)
    assert resolve_geometry("liver-ct", (10, 20, 5), (1.0, 2.0, 3.0)) == ((10, 20, 5), (1.0, 2.0, 3.0))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "lung-ct"}, "valid kinds: cardiac-mr, liver-ct"),
        ({"shape": (4, 64, 10)}, "too small"),
        ({"shape": (64, 64)}, "three positive integers"),
        ({"spacing": (1.0, -1.0, 2.0)}, "positive millimetre"),
        ({"seed": -1}, "non-negative integer"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, message):
    args = {"kind": "liver-ct", "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        make_phantom(args.pop("kind"), args.pop("seed"), **args)


# --- liver-ct content ------------------------------------------------------------------------------
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


# --- cardiac-mr content ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cardiac_mr_anatomy(seed):
    p = phantom("cardiac-mr", seed, CARDIAC_SMALL)
    assert p.labels == CARDIAC_LABELS == {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
    assert set(np.unique(p.label).tolist()) == {0, 1, 2, 3}
    assert p.image.min() >= 0                                 # magnitude images
    rv, myo, lv = (p.label == v for v in (1, 2, 3))
    # bSSFP contrast: bright blood, dark myocardium, darker lungs.
    assert np.median(p.image[lv]) > 1.8 * np.median(p.image[myo])
    assert np.median(p.image[p.tissue_mask("lung")]) < 0.5 * np.median(p.image[myo])
    # The LV shrinks to the apex (low slice indices); the RV ends before the LV apex.
    lv_area, myo_area = lv.sum(axis=(0, 1)), myo.sum(axis=(0, 1))
    first_myo = int(np.flatnonzero(myo_area)[0])
    assert lv_area[first_myo] < 0.3 * lv_area.max()
    assert np.flatnonzero(rv.sum(axis=(0, 1)))[0] > first_myo
    # The myocardium wraps the blood pool: along every row and column of a mid slice, LV voxels
    # are bracketed by myocardium.
    mid = int(np.argmax(lv_area))
    for line in list(np.flatnonzero(lv[:, :, mid].any(axis=1))):
        row_lv = np.flatnonzero(lv[line, :, mid])
        row_myo = np.flatnonzero(myo[line, :, mid])
        if row_myo.size:
            assert row_myo.min() < row_lv.min() or row_myo.max() > row_lv.max()


# --- dataset generation --------------------------------------------------------------------------
def test_generate_phantom_dataset_writes_the_canonical_layout(tmp_path):
    from jointreg.data.dataset import Dataset

    shape = (32, 32, 11)
    out = generate_phantom_dataset(tmp_path / "liver", "liver-ct", n_train=2, n_test=1, seed=4, shape=shape)
    ds = Dataset.open(out)
    assert ds.spec.modality == "CT" and ds.spec.num_training == 2
    assert dict(ds.spec.labels) == LIVER_LABELS
    assert ds.cases("Tr") == ["liver_ct_000", "liver_ct_001"] and ds.cases("Ts") == ["liver_ct_002"]
    meta = json.loads((out / "dataset.json").read_text())["phantom"]
    assert meta["kind"] == "liver-ct" and meta["seed"] == 4 and meta["shape"] == list(shape)
    assert meta["case_seeds"]["liver_ct_002"] == case_seed(4, 2)
    expected = make_phantom("liver-ct", case_seed(4, 2), shape=shape)
    image, label = ds.read_image("liver_ct_002", "Ts"), ds.read_label("liver_ct_002", "Ts")
    assert np.array_equal(image.array, expected.image) and np.array_equal(label.array, expected.label)
    np.testing.assert_allclose(image.affine, expected.affine, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_generated_dataset_passes_validation(tmp_path):
    if importlib.util.find_spec("jointreg.data.validate") is None:
        pytest.skip("jointreg.data.validate is not available in this checkout")
    from jointreg.data.validate import validate_dataset

    for kind, shape in (("liver-ct", (32, 32, 11)), ("cardiac-mr", (32, 32, 12))):
        out = generate_phantom_dataset(tmp_path / kind, kind, n_train=2, n_test=1, shape=shape)
        report = validate_dataset(out)
        assert report.ok, report.problems


def test_generate_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "heart"
    generate_phantom_dataset(out, "cardiac-mr", n_train=1, n_test=0, shape=(32, 32, 12))
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "MR"}
    assert not (out / "imagesTs").exists()
    with pytest.raises(InputError, match="already exists"):
        generate_phantom_dataset(out, "cardiac-mr", n_train=1, n_test=0, shape=(32, 32, 12))
    generate_phantom_dataset(out, "cardiac-mr", n_train=2, n_test=0, shape=(32, 32, 12), overwrite=True)
    assert len(list((out / "imagesTr").iterdir())) == 2


@pytest.mark.parametrize("kwargs", [{"n_train": 0}, {"n_test": -1}, {"kind": "nope"}])
def test_generate_rejects_bad_arguments_without_writing(tmp_path, kwargs):
    args = {"kind": "liver-ct", **kwargs}
    with pytest.raises(ConfigError):
        generate_phantom_dataset(tmp_path / "out", args.pop("kind"), shape=(32, 32, 11), **args)
    assert list(tmp_path.iterdir()) == []


# --- command line --------------------------------------------------------------------------------
def test_prepare_phantom_command(tmp_path, capsys):
    from jointreg.cli.main import main

    out = tmp_path / "heart"
    code = main(["prepare", "phantom", "--kind", "cardiac-mr", "--shape", "32", "32", "12",
                 "--cases", "2", "--test-cases", "1", "--seed", "3", "--out", str(out)])
    assert code == 0
    assert "2 training + 1 test cardiac-mr" in capsys.readouterr().out
    assert len(list((out / "imagesTs").iterdir())) == 1
    assert json.loads((out / "dataset.json").read_text())["phantom"]["seed"] == 3

    assert main(["prepare", "phantom", "--kind", "lung", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown phantom kind 'lung'" in err[0]
    assert not (tmp_path / "x").exists()


def test_prepare_phantom_help_names_every_kind(capsys):
    from jointreg.cli.main import main

    with pytest.raises(SystemExit):
        main(["prepare", "phantom", "--help"])
    text = capsys.readouterr().out
    for kind in PHANTOM_KINDS:
        assert kind in text


# --- the difficulty benchmark's protocol ---------------------------------------------------------
def _benchmark():
    path = REPO / "benchmarks" / "phantom_difficulty.py"
    spec = importlib.util.spec_from_file_location("phantom_difficulty_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_copy_label_protocol_known_answer():
    bench = _benchmark()
    mask = np.zeros((4, 4, 10), bool)
    mask[0:2, 0:2, 2] = True            # area 4
    mask[0:2, 0:3, 3] = True            # area 6: the moving slice
    mask[0:1, 0:3, 4] = True            # area 3, inside the moving mask
    pairs = bench.copy_label_pairs(mask, window=2)
    # Fixed: slices with the structure (2, 4) and every slice within ±2 of 3 (1, 5).
    assert [(o, round(d, 4), has) for o, d, has in pairs] == [
        (-2, 0.0, False), (-1, 0.8, True), (1, round(2 * 3 / 9, 4), True), (2, 0.0, False),
    ]
    summary = bench.summarise([pairs])
    assert summary["pairs"] == 4
    assert summary["dice_mean"] == pytest.approx((0.8 + 2 / 3) / 4, abs=1e-4)
    assert summary["dice_mean_structure_slices"] == pytest.approx((0.8 + 2 / 3) / 2, abs=1e-4)
    assert bench.copy_label_pairs(np.zeros((3, 3, 3), bool)) == []


# --- building blocks -----------------------------------------------------------------------------
def test_crop_box_holds_every_voxel_near_the_centre():
    from jointreg.data.phantoms import _deformed_coordinates, _Grid

    grid = _Grid((40, 36, 20), (4.0, 4.0, 6.0), (160.0, 144.0, 120.0))
    warped = _deformed_coordinates(np.random.default_rng(0), grid, rotation_deg=20.0, shift_mm=(10.0, 5.0, 8.0),
                                   warp_scale_mm=(40.0, 40.0, 40.0), warp_mm=(8.0, 8.0))
    # Without a warp the box is tight, so a wrong rotation or shift would lose voxels.
    rigid = _deformed_coordinates(np.random.default_rng(4), grid, rotation_deg=40.0, shift_mm=(10.0, 5.0, 8.0),
                                  warp_scale_mm=(40.0, 40.0, 40.0), warp_mm=(0.0, 0.0))
    assert abs(rigid.theta) > 0.2 and rigid.margin < 0.01
    for a in (warped, rigid):
        for centre, radius in (((20.0, -15.0, 10.0), 25.0), ((-60.0, 50.0, -40.0), 12.0), ((0.0, 0.0, 0.0), 5.0)):
            near = (a.X - centre[0]) ** 2 + (a.Y - centre[1]) ** 2 + (a.Z - centre[2]) ** 2 <= radius**2
            box, sub = a.crop(centre, radius)
            assert near.any() and near[box].sum() == near.sum()
            assert near[box].size < near.size                      # it does crop
            assert np.array_equal(sub.X, a.X[box])


def test_smooth_noise_has_unit_variance_and_the_requested_smoothness():
    from jointreg.data.phantoms import _Grid, _smooth_noise

    grid = _Grid((96, 96, 48), (4.0, 4.0, 4.0), (384.0, 384.0, 192.0))
    field = _smooth_noise(np.random.default_rng(0), grid, 12.0)
    assert field.dtype == np.float32 and field.shape == grid.shape
    assert abs(float(field.mean())) < 0.1 and float(field.std()) == pytest.approx(1.0, abs=0.1)
    # Neighbours 4 mm apart are strongly correlated, points 48 mm apart are not.
    near = np.corrcoef(field[:-1].ravel(), field[1:].ravel())[0, 1]
    far = np.corrcoef(field[:-12].ravel(), field[12:].ravel())[0, 1]
    assert near > 0.8 and abs(far) < 0.1
