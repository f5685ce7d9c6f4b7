import math

import numpy as np
import pytest
import torch

from jointreg.metrics.segmentation import ClassMetrics, evaluate_arrays, evaluate_case


def _label_map(shape=(32, 32)):
    gt = np.zeros(shape, np.int16)
    gt[4:16, 4:16] = 1
    gt[20:28, 18:30] = 2
    return gt


def test_identical_maps_are_perfect():
    gt = _label_map()
    rows = evaluate_case(gt, gt, {"organ": 1, "other": 2}, (0.7, 0.7))
    assert [(r.class_name, r.dice, r.hd, r.hd95, r.assd, r.missed) for r in rows] == [
        ("organ", 1.0, 0.0, 0.0, 0.0, False),
        ("other", 1.0, 0.0, 0.0, 0.0, False),
    ]
    assert rows[0].gt_voxels == rows[0].pred_voxels == 144


def test_per_class_known_answers():
    gt = _label_map()
    pred = gt.copy()
    pred[pred == 1] = 0
    pred[7:19, 4:16] = 1  # organ moved 3 rows down (3 x 2 mm)
    rows = {r.class_name: r for r in evaluate_case(pred, gt, {"organ": 1, "other": 2}, (2.0, 1.0), case="c7")}
    organ, other = rows["organ"], rows["other"]
    assert organ.case == "c7" and organ.class_id == 1
    assert organ.dice == pytest.approx(2 * 9 * 12 / (144 + 144))
    assert organ.hd == pytest.approx(6.0)
    assert (other.dice, other.hd) == (1.0, 0.0)


def test_missed_and_spurious_structures():
    gt = _label_map()
    pred = gt.copy()
    pred[pred == 2] = 0  # class 2 missed
    pred[0:2, 0:2] = 3  # class 3 predicted but absent from the truth
    rows = {r.class_id: r for r in evaluate_case(pred, gt, {"a": 1, "b": 2, "c": 3, "d": 4}, 1.0)}
    assert rows[1].dice == 1.0 and not rows[1].missed
    for cid in (2, 3):
        assert rows[cid].dice == 0.0 and rows[cid].missed
        assert all(math.isnan(rows[cid].value(m)) for m in ("hd", "hd95", "assd"))
    assert (rows[2].gt_voxels, rows[2].pred_voxels) == (96, 0)
    assert (rows[3].gt_voxels, rows[3].pred_voxels) == (0, 4)
    # Class 4 is in neither map: both empty.
    assert (rows[4].dice, rows[4].hd, rows[4].hd95, rows[4].assd, rows[4].missed) == (1.0, 0.0, 0.0, 0.0, False)


def test_ignore_label_excludes_unknown_voxels():
    gt = _label_map()
    pred = gt.copy()
    pred[28:, 0:6] = 1  # wrong, but the truth is unknown there
    sparse_gt = gt.copy()
    sparse_gt[26:, 0:8] = 9
    rows = evaluate_case(pred, sparse_gt, {"organ": 1}, 1.0, ignore_label=9)
    assert (rows[0].dice, rows[0].hd) == (1.0, 0.0)
    assert evaluate_case(pred, gt, {"organ": 1}, 1.0)[0].dice < 1.0


def test_a_single_slice_volume_is_evaluated_as_2d():
    gt = _label_map()
    pred = np.roll(gt, 2, axis=1)
    flat = evaluate_case(pred, gt, {"organ": 1}, (1.5, 1.5))[0]
    thin = evaluate_case(pred[:, :, None], gt[:, :, None], {"organ": 1}, (1.5, 1.5, 5.0))[0]
    assert (thin.dice, thin.hd, thin.hd95, thin.assd) == (flat.dice, flat.hd, flat.hd95, flat.assd)
    assert flat.hd == pytest.approx(3.0)


def test_three_d_and_torch_input():
    gt = np.zeros((20, 20, 8), np.int64)
    gt[5:15, 5:15, 2:6] = 1
    pred = np.roll(gt, 1, axis=2)  # one slice at 3 mm
    rows = evaluate_case(torch.from_numpy(pred), torch.from_numpy(gt), [1], (1.0, 1.0, 3.0))
    assert rows[0].class_name == "label_1"
    assert rows[0].hd == pytest.approx(3.0)
    assert rows[0].dice == pytest.approx(2 * 300 / 800)


def test_bad_arguments():
    gt = _label_map()
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(gt[:-1], gt, {"a": 1}, 1.0)
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(gt, gt, {"a": 1}, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        evaluate_case(gt[0], gt[0], {"a": 1}, 1.0)


def test_evaluate_arrays_keeps_case_order():
    gt = _label_map()
    rows = evaluate_arrays([("b", gt, gt, 1.0), ("a", np.zeros_like(gt), gt, 1.0)], {"organ": 1, "other": 2})
    assert [(r.case, r.class_name) for r in rows] == [("b", "organ"), ("b", "other"), ("a", "organ"), ("a", "other")]
    assert [r.missed for r in rows] == [False, False, True, True]


def test_missing_row_and_value_lookup():
    row = ClassMetrics.missing("c1", "liver", 1)
    assert row.status == "missing" and not row.missed
    assert math.isnan(row.value("dice"))
    with pytest.raises(KeyError, match="valid"):
        row.value("jaccard")


def test_package_exports_resolve_lazily():
    import subprocess
    import sys

    import jointreg.metrics as metrics

    for name in metrics.__all__:
        assert getattr(metrics, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'jaccard'"):
        metrics.jaccard  # noqa: B018
    code = "import sys, jointreg.metrics; print('torch' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
