import json
import math

import nibabel as nib
import numpy as np
import pytest

from jointreg.data.nifti import write_volume
from jointreg.errors import ConfigError, InputError
from jointreg.metrics.folders import evaluate_folders, label_files, resolve_ground_truth

SPACING = (1.5, 1.5, 4.0)
LABELS = {"background": 0, "organ": 1, "other": 2}


def _affine(spacing=SPACING):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    return affine


def _truth(shape=(24, 24, 6)):
    gt = np.zeros(shape, np.int16)
    gt[4:14, 4:14, 1:5] = 1
    gt[16:22, 6:12, 2:4] = 2
    return gt


def _write(path, array, affine=None):
    write_volume(path, array, affine=_affine() if affine is None else affine, is_label=True)


def _dataset_json(folder, labels=LABELS):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(data))


def _setup(tmp_path, n=3, labels=LABELS):
    """A dataset with labelsTs and matching predictions (the organ shifted by 2 voxels)."""
    root = tmp_path / "ds"
    _dataset_json(root, labels)
    for i in range(n):
        gt = _truth()
        _write(root / "labelsTs" / f"case{i}.nii.gz", gt)
        pred = gt.copy()
        pred[pred == 1] = 0
        pred[6:16, 4:14, 1:5] = 1
        _write(tmp_path / "pred" / f"case{i}.nii.gz", pred)
    return root, tmp_path / "pred"


def test_dataset_folder_with_test_labels(tmp_path):
    root, pred = _setup(tmp_path)
    result = evaluate_folders(pred, root, progress=False)
    assert result.info["ground_truth"] == str(root / "labelsTs")
    assert result.info["classes"] == {"organ": 1, "other": 2}
    assert result.missing_cases == []
    assert [(r.case, r.class_name) for r in result.rows][:2] == [("case0", "organ"), ("case0", "other")]
    organ = result.rows[0]
    assert organ.dice == pytest.approx(2 * 8 / 20)
    assert organ.hd == pytest.approx(2 * 1.5)  # 2 voxels along the 1.5 mm axis
    assert result.rows[1].dice == 1.0


def test_full_labels_are_preferred_over_sparse_training_labels(tmp_path):
    root = tmp_path / "ds"
    _dataset_json(root, {**LABELS, "ignore": 3})
    gt = _truth()
    sparse = np.full_like(gt, 3)
    sparse[:, :, 2] = gt[:, :, 2]
    _write(root / "labelsTr" / "a.nii.gz", sparse)
    _write(root / "labelsTr_full" / "a.nii.gz", gt)
    _write(tmp_path / "pred" / "a.nii.gz", gt)
    assert resolve_ground_truth(root, ["a"]) == root / "labelsTr_full"
    result = evaluate_folders(tmp_path / "pred", root, progress=False)
    assert result.info["ignore_label"] == 3
    assert all(r.dice == 1.0 for r in result.rows)
    # Against the sparse labels directly: only slice 2 counts.
    sparse_result = evaluate_folders(tmp_path / "pred", root / "labelsTr", progress=False)
    assert sparse_result.info["label_map"] == str(root / "dataset.json")
    assert sparse_result.rows[0].gt_voxels == 100


def test_missing_prediction_gives_missing_rows(tmp_path):
    root, pred = _setup(tmp_path)
    (pred / "case1.nii.gz").unlink()
    result = evaluate_folders(pred, root, progress=False)
    assert result.missing_cases == ["case1"]
    missing = [r for r in result.rows if r.case == "case1"]
    assert [r.status for r in missing] == ["missing", "missing"]
    assert all(math.isnan(r.dice) for r in missing)


def test_affine_mismatch_names_the_case(tmp_path):
    root, pred = _setup(tmp_path)
    shifted = _affine()
    shifted[0, 3] += 0.5
    _write(pred / "case2.nii.gz", _truth(), affine=shifted)
    with pytest.raises(InputError, match=r"case2.*case 'case2': affine differs"):
        evaluate_folders(pred, root, progress=False)


def test_shape_mismatch_names_the_case(tmp_path):
    root, pred = _setup(tmp_path)
    _write(pred / "case0.nii.gz", _truth((24, 24, 5)))
    with pytest.raises(InputError, match="case 'case0': shape"):
        evaluate_folders(pred, root, progress=False)


def test_values_outside_the_label_map(tmp_path):
    root, pred = _setup(tmp_path)
    bad = _truth()
    bad[0, 0, 0] = 7
    _write(pred / "case1.nii.gz", bad)
    with pytest.raises(InputError, match=r"case 'case1': prediction holds label value\(s\) \[7\]"):
        evaluate_folders(pred, root, progress=False)


def test_ignore_label_in_a_prediction_is_refused(tmp_path):
    root, pred = _setup(tmp_path, labels={**LABELS, "ignore": 3})
    bad = _truth()
    bad[0, 0, 0] = 3
    _write(pred / "case0.nii.gz", bad)
    with pytest.raises(InputError, match="'ignore' label"):
        evaluate_folders(pred, root, progress=False)


def test_non_integer_label_file(tmp_path):
    root, pred = _setup(tmp_path)
    data = _truth().astype(np.float32)
    data[3, 3, 3] = 0.5
    nib.save(nib.Nifti1Image(data, _affine()), str(pred / "case0.nii.gz"))
    with pytest.raises(InputError, match="case0.nii.gz: label map holds non-integer"):
        evaluate_folders(pred, root, progress=False)


def test_label_map_inferred_without_dataset_json(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    only_organ = _truth()
    only_organ[only_organ == 2] = 0
    _write(gt_dir / "x.nii.gz", _truth())
    _write(pred_dir / "x.nii.gz", _truth())
    _write(gt_dir / "y.nii.gz", only_organ)
    _write(pred_dir / "y.nii.gz", only_organ)
    result = evaluate_folders(pred_dir, gt_dir, progress=False)
    assert result.info["classes"] == {"label_1": 1, "label_2": 2}
    assert "inferred" in result.info["label_map"]
    y2 = [r for r in result.rows if r.case == "y" and r.class_id == 2]
    assert [(r.dice, r.hd, r.missed) for r in y2] == [(1.0, 0.0, False)]
    assert len(result.rows) == 4


def test_class_selection(tmp_path):
    root, pred = _setup(tmp_path)
    result = evaluate_folders(pred, root, classes=["other"], progress=False)
    assert {r.class_name for r in result.rows} == {"other"}
    assert {r.class_name for r in evaluate_folders(pred, root, classes=["1"], progress=False).rows} == {"organ"}
    with pytest.raises(ConfigError, match=r"valid classes: organ \(1\), other \(2\)"):
        evaluate_folders(pred, root, classes=["liver"], progress=False)


def test_nothing_matches(tmp_path):
    root, pred = _setup(tmp_path)
    for path in pred.iterdir():
        path.rename(pred / ("p_" + path.name))
    with pytest.raises(InputError, match="none of labelsTs"):
        evaluate_folders(pred, root, progress=False)
    with pytest.raises(InputError, match="no prediction matches"):
        evaluate_folders(pred, root / "labelsTs", progress=False)


def test_label_files_skips_temporaries_and_rejects_duplicates(tmp_path):
    _write(tmp_path / "a.nii.gz", _truth())
    (tmp_path / ".tmp-123-b.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert list(label_files(tmp_path)) == ["a"]
    _write(tmp_path / "a.nii", _truth())
    with pytest.raises(InputError, match="second file"):
        label_files(tmp_path)


def test_parallel_workers_give_the_same_rows(tmp_path):
    root, pred = _setup(tmp_path, n=3)
    serial = evaluate_folders(pred, root, progress=False)
    parallel = evaluate_folders(pred, root, workers=2, progress=False)
    assert parallel.rows == serial.rows


def _liver_only_predictions(tmp_path, root, manifest_labels, pred_id):
    """Predictions of a model that knows "other" alone (as id ``pred_id``), with its label map."""
    pred = tmp_path / "pred_other"
    for path in sorted((root / "labelsTs").glob("*.nii.gz")):
        gt = nib.load(path).get_fdata().astype(np.int16)
        _write(pred / path.name, np.where(gt == 2, pred_id, 0).astype(np.int16))
    (pred / "segmentation.json").write_text(json.dumps({"labels": manifest_labels}))
    return pred


def test_classes_the_predictions_do_not_know_are_not_scored(tmp_path):
    """The README's evaluate example: a run trained on one class, a dataset that labels more."""
    root, _ = _setup(tmp_path)
    # The model calls "other" id 1 (its own label space); the dataset calls it 2.
    pred = _liver_only_predictions(tmp_path, root, {"background": 0, "other": 1}, pred_id=1)
    result = evaluate_folders(pred, root, progress=False)
    assert {r.class_name for r in result.rows} == {"other"}
    assert all(r.dice == 1.0 and not r.missed for r in result.rows)  # ids matched by name
    assert result.info["classes_not_predicted"] == {"organ": 1}
    assert result.info["prediction_label_map"] == str(pred / "segmentation.json")
    # Asked for explicitly: the known class is scored, the other reported, never a Dice of 0.
    both = evaluate_folders(pred, root, classes=["organ", "other"], progress=False)
    assert {r.class_name for r in both.rows} == {"other"} and both.info["classes_not_predicted"] == {"organ": 1}
    with pytest.raises(InputError, match=r"segmentation.json: the predictions label none of the classes to "
                                         r"evaluate \(organ\); their label map has: other"):
        evaluate_folders(pred, root, classes=["organ"], progress=False)
    # Without the label map the old reading holds: id 1 is the dataset's organ.
    (pred / "segmentation.json").unlink()
    plain = evaluate_folders(pred, root, progress=False)
    assert {r.class_name for r in plain.rows} == {"organ", "other"}
    assert all(r.missed for r in plain.rows if r.class_name == "other")


def test_a_broken_prediction_label_map_is_one_clear_error(tmp_path):
    root, _ = _setup(tmp_path)
    pred = _liver_only_predictions(tmp_path, root, {"background": 0, "other": 2}, pred_id=2)
    (pred / "segmentation.json").write_text("{not json")
    with pytest.raises(InputError, match="segmentation.json: no valid 'labels' mapping"):
        evaluate_folders(pred, root, progress=False)


def test_the_report_names_unscored_classes_and_links_montages_worst_first(tmp_path):
    import re

    from jointreg.metrics.report import write_report

    root, pred = _setup(tmp_path)
    worse = _truth()
    worse[worse == 1] = 0  # case2 misses the organ
    _write(pred / "case2.nii.gz", worse)
    (pred / "segmentation.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "other": 2}}))
    result = evaluate_folders(pred, root, progress=False, montage_slices=3)
    assert set(result.montages) == {"case0", "case1", "case2"}
    report = tmp_path / "report"
    write_report(result.rows, report, info=result.info, montages=result.montages, plots=False)
    text = (report / "summary.md").read_text()
    table = text[text.index("## Cases, worst first"):]
    assert table.index("| case2 |") < table.index("| case0 |") < table.index("| case1 |")  # ties by id
    for page in ("summary.md", "montages.md"):
        links = [link for link in re.findall(r"\]\(([^)]+)\)", (report / page).read_text())]
        assert any(link.startswith("montages/") for link in links)
        assert all((report / link).is_file() for link in links), page
    # Not predicted classes are said in words, not scored.
    pred_other = _liver_only_predictions(tmp_path, root, {"background": 0, "other": 1}, pred_id=1)
    only = evaluate_folders(pred_other, root, progress=False)
    write_report(only.rows, tmp_path / "report2", info=only.info, plots=False)
    assert "**not scored**: organ" in (tmp_path / "report2" / "summary.md").read_text()


def test_echo_loops_are_scored_within_frames(tmp_path):
    # A 2D+t label file as the echo converters write it: axis 2 is time (33 ms per frame).
    from data_tools._common.video import time_series_volume

    gt = np.zeros((24, 24, 3), np.int16)
    gt[4:14, 4:14, :] = 1
    pred = np.zeros_like(gt)
    pred[6:16, 4:14, :] = 1  # 2 voxels off in every frame
    affine = np.diag([0.3, 0.3, 1.0, 1.0])
    reference = time_series_volume(gt.astype(np.float32), affine, 33.0)
    for folder, array in (("gt", gt), ("pred", pred)):
        write_volume(tmp_path / folder / "loop.nii.gz", array, reference=reference, is_label=True)
    row = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels=None, progress=False).rows[0]
    assert row.hd == pytest.approx(0.6)  # 2 voxels × 0.3 mm: no distance across frames
    assert row.dice == pytest.approx(2 * 8 / 20)
