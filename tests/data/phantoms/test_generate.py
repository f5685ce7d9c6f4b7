"""jointreg.data.phantoms.generate: the phantom dataset on disk."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from jointreg.data.phantoms import LIVER_LABELS, case_seed, generate_phantom_dataset, make_phantom
from jointreg.errors import ConfigError, InputError


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
