"""Pseudo-labels from a (briefly) trained registration network beat copying the nearest
annotated slice, as scored by `jointreg evaluate` against the full labels."""

import json
from pathlib import Path

import numpy as np
import pytest

from jointreg.cli.main import main
from jointreg.data.dataset import Dataset
from jointreg.data.nifti import read_label, write_volume
from jointreg.inference.propagate import nearest_slice_labels
from jointreg.inference.pseudolabel import PseudolabelSettings, pseudolabel_dataset


def _train_registration(dataset: Path, out: Path, *, steps: int, size: int) -> Path:
    """A registration-only run (small FMIRNet, one thread: quick and deterministic)."""
    import torch

    from jointreg.training.config import recipe_from_dict
    from jointreg.training.loop import train

    recipe = recipe_from_dict({
        "name": "registration", "output": str(out), "threads": 1,
        "data": {"dataset": str(dataset), "size": [size, size]},
        "registration": {"batch_size": 8, "lr": 2e-3, "arguments": {"features": [8, 16, 16, 32]}},
        "segmentation": {"enabled": False},
        "schedule": {"registration_warmup": steps, "segmentation_warmup": 0, "rounds": 0},
        "logging": {"image_every": 0, "log_every": 0, "progress": False, "tensorboard": False},
        "evaluation": {"enabled": False},
    })
    threads = torch.get_num_threads()
    try:
        return Path(train(recipe, progress=False)["run"])
    finally:
        torch.set_num_threads(threads)


def _copy_nearest(sparse: Dataset, out: Path) -> Path:
    """The baseline: every slice takes the label of the nearest annotated slice."""
    manifest = json.loads((sparse.root / "sparsify.json").read_text())
    for case in sparse.cases():
        label = read_label(sparse.label_path(case))
        axis = manifest["cases"][case]["axis"]
        stack = np.moveaxis(label.array, axis, 0)
        copied = nearest_slice_labels(stack, manifest["cases"][case]["slices"])
        write_volume(out / f"{case}.nii.gz", np.moveaxis(copied, 0, axis), reference=label, is_label=True)
    return out


def _liver_dice(pred: Path, sparse: Path, report: Path) -> float:
    assert main(["evaluate", "--pred", str(pred), "--gt", str(sparse), "--out", str(report)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["info"]["ground_truth"].endswith("labelsTr_full")
    return summary["classes"]["liver"]["dice"]["mean"]


def _compare(sparse_root: Path, tmp_path: Path, *, steps: int, size: int) -> dict[str, float]:
    sparse = Dataset.open(sparse_root)
    run = _train_registration(sparse_root, tmp_path / "runs", steps=steps, size=size)
    scores = {"copy": _liver_dice(_copy_nearest(sparse, tmp_path / "copy"), sparse_root, tmp_path / "report_copy")}
    for propagation in ("direct", "chain"):
        out = tmp_path / f"pseudo_{propagation}"
        settings = PseudolabelSettings(mode="registration", propagation=propagation, verify=None, refine=0, gate=0)  # the network alone
        pseudolabel_dataset(run, sparse_root, out, settings=settings, progress=False)
        scores[propagation] = _liver_dice(out / "labelsTr", sparse_root, tmp_path / f"report_{propagation}")
    return scores


@pytest.mark.slow
def test_phantom_pseudo_labels_beat_copying(tmp_path):
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    full = generate_phantom_dataset(tmp_path / "full", "liver-ct", n_train=6, n_test=0, seed=1)
    sparsify_dataset(full, tmp_path / "sparse", slices_per_volume=1, progress=False)
    scores = _compare(tmp_path / "sparse", tmp_path, steps=150, size=64)
    # measured: copy 0.508, direct 0.546, chain 0.552
    assert scores["direct"] > scores["copy"] + 0.01, scores
    assert scores["chain"] > scores["copy"] + 0.01, scores


@pytest.mark.slow
@pytest.mark.realdata
def test_chaos_t2_pseudo_labels_beat_copying(shared_data, tmp_path):
    from data_tools._common import LabelMap
    from data_tools.paired_nifti import convert_paired_nifti
    from jointreg.data.sparsify import sparsify_dataset

    source = shared_data / "chaos_t2"
    label_map = LabelMap.parse(["1=liver:1", "2=kidney_right:2", "3=kidney_left:3", "4=spleen:4"])
    full = convert_paired_nifti(
        str(source / "image_*.nii.gz"), tmp_path / "full", modality="T2", labels=str(source / "label_*.nii.gz"),
        label_map=label_map, case_prefix="chaos_",
    )
    sparsify_dataset(full, tmp_path / "sparse", slices_per_volume=1, progress=False)
    scores = _compare(tmp_path / "sparse", tmp_path, steps=150, size=96)
    # measured: copy 0.474, direct 0.510, chain 0.496
    assert scores["direct"] > scores["copy"] + 0.01, scores
    assert scores["chain"] > scores["copy"], scores
