import json
import shutil

import numpy as np
import pytest

from jointreg.cli.main import main
from jointreg.data.nifti import read_label, write_volume


def _copy_labels_as_predictions(dataset, out, shift=0):
    """Predictions for every training case: the label, shifted along axis 0."""
    out.mkdir()
    for path in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        label = read_label(path)
        write_volume(out / path.name, np.roll(label.array, shift, axis=0), reference=label, is_label=True)
    return out


def test_evaluate_writes_the_four_outputs(make_dataset, tmp_path, capsys):
    dataset = make_dataset(n_cases=3)
    pred = _copy_labels_as_predictions(dataset, tmp_path / "pred", shift=1)
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(dataset), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert "organ: Dice" in out and "report written to" in out
    for name in ("per_case.csv", "summary.json", "summary.md", "boxplot_dice.png", "boxplot_hd95.png"):
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    assert summary["info"]["ground_truth"].endswith("labelsTr")
    assert set(summary["classes"]) == {"organ", "other"}
    # A one-voxel shift along the 1.5 mm axis: HD is 1.5 mm in every case.
    assert summary["classes"]["organ"]["hd"]["max"] == pytest.approx(1.5)
    assert len((report / "per_case.csv").read_text().splitlines()) == 1 + 3 * 2


def test_missing_prediction_fails_unless_allowed(make_dataset, tmp_path, capsys):
    dataset = make_dataset(n_cases=3)
    pred = _copy_labels_as_predictions(dataset, tmp_path / "pred")
    (pred / "case001.nii.gz").unlink()
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(dataset), "--out", str(report)]) == 2
    err = capsys.readouterr().err
    assert "1 case(s) have no prediction (case001)" in err and "--allow-missing" in err
    assert ",missing," in (report / "per_case.csv").read_text()
    assert main(
        ["evaluate", "--pred", str(pred), "--gt", str(dataset), "--out", str(report), "--overwrite", "--allow-missing"]
    ) == 0


def test_bad_geometry_is_one_line_and_leaves_nothing(make_dataset, tmp_path, capsys):
    dataset = make_dataset(n_cases=2)
    pred = _copy_labels_as_predictions(dataset, tmp_path / "pred")
    label = read_label(pred / "case000.nii.gz")
    write_volume(pred / "case000.nii.gz", label.array[:, :, :-1], affine=label.affine, is_label=True)
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(dataset), "--out", str(report)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "case 'case000'" in err and "shape" in err
    assert not report.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_compare_mode(make_dataset, tmp_path, capsys):
    dataset = make_dataset(n_cases=3)
    exact = _copy_labels_as_predictions(dataset, tmp_path / "exact")
    shifted = _copy_labels_as_predictions(dataset, tmp_path / "shifted", shift=2)
    for name, pred in (("a", exact), ("b", shifted)):
        assert main(["evaluate", "--pred", str(pred), "--gt", str(dataset), "--out", str(tmp_path / name)]) == 0
    out = tmp_path / "cmp"
    code = main(["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--names", "exact", "shifted",
                 "--out", str(out)])
    assert code == 0
    assert "organ: Dice shifted − exact" in capsys.readouterr().out
    comparison = json.loads((out / "comparison.json").read_text())
    d = comparison["classes"]["organ"]["dice"]["differences"]["shifted"]
    assert d["n_pairs"] == 3 and d["worse"] == 3 and d["mean_difference"] < 0
    assert (out / "comparison.md").is_file() and (out / "paired_differences.csv").is_file()


def test_option_errors(make_dataset, tmp_path, capsys):
    dataset = make_dataset(n_cases=1)
    assert main(["evaluate", "--out", str(tmp_path / "r")]) == 2
    assert "give --pred" in capsys.readouterr().err
    assert main(["evaluate", "--compare", "a", "b", "--gt", str(dataset), "--out", str(tmp_path / "r")]) == 2
    assert "do not combine" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(dataset), "--gt", str(dataset), "--out", str(dataset)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_label_copied_from_one_slice(shared_data, tmp_path):
    # A sparsified-then-label-copied prediction: the slice with the largest liver copied to every
    # slice, evaluated against the full CHAOS labels of two subjects.
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for n in (1, 2):
        source = shared_data / "chaos_t2" / f"label_{n}.nii.gz"
        shutil.copyfile(source, gt_dir / f"chaos{n}.nii.gz")
        label = read_label(source)
        liver = (label.array == 1).sum(axis=(0, 1))
        best = label.array[:, :, int(np.argmax(liver))]
        copied = np.repeat(best[:, :, None], label.shape[2], axis=2)
        write_volume(pred_dir / f"chaos{n}.nii.gz", copied, reference=label, is_label=True)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({
        "channel_names": {"0": "T2"}, "numTraining": 2, "file_ending": ".nii.gz",
        "labels": {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4},
    }))
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(report)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["info"]["label_map"] == str(labels)
    liver = summary["classes"]["liver"]
    assert liver["dice"]["n"] == 2 and 0.2 < liver["dice"]["mean"] < 0.9
    assert liver["hd95"]["mean"] > 10.0  # slices 7.7 mm apart: copied contours are far off
    assert set(summary["classes"]) == {"liver", "right_kidney", "left_kidney", "spleen"}
    for name in ("per_case.csv", "summary.md", "boxplot_assd.png"):
        assert (report / name).is_file()
