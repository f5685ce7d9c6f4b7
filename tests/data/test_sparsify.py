import json
import logging

import numpy as np
import pytest

from jointreg.data.dataset import Dataset
from jointreg.data.sparsify import case_rng, foreground_areas, select_slices, sparsify_dataset
from jointreg.data.validate import validate_dataset
from jointreg.errors import ConfigError, InputError

IGNORE = 3  # make_dataset labels: background 0, organ 1, other 2 -> ignore 3


# --- slice selection -------------------------------------------------------------------------
def test_largest_keeps_biggest_areas_ties_to_lower_index():
    areas = np.array([0, 5, 9, 9, 2, 0, 7])
    assert select_slices(areas, 1, "largest") == [2]
    assert select_slices(areas, 3, "largest") == [2, 3, 6]
    assert select_slices(np.array([3, 3, 3]), 2, "largest") == [0, 1]
    assert select_slices(areas, 10, "largest") == [1, 2, 3, 4, 6]   # only foreground slices
    assert select_slices(np.zeros(5), 2, "largest") == []


def test_even_spreads_over_the_foreground_extent():
    areas = np.array([0, 0, 4, 1, 0, 3, 2, 1, 5, 0])    # extent 2..8 (7 slices)
    assert select_slices(areas, 1, "even") == [5]        # the middle
    assert select_slices(areas, 2, "even") == [3, 7]     # bin centres 3.25 and 6.75
    assert select_slices(areas, 3, "even") == [3, 5, 7]  # 2.67, 5, 7.33
    assert select_slices(areas, 9, "even") == list(range(2, 9))
    assert select_slices(np.array([0, 0, 1, 0, 0, 1]), 1, "even") == [4]   # extent 2..5: 3.5 rounds up


def test_extremes_take_largest_and_smallest_in_turn():
    areas = np.array([0, 5, 9, 2, 9, 0, 2, 7])          # the ED/ES rule on a cine loop's LV areas
    assert select_slices(areas, 2, "extremes") == [2, 3]              # largest 9 and smallest 2: lower indices
    assert select_slices(areas, 1, "extremes") == select_slices(areas, 1, "largest") == [2]
    assert select_slices(areas, 3, "extremes") == [2, 3, 4]           # then the second largest
    assert select_slices(areas, 4, "extremes") == [2, 3, 4, 6]        # and the second smallest
    assert select_slices(areas, 20, "extremes") == [1, 2, 3, 4, 6, 7]   # empty slices never count
    assert select_slices(np.array([0, 4, 0]), 2, "extremes") == [1]
    assert select_slices(np.zeros(4), 2, "extremes") == []


def test_random_is_deterministic_and_draws_foreground_only():
    areas = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    first = select_slices(areas, 3, "random", case_rng(7, "caseA"))
    assert first == select_slices(areas, 3, "random", case_rng(7, "caseA"))
    assert len(first) == 3 and set(first) <= set(range(1, 9))
    draws = {tuple(select_slices(areas, 3, "random", case_rng(seed, "caseA"))) for seed in range(8)}
    assert len(draws) > 1


def test_foreground_areas_per_axis():
    label = np.zeros((4, 5, 6), np.int16)
    label[1, 2, 3] = 1
    label[1, 2, 4] = 2
    label[2, 0, 4] = 1
    np.testing.assert_array_equal(foreground_areas(label, 2, [1, 2]), [0, 0, 0, 1, 2, 0])
    np.testing.assert_array_equal(foreground_areas(label, 0, [2]), [0, 1, 0, 0])


# --- the dataset operation -------------------------------------------------------------------
def _areas(label, axis=2, ids=(1, 2)):
    return foreground_areas(label, axis, list(ids))


def test_slices_mode_writes_a_complete_sparse_dataset(make_dataset, tmp_path):
    source = make_dataset(n_cases=3, shape=(24, 20, 8))
    src = Dataset.open(source)
    image, label = src.read_image("case000"), src.read_label("case000")
    src.write_image("test0", image.array, reference=image, split="Ts")
    src.write_label("test0", label.array, reference=label, split="Ts")
    out = tmp_path / "sparse"
    manifest = sparsify_dataset(source, out, slices_per_volume=1, progress=False)

    ds = Dataset.open(out)
    assert ds.spec.ignore_label == IGNORE and ds.spec.num_training == 3
    assert json.loads((out / "sparsify.json").read_text()) == manifest
    assert manifest["strategy"] == "largest" and manifest["ignore_label"] == IGNORE
    for case in src.cases():
        original = src.read_label(case).array
        entry = manifest["cases"][case]
        expected = int(np.argmax(_areas(original)))        # ties -> lower index, like argmax
        assert entry["axis"] == 2 and entry["slices"] == [expected]
        sparse = ds.read_label(case).array
        np.testing.assert_array_equal(sparse[..., expected], original[..., expected])
        assert (np.delete(sparse, expected, axis=2) == IGNORE).all()
        np.testing.assert_array_equal(ds.read_label(case, full=True).array, original)
        assert ds.image_path(case).read_bytes() == src.image_path(case).read_bytes()
    assert ds.image_path("case000").stat().st_ino == src.image_path("case000").stat().st_ino  # hard link
    assert ds.cases("Ts") == ["test0"]
    assert ds.label_path("test0", "Ts").read_bytes() == src.label_path("test0", "Ts").read_bytes()
    report = validate_dataset(out)
    assert report.ok, report.problems
    assert report.summary["slices_per_status"]["Tr"]["annotated"] == 3


def test_same_seed_same_result_other_seed_other_result(make_dataset, tmp_path):
    source = make_dataset(n_cases=4, shape=(16, 16, 12))
    runs = [sparsify_dataset(source, tmp_path / f"r{i}", slices_per_volume=2, strategy="random", seed=seed,
                             progress=False)["cases"] for i, seed in enumerate((5, 5, 6))]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    for case, entry in runs[0].items():
        assert len(entry["slices"]) == 2
        assert all(area > 0 for area in entry["areas"])
    labels = [Dataset.open(tmp_path / f"r{i}").read_label("case002").array for i in (0, 1)]
    np.testing.assert_array_equal(labels[0], labels[1])


def test_volumes_mode_keeps_n_whole_cases(make_dataset, tmp_path):
    source = make_dataset(n_cases=4, shape=(16, 16, 4))
    manifest = sparsify_dataset(source, tmp_path / "v", volumes=1, seed=3, progress=False)
    again = sparsify_dataset(source, tmp_path / "v2", volumes=1, seed=3, progress=False)
    assert manifest["kept_volumes"] == again["kept_volumes"] and len(manifest["kept_volumes"]) == 1
    kept = manifest["kept_volumes"][0]
    src, ds = Dataset.open(source), Dataset.open(tmp_path / "v")
    for case in src.cases():
        sparse = ds.read_label(case).array
        if case == kept:
            np.testing.assert_array_equal(sparse, src.read_label(case).array)
        else:
            assert (sparse == IGNORE).all()
        assert manifest["cases"][case] == {"kept": case == kept}


def test_classes_axis_and_volumes_without_foreground(make_dataset, tmp_path, caplog):
    source = make_dataset(n_cases=2, shape=(20, 16, 6))
    src = Dataset.open(source)
    label = src.read_label("case001")
    src.write_label("case001", np.zeros(label.shape, np.int16), reference=label)
    with caplog.at_level(logging.WARNING, logger="jointreg.data.sparsify"):
        manifest = sparsify_dataset(source, tmp_path / "s", slices_per_volume=1, axis=0, classes=["other"],
                                    progress=False)
    assert manifest["no_foreground"] == ["case001"] and "case001: no foreground slice" in caplog.text
    assert manifest["classes"] == ["other"]
    entry = manifest["cases"]["case000"]
    original = src.read_label("case000").array
    assert entry["axis"] == 0
    assert entry["slices"] == [int(np.argmax(foreground_areas(original, 0, [2])))]
    assert (Dataset.open(tmp_path / "s").read_label("case001").array == IGNORE).all()


def test_even_strategy_on_a_dataset(make_dataset, tmp_path):
    source = make_dataset(n_cases=1, shape=(16, 16, 12))
    original = Dataset.open(source).read_label("case000").array
    fg = np.flatnonzero(_areas(original) > 0)
    manifest = sparsify_dataset(source, tmp_path / "e", slices_per_volume=1, strategy="even", progress=False)
    assert manifest["cases"]["case000"]["slices"] == [int(np.floor((fg[0] + fg[-1]) / 2 + 0.5))]


def test_refusals_write_nothing(make_dataset, tmp_path):
    source = make_dataset(n_cases=2, shape=(16, 16, 4))
    before = sorted(p.name for p in source.iterdir())
    with pytest.raises(InputError, match="must differ from the source"):
        sparsify_dataset(source, source, slices_per_volume=1)
    with pytest.raises(InputError, match="must not contain, or lie inside"):
        sparsify_dataset(source, source / "inner", slices_per_volume=1)
    with pytest.raises(InputError, match="must not contain, or lie inside"):
        sparsify_dataset(source, source.parent, slices_per_volume=1, overwrite=True)
    assert sorted(p.name for p in source.iterdir()) == before
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        sparsify_dataset(source, existing, slices_per_volume=1)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    sparsify_dataset(source, existing, slices_per_volume=1, overwrite=True, progress=False)
    assert not (existing / "keep.txt").exists() and (existing / "sparsify.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of"),
        ({"slices_per_volume": 1, "volumes": 1}, "exactly one of"),
        ({"slices_per_volume": 0}, ">= 1"),
        ({"slices_per_volume": 1, "strategy": "best"}, "valid: largest, even, random"),
        ({"slices_per_volume": 1, "classes": ["liver"]}, "valid: organ, other"),
        ({"volumes": 5}, "2 labelled case"),
    ],
)
def test_bad_options_are_config_errors(make_dataset, tmp_path, kwargs, message):
    source = make_dataset(n_cases=2, shape=(16, 16, 4))
    with pytest.raises(ConfigError, match=message):
        sparsify_dataset(source, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()
