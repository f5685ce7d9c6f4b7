import json
import math

import pytest

from jointreg.errors import ConfigError, InputError
from jointreg.metrics.compare import compare_reports, paired_wilcoxon, write_comparison
from jointreg.metrics.report import write_report
from jointreg.metrics.segmentation import ClassMetrics

NAN = math.nan


def test_wilcoxon_known_p_value():
    # Six positive differences of distinct size: exact two-sided p = 2 / 2**6.
    p, note = paired_wilcoxon([0.0] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert p == pytest.approx(2 / 64)
    assert note == ""


def test_wilcoxon_degenerate_cases():
    assert paired_wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (1.0, "all differences are zero")
    p, note = paired_wilcoxon([1.0], [2.0])
    assert p is None and "too few pairs" in note
    p, note = paired_wilcoxon([], [])
    assert p is None
    p, note = paired_wilcoxon([0.0, 0.0, 0.0], [1.0, 2.0, 0.0])
    assert p is not None and 0.0 < p <= 1.0 and "2 non-zero" in note


def _report(tmp_path, name, values, missed=()):
    rows = []
    for i, (dice, hd) in enumerate(values):
        case = f"c{i}"
        if case in missed:
            rows.append(ClassMetrics(case, "liver", 1, 0.0, NAN, NAN, NAN, missed=True))
        else:
            rows.append(ClassMetrics(case, "liver", 1, dice, hd, hd * 0.8, hd / 4))
        rows.append(ClassMetrics(case, "spleen", 2, 0.9, 2.0, 1.5, 0.5))
    out = tmp_path / name
    write_report(rows, out, plots=False)
    return out


def test_compare_two_reports(tmp_path):
    base = _report(tmp_path, "unet", [(0.70, 10.0), (0.60, 12.0), (0.80, 8.0), (0.75, 9.0)])
    joint = _report(tmp_path, "runet", [(0.80, 7.0), (0.65, 12.0), (0.70, 9.0), (0.0, 0.0)], missed={"c3"})
    result = compare_reports([base, joint])
    assert [r["name"] for r in result["reports"]] == ["unet", "runet"]
    assert result["baseline"] == "unet"

    dice = result["classes"]["liver"]["dice"]
    assert dice["reports"]["runet"]["missed"] == 1
    d = dice["differences"]["runet"]
    # Dice pairs keep the missed case (Dice 0): differences +0.1, +0.05, -0.1, -0.75.
    assert d["n_pairs"] == 4 and d["unpaired"] == 0
    assert d["mean_difference"] == pytest.approx((0.1 + 0.05 - 0.1 - 0.75) / 4)
    assert (d["better"], d["worse"], d["tied"]) == (2, 2, 0)

    hd = result["classes"]["liver"]["hd"]["differences"]["runet"]
    # Distances: the missed case drops out; -3, 0, +1 mm; lower is better.
    assert hd["n_pairs"] == 3 and hd["unpaired"] == 1
    assert hd["mean_difference"] == pytest.approx(-2 / 3)
    assert (hd["better"], hd["worse"], hd["tied"]) == (1, 1, 1)
    assert hd["p_value"] is not None

    spleen = result["classes"]["spleen"]["dice"]["differences"]["runet"]
    assert spleen["p_value"] == 1.0 and spleen["note"] == "all differences are zero"

    per_case = [p for p in result["paired"] if p["class"] == "liver" and p["metric"] == "hd"]
    assert [(p["case"], p["difference"]) for p in per_case] == [("c0", -3.0), ("c1", 0.0), ("c2", 1.0)]

    out = tmp_path / "cmp"
    write_comparison(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md", "paired_differences.csv"]
    assert json.loads((out / "comparison.json").read_text()) == result
    markdown = (out / "comparison.md").read_text()
    assert "Δ runet − unet" in markdown and "| liver |" in markdown and "c0" in markdown
    csv_lines = (out / "paired_differences.csv").read_text().splitlines()
    assert csv_lines[0] == "comparison,case,class,metric,baseline,other,difference"
    assert "runet - unet,c0,liver,hd,10,7,-3" in csv_lines
    with pytest.raises(InputError, match="already exists"):
        write_comparison(result, out)


def test_three_reports_and_names(tmp_path):
    values = [(0.7, 10.0), (0.6, 12.0), (0.8, 8.0)]
    reports = [_report(tmp_path, n, values) for n in ("a", "b", "c")]
    result = compare_reports(reports, names=["A", "B", "C"])
    assert set(result["classes"]["liver"]["hd95"]["differences"]) == {"B", "C"}


def test_compare_errors(tmp_path):
    one = _report(tmp_path, "one", [(0.7, 10.0)])
    with pytest.raises(ConfigError, match="at least two"):
        compare_reports([one])
    with pytest.raises(ConfigError, match="names"):
        compare_reports([one, one], names=["x"])
    with pytest.raises(InputError, match="per_case.csv"):
        compare_reports([one, tmp_path / "nothing"])
    duplicate = compare_reports([one, one])
    assert [r["name"] for r in duplicate["reports"]] == ["one", "one_2"]
