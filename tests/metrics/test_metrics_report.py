import json
import math

import pytest

from jointreg.errors import InputError
from jointreg.metrics.report import read_per_case, rows_to_csv, summarize, summary_markdown, write_report
from jointreg.metrics.segmentation import METRICS, ClassMetrics

NAN = math.nan


def _rows():
    return [
        ClassMetrics("c1", "liver", 1, 0.9, 4.0, 3.0, 1.0, gt_voxels=100, pred_voxels=90),
        ClassMetrics("c2", "liver", 1, 0.7, 8.0, 5.0, 2.0, gt_voxels=100, pred_voxels=120),
        ClassMetrics("c3", "liver", 1, 0.0, NAN, NAN, NAN, missed=True, gt_voxels=50, pred_voxels=0),
        ClassMetrics.missing("c4", "liver", 1),
        ClassMetrics("c1", "spleen", 2, 1.0, 0.0, 0.0, 0.0),
        ClassMetrics("c2", "spleen", 2, 0.5, 2.0, 2.0, 1.5, gt_voxels=8, pred_voxels=8),
        ClassMetrics("c3", "spleen", 2, 0.8, 1.0, 1.0, 0.5, gt_voxels=8, pred_voxels=12),
        ClassMetrics.missing("c4", "spleen", 2),
    ]


def test_summary_counts_missed_and_keeps_dice_zero():
    summary = summarize(_rows())
    assert summary["num_cases"] == 4
    assert summary["missing_cases"] == ["c4"]
    liver = summary["classes"]["liver"]
    assert (liver["id"], liver["cases"], liver["missed"], liver["missing"]) == (1, 4, 1, 1)
    # Dice of the missed case (0) counts; the missing case does not.
    assert liver["dice"]["n"] == 3
    assert liver["dice"]["mean"] == pytest.approx((0.9 + 0.7 + 0.0) / 3)
    assert liver["dice"]["median"] == pytest.approx(0.7)
    # Distances of the missed case are absent, and the missed count sits next to them.
    assert liver["hd95"]["n"] == 2
    assert liver["hd95"]["mean"] == pytest.approx(4.0)
    assert liver["hd95"]["std"] == pytest.approx(1.0)  # population std of (3, 5)
    assert (liver["hd95"]["missed"], liver["hd95"]["missing"]) == (1, 1)
    assert (liver["hd"]["min"], liver["hd"]["max"]) == (4.0, 8.0)
    spleen = summary["classes"]["spleen"]
    assert spleen["missed"] == 0 and spleen["assd"]["n"] == 3


def test_a_class_missed_everywhere_has_no_distance_statistics():
    rows = [ClassMetrics(f"c{i}", "tumour", 3, 0.0, NAN, NAN, NAN, missed=True) for i in range(3)]
    entry = summarize(rows)["classes"]["tumour"]
    assert entry["dice"]["mean"] == 0.0 and entry["dice"]["n"] == 3
    assert entry["hd"]["n"] == 0 and entry["hd"]["mean"] is None
    assert entry["missed"] == 3
    text = summary_markdown(summarize(rows))
    assert "| tumour | 0.000 ± 0.000 | – | – | – | 3 | 0 |" in text


def test_write_report_outputs_and_round_trip(tmp_path):
    out = tmp_path / "report"
    summary = write_report(_rows(), out, info={"predictions": "preds/"})
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["per_case.csv", "summary.json", "summary.md"] + [f"boxplot_{m}.png" for m in METRICS]
    )
    for metric in METRICS:
        assert (out / f"boxplot_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    header = (out / "per_case.csv").read_text().splitlines()[0]
    assert header.startswith("case,class,dice,hd,hd95,assd,missed,status")
    back = read_per_case(out)
    assert len(back) == len(_rows())
    for a, b in zip(back, _rows()):
        assert (a.case, a.class_name, a.class_id, a.missed, a.status) == (b.case, b.class_name, b.class_id, b.missed, b.status)
        for metric in METRICS:
            va, vb = a.value(metric), b.value(metric)
            assert (math.isnan(va) and math.isnan(vb)) or va == pytest.approx(vb)

    document = json.loads((out / "summary.json").read_text())
    assert document["format"] == "jointreg-evaluation/1"
    assert document["info"] == {"predictions": "preds/"}
    assert document["classes"]["liver"]["hd95"]["missed"] == 1
    assert document == summary
    markdown = (out / "summary.md").read_text()
    assert "missed" in markdown and "± " in markdown and "- predictions: preds/" in markdown
    assert "c4" in markdown  # the case without prediction is named


def test_existing_report_is_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "report"
    write_report(_rows()[:2], out, plots=False)
    with pytest.raises(InputError, match="already exists"):
        write_report(_rows(), out)
    write_report(_rows(), out, overwrite=True, plots=False)
    assert len(read_per_case(out)) == len(_rows())


def test_csv_writes_nan_and_booleans_explicitly():
    text = rows_to_csv(_rows()[2:4])
    assert text.splitlines()[1] == "c3,liver,0,nan,nan,nan,true,ok,1,50,0"
    assert text.splitlines()[2] == "c4,liver,nan,nan,nan,nan,false,missing,1,0,0"


def test_read_per_case_rejects_non_reports(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_per_case(tmp_path)
    (tmp_path / "per_case.csv").write_text("case,class\nc1,liver\n")
    with pytest.raises(InputError, match="missing column"):
        read_per_case(tmp_path)
    (tmp_path / "per_case.csv").write_text(
        "case,class,dice,hd,hd95,assd,missed,status\nc1,liver,abc,1,1,1,false,ok\n"
    )
    with pytest.raises(InputError, match="line 2"):
        read_per_case(tmp_path)
