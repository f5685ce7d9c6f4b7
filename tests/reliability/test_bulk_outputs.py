"""`segment` and `pseudolabel` after a failure: nothing half-made, and the corrected command runs.

A failure before any case is finished leaves no output folder (an existing one is left as it
was); a failure later leaves only finished cases, listed as such (``segmentation.json`` with
``"complete": false``; a pseudo-label folder without ``dataset.json``), and the same command,
once its input is corrected, finishes the job with exactly the files of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from jointreg.cli.main import main





from benchmarks import kill_bulk  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A sparse phantom (2 volumes of 32 × 32 × 8) and a run with small untrained networks."""
    return kill_bulk.build_inputs(tmp_path_factory.mktemp("bulk"), cases=2, shape=(32, 32, 8))


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------
def _scans(inputs, folder: Path, *, broken: str | None) -> Path:
    """The phantom's images as ``a.nii.gz``, ``b.nii.gz``; ``broken`` is replaced by garbage."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in zip(("a", "b"), sorted((inputs["sparse"] / "imagesTr").iterdir())):
        target = folder / f"{name}.nii.gz"
        if name == broken:
            target.write_bytes(b"not a NIfTI file")
        else:
            shutil.copyfile(source, target)
    return folder


def _segment(inputs, scans: Path, out: Path, *extra: str) -> int:
    return main(["segment", "--model", str(inputs["run"]), str(scans), "--out", str(out), "--no-progress",
                 "--device", "cpu", *extra])


def test_segment_failing_on_its_first_input_leaves_nothing(inputs, tmp_path, capsys):
    scans = _scans(inputs, tmp_path / "scans", broken="a")
    out = tmp_path / "pred"
    assert _segment(inputs, scans, out) == 2
    assert _one_error_line(capsys).startswith(f"jointreg segment: error: {scans / 'a.nii.gz'}: ")
    assert not out.exists()
    kept = tmp_path / "kept"  # an existing (empty) folder stays as it was
    kept.mkdir()
    assert _segment(inputs, scans, kept) == 2
    assert list(kept.iterdir()) == []
    _scans(inputs, scans, broken=None)  # corrected: the same command now succeeds
    capsys.readouterr()
    assert _segment(inputs, scans, out) == 0 and _segment(inputs, scans, kept) == 0
    assert _digests(out) == _digests(kept)


def test_segment_failing_midway_lists_only_finished_cases_and_resumes(inputs, tmp_path, capsys):
    reference = tmp_path / "reference"
    scans = _scans(inputs, tmp_path / "scans", broken=None)
    assert _segment(inputs, scans, reference, "--probabilities") == 0
    _scans(inputs, scans, broken="b")
    out = tmp_path / "pred"
    assert _segment(inputs, scans, out, "--probabilities") == 2
    manifest = json.loads((out / "segmentation.json").read_text())
    assert manifest["complete"] is False and manifest["planned"] == ["a", "b"] and list(manifest["cases"]) == ["a"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")) == ["a.nii.gz", "probabilities/a.nii.gz"]
    finished = (out / "a.nii.gz").stat().st_mtime_ns
    _scans(inputs, scans, broken=None)
    capsys.readouterr()
    assert _segment(inputs, scans, out, "--probabilities") == 0
    assert "segmented 1 volume(s), 1 already done, into" in capsys.readouterr().out
    assert (out / "a.nii.gz").stat().st_mtime_ns == finished  # kept, not redone
    assert _digests(out) == _digests(reference)
    assert json.loads((out / "segmentation.json").read_text())["complete"] is True


def test_segment_keeps_finished_results_of_other_settings_unless_overwrite(inputs, tmp_path, capsys):
    scans = _scans(inputs, tmp_path / "scans", broken="b")
    out = tmp_path / "pred"
    assert _segment(inputs, scans, out) == 2
    _scans(inputs, scans, broken=None)
    capsys.readouterr()
    # Probabilities change what a case's outputs are: "a" is a finished result of other settings.
    assert _segment(inputs, scans, out, "--probabilities") == 2
    assert "a.nii.gz: already exists (1 output file(s) would be replaced; pass --overwrite)" in _one_error_line(capsys)
    assert _segment(inputs, scans, out, "--probabilities", "--overwrite") == 0
    assert json.loads((out / "segmentation.json").read_text())["probabilities"] is not None


def test_segment_redoes_a_case_whose_input_changed_in_an_unfinished_job(inputs, tmp_path, capsys):
    scans = _scans(inputs, tmp_path / "scans", broken="b")
    out = tmp_path / "pred"
    assert _segment(inputs, scans, out) == 2
    # "a" is replaced by another volume (b's image) and "b" repaired: the same command redoes "a".
    shutil.copyfile(sorted((inputs["sparse"] / "imagesTr").iterdir())[1], scans / "a.nii.gz")
    shutil.copyfile(scans / "a.nii.gz", scans / "b.nii.gz")
    capsys.readouterr()
    assert _segment(inputs, scans, out) == 0
    assert "segmented 2 volume(s) into" in capsys.readouterr().out
    assert (out / "a.nii.gz").read_bytes() == (out / "b.nii.gz").read_bytes()


# --------------------------------------------------------------------------------------------
# pseudolabel
# --------------------------------------------------------------------------------------------
def _dataset(inputs, folder: Path, *, broken: str | None) -> Path:
    """A copy of the sparse phantom whose case ``broken`` has a label of the wrong shape."""
    from jointreg.data.nifti import read_label, write_volume

    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(inputs["sparse"], folder)
    if broken is not None:
        label = read_label(folder / "labelsTr" / f"{broken}.nii.gz")
        write_volume(folder / "labelsTr" / f"{broken}.nii.gz", label.array[:-1], affine=label.affine, is_label=True)
    return folder


def _pseudolabel(inputs, dataset: Path, out: Path, *extra: str) -> int:
    return main(["pseudolabel", "--run", str(inputs["run"]), "--dataset", str(dataset), "--out", str(out),
                 "--no-progress", "--device", "cpu", *extra])


def test_pseudolabel_failing_on_its_first_case_leaves_nothing(inputs, tmp_path, capsys):
    dataset = _dataset(inputs, tmp_path / "sparse", broken="liver_ct_000")
    out = tmp_path / "pseudo"
    assert _pseudolabel(inputs, dataset, out, "--mode", "registration") == 2
    assert "liver_ct_000.nii.gz: does not fit its image" in _one_error_line(capsys)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert _pseudolabel(inputs, dataset, kept, "--mode", "registration") == 2
    assert list(kept.iterdir()) == []
    # Corrected data and other settings: nothing of the failed job blocks either.
    _dataset(inputs, dataset, broken=None)
    capsys.readouterr()
    assert _pseudolabel(inputs, dataset, out) == 0 and _pseudolabel(inputs, dataset, kept) == 0
    assert _digests(out) == _digests(kept)


def test_pseudolabel_failing_midway_is_no_dataset_until_resumed(inputs, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert _pseudolabel(inputs, _dataset(inputs, tmp_path / "sparse", broken=None), reference) == 0
    dataset = _dataset(inputs, tmp_path / "sparse", broken="liver_ct_001")
    out = tmp_path / "pseudo"
    assert _pseudolabel(inputs, dataset, out) == 2
    # One finished case, and no dataset.json claiming two.
    assert sorted(p.name for p in (out / "provenance").iterdir()) == ["liver_ct_000.json"]
    assert not (out / "dataset.json").exists() and (out / "pseudolabel.json").is_file()
    capsys.readouterr()
    assert _pseudolabel(inputs, dataset, out, "--mode", "segmentor") == 2  # would discard the finished case
    message = _one_error_line(capsys)
    assert "was made with other settings (differs in: models, settings; 1 finished case(s))" in message
    assert "pass --overwrite to start over" in message
    _dataset(inputs, dataset, broken=None)
    assert _pseudolabel(inputs, dataset, out) == 0
    assert "pseudo-labelled 1 case(s), 1 already done" in capsys.readouterr().out
    assert _digests(out) == _digests(reference)
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2


def test_pseudolabel_leftovers_of_an_interrupted_start_do_not_block(inputs, tmp_path):
    """As if killed at the start: only a temporary, or only the settings file, in the folder."""
    dataset = _dataset(inputs, tmp_path / "sparse", broken=None)
    out = tmp_path / "pseudo"
    out.mkdir()
    (out / ".tmp-0123456789ab-pseudolabel.json").write_text("{")
    assert _pseudolabel(inputs, dataset, out, "--mode", "segmentor") == 0
    assert not list(out.rglob(".tmp-*"))
    for path in [p for p in out.iterdir() if p.name != "pseudolabel.json"]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert _pseudolabel(inputs, dataset, out) == 0  # other settings, no finished case: starts over
    assert json.loads((out / "pseudolabel.json").read_text())["settings"]["mode"] == "fusion"
    assert len(list((out / "labelsTr").iterdir())) == 2


@pytest.mark.slow
def test_pseudolabel_workers_that_cannot_load_the_networks_fail_in_one_line(inputs, tmp_path, capsys):
    """A pool restarts a worker whose initializer raises, forever: the error must reach the parent."""
    run = tmp_path / "run"
    shutil.copytree(inputs["run"], run)
    config_path = run / "export" / "segmentor" / "config.json"
    config = json.loads(config_path.read_text())
    config["arguments"]["features"] = [4, 8]  # read fine by the parent, refused when the network is built
    config_path.write_text(json.dumps(config))
    out = tmp_path / "pseudo"
    assert main(["pseudolabel", "--run", str(run), "--dataset", str(inputs["sparse"]), "--out", str(out),
                 "--workers", "2", "--no-progress", "--device", "cpu"]) == 2
    assert _one_error_line(capsys).startswith(f"jointreg pseudolabel: error: {config_path}: ")
    assert not out.exists()
