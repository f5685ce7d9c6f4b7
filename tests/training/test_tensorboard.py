"""What a run writes to TensorBoard (read back with tensorboard's EventAccumulator), and that
logging it changes nothing in the weights."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jointreg.training.loop import train
from jointreg.training.validation import isolated_rng


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_isolated_rng_gives_back_every_global_generator():
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    with isolated_rng(torch.device("cpu")):
        torch.rand(100), np.random.rand(100), random.random()  # what a scorer might draw
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


@pytest.mark.slow
def test_tensorboard_has_named_validation_monitor_panels_and_test_metrics(tiny_recipe, sparse_phantom):
    recipe = tiny_recipe("data.validation_count=1", "logging.monitor=training", "logging.panel_slices=2",
                         "schedule.rounds=1", name="tb")
    summary = train(recipe)
    events = _events(Path(summary["run"]))
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    # Per-class tags carry the class name, for the held-out case and the monitored volumes.
    for prefix in ("validation", "monitor"):
        assert {f"{prefix}/dice", f"{prefix}/dice/liver", f"{prefix}/registration/ncc",
                f"{prefix}/registration/folding_percent", f"{prefix}/registration/label_dice"} <= scalars
        assert f"{prefix}/segmentation" in images
    assert not any(tag.endswith("/1") for tag in scalars)
    # The final evaluation on the test split, per class by name, and the registration's.
    liver = summary["evaluation"]["segmentation"]["classes"]["liver"]
    assert {"test/dice/liver", "test/missed/liver", "test/registration/label_dice", "test/registration/ncc"} <= scalars
    for metric in ("dice", "hd", "hd95", "assd"):  # a distance is logged where it is defined (not all missed)
        assert (f"test/{metric}/liver" in scalars) == (liver[metric]["mean"] is not None), metric
    [dice] = events.Scalars("test/dice/liver")
    [missed] = events.Scalars("test/missed/liver")
    assert dice.value == pytest.approx(liver["dice"]["mean"]) and missed.value == liver["missed"]
    assert dice.step == summary["steps"]
    [monitor_dice] = events.Scalars("monitor/dice/liver")  # one round: one validation
    assert monitor_dice.step == summary["steps"] and 0.0 <= monitor_dice.value <= 1.0
    # The segmentation panel: 2 slots, rows "ground truth" and "prediction", RGB.
    [panel] = events.Images("monitor/segmentation")
    assert panel.width > 2 * 128 and panel.height > 2 * 128
    # The monitor never selects weights: the selection follows the held-out case alone.
    assert [h["step"] for h in summary["history"]] == [summary["steps"]]
    assert not any(k.startswith("monitor") for h in summary["history"] for k in h)
    # The README's `jointreg evaluate --pred RUN/predictions --gt DATASET` on this liver-only
    # run: the liver is scored, the phantom's kidneys and spleen are "not predicted", not missed.
    from jointreg.metrics.folders import evaluate_folders

    result = evaluate_folders(Path(summary["run"]) / "predictions", sparse_phantom, progress=False)
    assert {r.class_name for r in result.rows} == {"liver"}
    assert set(result.info["classes_not_predicted"]) == {"kidney_right", "kidney_left", "spleen"}
    [row] = result.rows
    assert row.dice == pytest.approx(liver["dice"]["mean"])  # the run's own evaluation, same rule


@pytest.mark.slow
def test_monitoring_leaves_the_weights_exactly_as_without_it(tiny_recipe):
    from safetensors.torch import load_file

    def tensors(summary, *parts):
        return load_file(str(Path(summary["run"]).joinpath(*parts)))

    common = ("evaluation.enabled=false", "logging.image_every=2")
    plain = train(tiny_recipe(*common, name="plain"))
    watched = train(tiny_recipe(*common, "logging.monitor=training", "logging.monitor_cases=2", name="watched"))
    assert "monitor/segmentation" in _events(Path(watched["run"])).Tags()["images"]  # it did monitor
    # The exported weights, and the resume state (weights, optimiser moments, torch RNG state:
    # the segmentor's dropout draws from it), are identical bit for bit.
    for parts in (("export", "segmentor", "model.safetensors"), ("export", "registration", "model.safetensors"),
                  ("checkpoints", "last", "tensors.safetensors")):
        a, b = tensors(plain, *parts), tensors(watched, *parts)
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a), parts
