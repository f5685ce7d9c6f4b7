"""Bulk pseudo-labels: output layout, known answers, resume after a real kill, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jointreg.data.dataset import Dataset
from jointreg.data.nifti import read_label
from jointreg.errors import ConfigError, InputError
from jointreg.inference.propagate import nearest_slice_labels
from jointreg.inference.pseudolabel import PseudolabelSettings, pseudolabel_dataset

REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _copy_nearest(dataset: Dataset, case: str) -> np.ndarray:
    label = read_label(dataset.label_path(case)).array
    stack = np.moveaxis(label, 2, 0)
    ignore = dataset.spec.ignore_label
    annotated = [s for s in range(stack.shape[0]) if (stack[s] != ignore).any()]
    return np.moveaxis(nearest_slice_labels(stack, annotated), 0, 2)


def test_output_is_a_complete_nnunet_dataset(trained_run, tmp_path):
    sparse = Dataset.open(trained_run["sparse"])
    out = tmp_path / "pseudo"
    summary = pseudolabel_dataset(trained_run["run"], sparse.root, out, progress=False)
    assert summary["labelled"] == 3 and summary["skipped"] == 0 and summary["methods"] == {"fusion": 3}
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["labels"] == sparse.spec.class_labels and "ignore" not in spec["labels"]
    assert spec["numTraining"] == 3 and spec["channel_names"] == {"0": "CT"}
    result = Dataset.open(out)
    assert result.cases() == sparse.cases()
    for case in sparse.cases():
        source = read_label(sparse.label_path(case))
        label = read_label(result.label_path(case))
        assert label.shape == source.shape and np.array_equal(label.affine, source.affine)
        assert set(np.unique(label.array)) <= set(range(5))
        known = source.array != sparse.spec.ignore_label
        assert known.any() and np.array_equal(label.array[known], source.array[known])  # annotations verbatim
        assert os.path.samefile(result.image_path(case), sparse.image_path(case))  # hard link
        provenance = json.loads((out / "provenance" / f"{case}.json").read_text())
        assert provenance["mode"] == "fusion" and provenance["num_slices"] == 24
        annotated = provenance["annotated_slices"]
        assert len(annotated) == 1
        slices = provenance["slices"]
        assert slices[annotated[0]] == {"index": annotated[0], "annotation": "complete"}
        other = slices[(annotated[0] + 1) % 24]
        assert other["method"] == "fusion" and other["sources"][0]["slice"] == annotated[0]
        assert 0.0 <= other["registration_weight"] <= other["sources"][0]["weight"]
    manifest = json.loads((out / "pseudolabel.json").read_text())
    assert manifest["settings"] == {"mode": "fusion", "propagation": "direct", "source_slices": 1, "verify": None,
                                    "refine": 0}
    assert manifest["radius"] == 4.0
    # the test split travels (the run predicts every class: links), so training on OUT evaluates as on the source
    assert result.cases("Ts") == sparse.cases("Ts") and len(sparse.cases("Ts")) == 1
    for case in sparse.cases("Ts"):
        assert os.path.samefile(result.image_path(case, "Ts"), sparse.image_path(case, "Ts"))
        assert os.path.samefile(result.label_path(case, "Ts"), sparse.label_path(case, "Ts"))


def test_test_split_is_carried_in_the_runs_classes(identity_run, sparse_phantom_factory, tmp_path):
    from jointreg.data.nifti import write_volume

    sparse = Dataset.open(sparse_phantom_factory(2, n_test=2))
    liver = sparse.spec.class_labels["liver"]
    run = identity_run({"background": 0, "liver": 1}, name="liver_only")
    out = tmp_path / "pseudo"
    settings = PseudolabelSettings(mode="registration", verify=None, refine=0, gate=0)
    pseudolabel_dataset(run, sparse.root, out, settings=settings, progress=False)
    result = Dataset.open(out)
    assert result.spec.class_labels == {"background": 0, "liver": 1}
    for case in sparse.cases("Ts"):
        source = read_label(sparse.label_path(case, "Ts")).array
        carried = read_label(result.label_path(case, "Ts")).array
        assert len(np.unique(source)) > 2  # the phantom's other organs are there, and become background
        assert np.array_equal(carried, (source == liver).astype(carried.dtype))
        assert os.path.samefile(result.image_path(case, "Ts"), sparse.image_path(case, "Ts"))

    # a test label with 'ignore' voxels is refused by name, and no dataset.json claims a finished output
    case = sparse.cases("Ts")[0]
    label = read_label(sparse.label_path(case, "Ts"))
    broken = label.array.copy()
    broken[0, 0, 0] = sparse.spec.ignore_label
    write_volume(sparse.label_path(case, "Ts"), broken, reference=label, is_label=True)
    other = tmp_path / "pseudo_broken"
    with pytest.raises(InputError, match="'ignore' voxels") as error:
        pseudolabel_dataset(run, sparse.root, other, settings=settings, progress=False)
    assert str(sparse.label_path(case, "Ts")) in str(error.value)
    assert not (other / "dataset.json").exists()


@pytest.mark.parametrize("architecture", ["fmirnet", "identity"])
def test_zero_flow_registration_reproduces_copying_the_nearest_slice(architecture, identity_run, sparse_phantom_factory, tmp_path):
    sparse = Dataset.open(sparse_phantom_factory(2))
    run = identity_run(sparse.spec.class_labels, architecture=architecture)
    for propagation in ("direct", "chain"):
        out = tmp_path / propagation
        settings = PseudolabelSettings(mode="registration", propagation=propagation, verify=None, refine=0, gate=0)
        pseudolabel_dataset(run, sparse.root, out, settings=settings, progress=False)
        for case in sparse.cases():
            assert np.array_equal(read_label(out / "labelsTr" / f"{case}.nii.gz").array, _copy_nearest(sparse, case)), propagation


def test_segmentor_mode_equals_segment(identity_run, sparse_phantom_factory, tmp_path):
    from jointreg.inference.segment import segment_inputs

    sparse = Dataset.open(sparse_phantom_factory(2))
    run = identity_run(sparse.spec.class_labels, size=(48, 40))
    out = tmp_path / "pseudo"
    pseudolabel_dataset(run, sparse.root, out, settings=PseudolabelSettings(mode="segmentor", batch_size=1), progress=False)
    segment_inputs(run, [sparse.images_dir()], tmp_path / "seg", batch_size=1, progress=False, device="cpu")
    for case in sparse.cases():
        sparse_label = read_label(sparse.label_path(case)).array
        unknown = sparse_label == sparse.spec.ignore_label
        pseudo = read_label(out / "labelsTr" / f"{case}.nii.gz").array
        predicted = read_label(tmp_path / "seg" / f"{case}.nii.gz").array
        assert np.array_equal(pseudo[unknown], predicted[unknown])
        assert np.array_equal(pseudo[~unknown], sparse_label[~unknown])
        provenance = json.loads((out / "provenance" / f"{case}.json").read_text())
        assert provenance["models"]["registration"] is None and provenance["method"] == "segmentor"


def test_rerun_skips_finished_cases_and_refuses_other_settings(trained_run, tmp_path):
    out = tmp_path / "pseudo"
    settings = PseudolabelSettings(mode="registration")
    pseudolabel_dataset(trained_run["run"], trained_run["sparse"], out, settings=settings, progress=False)
    first = _files(out)
    (out / "provenance" / "liver_ct_001.json").unlink()  # as if killed before the provenance was written
    (out / "labelsTr" / ".tmp-0123456789ab-liver_ct_001.nii.gz").write_bytes(b"partial")
    summary = pseudolabel_dataset(trained_run["run"], trained_run["sparse"], out, settings=settings, progress=False)
    assert summary["labelled"] == 1 and summary["skipped"] == 2
    assert _files(out) == first  # the leftover temporary is gone, the case is redone identically
    with pytest.raises(InputError, match=r"was made with other settings \(differs in: settings; 3 finished case\(s\)\)"):
        pseudolabel_dataset(trained_run["run"], trained_run["sparse"], out, progress=False)
    summary = pseudolabel_dataset(trained_run["run"], trained_run["sparse"], out, progress=False, overwrite=True)
    assert summary["labelled"] == 3
    assert json.loads((out / "pseudolabel.json").read_text())["settings"]["mode"] == "fusion"


def test_cases_without_annotation_use_the_segmentor(trained_run, tmp_path):
    from jointreg.data.nifti import write_volume

    source = Dataset.open(trained_run["sparse"])
    ignore = source.spec.ignore_label
    # a copy of the sparse dataset where case 001 lost its annotation
    copy = tmp_path / "sparse"
    for folder in ("imagesTr", "labelsTr"):
        (copy / folder).mkdir(parents=True)
    (copy / "dataset.json").write_bytes((source.root / "dataset.json").read_bytes())
    for case in source.cases():
        os.link(source.image_path(case), copy / "imagesTr" / source.image_path(case).name)
        label = read_label(source.label_path(case))
        array = np.full(label.shape, ignore, np.int16) if case == "liver_ct_001" else label.array
        write_volume(copy / "labelsTr" / f"{case}.nii.gz", array, reference=label, is_label=True)
    summary = pseudolabel_dataset(trained_run["run"], copy, tmp_path / "out", progress=False)
    assert summary["methods"] == {"fusion": 2, "segmentor (no annotated slice)": 1}
    provenance = json.loads((tmp_path / "out" / "provenance" / "liver_ct_001.json").read_text())
    assert provenance["annotated_slices"] == [] and {s["method"] for s in provenance["slices"]} == {"segmentor"}
    # registration mode needs at least one annotation somewhere
    for case in source.cases():
        label = read_label(copy / "labelsTr" / f"{case}.nii.gz")
        write_volume(copy / "labelsTr" / f"{case}.nii.gz", np.full(label.shape, ignore, np.int16), reference=label, is_label=True)
    with pytest.raises(InputError, match="no annotated voxel in any case: registration has nothing to propagate"):
        pseudolabel_dataset(trained_run["run"], copy, tmp_path / "out2", settings=PseudolabelSettings(mode="registration"), progress=False)
    assert not (tmp_path / "out2").exists()


def test_bad_requests(trained_run, tmp_path):
    run, sparse = trained_run["run"], trained_run["sparse"]
    with pytest.raises(InputError, match="the output folder is the input dataset"):
        pseudolabel_dataset(run, sparse, sparse, progress=False)
    with pytest.raises(InputError, match="must not contain, or lie inside, the input dataset"):
        pseudolabel_dataset(run, sparse, sparse / "pseudo", progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="is not a jointreg pseudolabel output"):
        pseudolabel_dataset(run, sparse, other, progress=False, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="unknown mode 'vote'"):
        PseudolabelSettings(mode="vote")
    with pytest.raises(ConfigError, match="source-slices must be an integer >= 1"):
        PseudolabelSettings(source_slices=0)
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        pseudolabel_dataset(run, sparse, tmp_path / "x", workers=0, progress=False)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_files(identity_run, sparse_phantom_factory, tmp_path):
    """Kill -9 a real `jointreg pseudolabel` (2 workers) once its first case is finished, rerun
    it, and compare every output byte with an uninterrupted run."""
    sparse = Dataset.open(sparse_phantom_factory(8, seed=4))
    run = identity_run(sparse.spec.class_labels, size=(48, 48))
    reference = tmp_path / "reference"
    pseudolabel_dataset(run, sparse.root, reference, workers=2, progress=False)

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "jointreg.cli.main", "pseudolabel", "--run", str(run), "--dataset", str(sparse.root),
               "--out", str(out), "--workers", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "provenance").glob("*.json")) if out.exists() else True:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the CLI and its workers
    process.wait()
    process.stderr.close()
    done = len(list((out / "provenance").glob("*.json")))
    assert 1 <= done < 8, "the run finished before it was killed"

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{8 - done} case(s), {done} already done" in rerun.stdout
    produced, expected = _files(out), _files(reference)
    assert not [name for name in produced if Path(name).name.startswith(".tmp-")]
    assert produced.keys() == expected.keys()
    assert [name for name in expected if produced[name] != expected[name]] == []


@pytest.mark.slow
def test_parallel_workers_give_the_serial_result(identity_run, sparse_phantom_factory, tmp_path):
    sparse = Dataset.open(sparse_phantom_factory(4, seed=6))
    run = identity_run(sparse.spec.class_labels)
    settings = PseudolabelSettings(mode="registration", refine=5)  # refinement in the workers, kept short
    serial = pseudolabel_dataset(run, sparse.root, tmp_path / "serial", settings=settings, workers=1, progress=False)
    parallel = pseudolabel_dataset(run, sparse.root, tmp_path / "parallel", settings=settings, workers=3, progress=False)
    assert serial["methods"] == parallel["methods"] == {"registration": 4}
    assert _files(tmp_path / "serial") == _files(tmp_path / "parallel")


def test_registration_mode_defaults_to_refined_chain_propagation():
    from jointreg.errors import ConfigError
    from jointreg.inference.refine import DEFAULT_STEPS

    registration = PseudolabelSettings(mode="registration")
    assert (registration.propagation, registration.refine, registration.verify, registration.gate) == ("chain", DEFAULT_STEPS, 0.6, 1.0)
    assert registration.result_settings()["gate"] == 1.0
    fusion = PseudolabelSettings(mode="fusion")
    assert (fusion.propagation, fusion.refine, fusion.gate) == ("direct", 0, 0.0) and "gate" not in fusion.result_settings()
    assert PseudolabelSettings(mode="registration", propagation="direct", refine=0).result_settings()["refine"] == 0
    with pytest.raises(ConfigError, match="refine must be an integer >= 0"):
        PseudolabelSettings(mode="registration", refine=-1)


def test_the_appearance_gate_only_removes_propagated_foreground_and_brings_it_closer_to_the_truth(
        identity_run, sparse_phantom_factory, tmp_path):
    from jointreg.metrics.overlap import dice

    sparse = Dataset.open(sparse_phantom_factory(2))
    full = Dataset.open(sparse.root.parent / "full2")
    run = identity_run(sparse.spec.class_labels, architecture="identity")
    plain = PseudolabelSettings(mode="registration", verify=None, refine=0, gate=0)  # copying the annotated slice
    gated = PseudolabelSettings(mode="registration", verify=None, refine=0, gate=1.0)
    pseudolabel_dataset(run, sparse.root, tmp_path / "plain", settings=plain, progress=False)
    pseudolabel_dataset(run, sparse.root, tmp_path / "gated", settings=gated, progress=False)
    assert json.loads((tmp_path / "gated" / "pseudolabel.json").read_text())["settings"]["gate"] == 1.0
    assert "gate" not in json.loads((tmp_path / "plain" / "pseudolabel.json").read_text())["settings"]
    liver = sparse.spec.class_labels["liver"]
    for case in sparse.cases():
        before = read_label(tmp_path / "plain" / "labelsTr" / f"{case}.nii.gz").array
        after = read_label(tmp_path / "gated" / "labelsTr" / f"{case}.nii.gz").array
        truth = read_label(full.label_path(case)).array
        changed = before != after
        assert changed.any() and (after[changed] == 0).all()  # foreground became background, nothing else
        known = read_label(sparse.label_path(case)).array != sparse.spec.ignore_label
        assert not changed[known].any()  # annotated voxels verbatim
        # the copied liver covers tissue where the organ has shrunk or ended; the gate removes it
        assert dice(after == liver, truth == liver) > dice(before == liver, truth == liver) + 0.2  # 0.48 → 0.84, 0.55 → 0.89


def test_the_gate_is_a_percentile():
    with pytest.raises(ConfigError, match="gate"):
        PseudolabelSettings(mode="registration", gate=50)
    with pytest.raises(ConfigError, match="gate"):
        PseudolabelSettings(mode="registration", gate=-1)


def test_the_step_gate_is_a_percentile_of_chain_propagation():
    settings = PseudolabelSettings(mode="registration", step_gate=2.0)
    assert settings.result_settings()["step_gate"] == 2.0
    assert "step_gate" not in PseudolabelSettings(mode="registration").result_settings()  # 0: as before
    for bad in (50.0, -1.0, True):
        with pytest.raises(ConfigError, match="step-gate must be a percentile"):
            PseudolabelSettings(mode="registration", step_gate=bad)
    with pytest.raises(ConfigError, match="needs --propagation chain"):
        PseudolabelSettings(mode="registration", propagation="direct", step_gate=1.0)
    with pytest.raises(ConfigError, match="needs --propagation chain"):
        PseudolabelSettings(mode="segmentor", step_gate=1.0)


def test_the_refinement_smoothness_reaches_the_refinement_and_the_recorded_settings():
    from jointreg.inference.refine import REFINE_SMOOTHNESS, Refinement

    default = PseudolabelSettings(mode="registration")
    assert default.refinement() == Refinement(steps=100, smoothness=REFINE_SMOOTHNESS)
    assert "refine_smoothness" not in default.result_settings()  # the default: as before
    assert "refine_smoothness" not in PseudolabelSettings(mode="registration", refine_smoothness=REFINE_SMOOTHNESS).result_settings()
    heart = PseudolabelSettings(mode="registration", refine_smoothness=0.01)
    assert heart.refinement() == Refinement(steps=100, smoothness=0.01)
    assert heart.result_settings()["refine_smoothness"] == 0.01
    for bad in (-0.1, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="refine-smoothness must be a weight >= 0"):
            PseudolabelSettings(mode="registration", refine_smoothness=bad)
    with pytest.raises(ConfigError, match="needs --refine STEPS > 0"):
        PseudolabelSettings(mode="registration", refine=0, refine_smoothness=0.01)
    with pytest.raises(ConfigError, match="needs --refine STEPS > 0"):
        PseudolabelSettings(mode="fusion", refine_smoothness=0.01)  # fusion refines nothing by default
