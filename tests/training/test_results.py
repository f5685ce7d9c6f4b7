"""Comparison tables: the rows print exactly the numbers of the summaries given."""

import math

from jointreg.training.results import registration_table, segmentation_table


def _summary(liver_dice, liver_hd95, *, seconds=None, spleen=None, registration=None):
    classes = {
        "background": {"dice": {"mean": 0.99, "std": 0.0}},
        "liver": {"dice": liver_dice, "hd95": liver_hd95, "assd": {"mean": 2.345, "std": None}},
    }
    if spleen is not None:
        classes["spleen"] = spleen
    evaluation = {"segmentation": {"classes": classes}}
    if registration is not None:
        evaluation["registration"] = registration
    summary = {"evaluation": evaluation}
    if seconds is not None:
        summary["train_seconds"] = seconds
    return summary


def test_segmentation_rows_hold_the_given_numbers():
    runs = [
        ("UNet", _summary({"mean": 0.7204, "std": 0.0512}, {"mean": 14.26, "std": 3.04}, seconds=150)),
        ("RUNet", _summary({"mean": 0.81949, "std": 0.02}, {"mean": 9.0, "std": math.nan, "missed": 2}, seconds=None)),
    ]
    assert segmentation_table(runs).splitlines() == [
        "| method | liver Dice | liver HD95 (mm) | liver ASSD (mm) | train time |",
        "|---|---|---|---|---|",
        "| UNet | 0.720 ± 0.051 | 14.3 ± 3.0 | 2.3 | 2.5 min |",
        "| RUNet | 0.819 ± 0.020 | 9.0 (2 missed) | 2.3 | – |",
    ]


def test_classes_metrics_and_missing_entries():
    spleen = {"dice": {"mean": None}}
    runs = [("A", _summary({"mean": 0.5, "std": 0.25}, None, seconds=90, spleen=spleen))]
    table = segmentation_table(runs, classes=["spleen", "liver", "kidney"], metrics=["dice"])
    assert table.splitlines() == [
        "| method | spleen Dice | liver Dice | kidney Dice | train time |",
        "|---|---|---|---|---|",
        "| A | – | 0.500 ± 0.250 | – | 1.5 min |",
    ]
    # the default classes are the first run's, background excluded, in their order
    assert "| method | liver Dice | liver HD95 (mm) | liver ASSD (mm) | spleen Dice" in segmentation_table(runs)


def test_runs_without_evaluation_are_left_out():
    assert segmentation_table([("x", {}), ("y", {"evaluation": {}})]) == "(no segmentation evaluation found)"
    runs = [("none", {"evaluation": {}}), ("one", _summary({"mean": 0.1, "std": 0.0}, None))]
    rows = segmentation_table(runs).splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| one"]


def test_registration_rows_hold_the_given_numbers():
    reg = {"label_dice": 0.81234, "identity_dice": 0.6, "ncc": None, "folding_percent": 0.0125, "pairs": 12}
    runs = [("UNet", _summary({"mean": 0.7, "std": 0.1}, None)),
            ("RUNet", _summary({"mean": 0.8, "std": 0.1}, None, registration=reg))]
    assert registration_table(runs).splitlines() == [
        "| method | label Dice | identity Dice | NCC | folding % | pairs |",
        "|---|---|---|---|---|---|",
        "| RUNet | 0.812 | 0.600 | – | 0.013 | 12 |",
    ]
    assert registration_table(runs[:1]) == ""
