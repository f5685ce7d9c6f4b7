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


def test_label_values_missing_from_dataset_json_are_refused(make_dataset):
    """A label map holding an id that dataset.json no longer declares (a pseudo-label dataset
    that dropped classes beside the source's test labels, say) is refused by name, not read as
    another class or left to fail in a lookup table."""
    root = make_dataset(n_cases=1)
    ds = Dataset.open(root)
    label = ds.read_label("case000")
    array = label.array.copy()
    array[0, 0, 0] = 5
    ds.write_label("case000", array, reference=label)
    with pytest.raises(InputError, match=r"case000.nii.gz: label value\(s\) 5 not declared in the labels "
                                         r"\(background=0, organ=1, other=2\) of .*dataset.json"):
        ds.read_label("case000")
    # declared ids with a gap (nnU-Net refuses those, jointreg reads them) are not undeclared
    spec = ds.spec.replace(labels={"background": 0, "organ": 1, "other": 2, "far": 7})
    array[0, 0, 0] = 7
    gapped = ds.with_spec(spec)
    gapped.write_label("case000", array, reference=label)
    assert gapped.read_label("case000").array[0, 0, 0] == 7
    array[0, 0, 0] = 4
    gapped.write_label("case000", array, reference=label)
    with pytest.raises(InputError, match=r"label value\(s\) 4 not declared"):
        gapped.read_label("case000")
