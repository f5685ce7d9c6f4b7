import json

import numpy as np
import pytest

from jointreg.data.dataset import Dataset, DatasetSpec, read_spec
from jointreg.errors import InputError


def test_spec_views_and_ignore():
    spec = DatasetSpec({"0": "CT"}, {"background": 0, "liver": 1, "spleen": 2}, 4)
    assert spec.ignore_label is None
    sparse = spec.with_ignore()
    assert sparse.ignore_label == 3
    assert sparse.num_classes == 3
    assert list(sparse.foreground_labels) == ["liver", "spleen"]
    assert DatasetSpec.from_json(sparse.to_json()) == sparse


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"liver": 1}, "background"),
        ({"background": 0, "liver": [1, 2]}, "region-based"),
        ({"background": 0, "liver": 1.5}, "non-integer"),
        ({"background": 0, "ignore": 1, "liver": 2}, "highest id"),
        ({"background": 0, "a": 1, "b": 1}, "same id"),
    ],
)
def test_bad_label_tables_are_rejected(tmp_path, labels, message):
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels}))
    with pytest.raises(InputError, match=message):
        read_spec(tmp_path)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(InputError, match="dataset.json: file not found"):
        read_spec(tmp_path)
    (tmp_path / "dataset.json").write_text("{oops")
    with pytest.raises(InputError, match="invalid JSON"):
        read_spec(tmp_path)


def test_dataset_layout_roundtrip(make_dataset):
    root = make_dataset(n_cases=2)
    ds = Dataset.open(root)
    assert ds.cases() == ["case000", "case001"]
    assert ds.image_path("case000").name == "case000_0000.nii.gz"
    image, label = ds.read_image("case000"), ds.read_label("case000")
    assert image.shape == label.shape == (32, 32, 8)
    assert image.spacing == pytest.approx((1.5, 1.5, 4.0))
    assert set(np.unique(label.array)) == {0, 1, 2}


def test_temporaries_are_not_cases(make_dataset):
    root = make_dataset(n_cases=1)
    (root / "imagesTr" / ".tmp-abc-case009_0000.nii.gz").write_bytes(b"")
    assert Dataset.open(root).cases() == ["case000"]
