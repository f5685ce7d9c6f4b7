"""Sharded bulk jobs: the split, torchrun's shard, the shared-folder rules, and shards of
`pseudolabel` and `segment` that give exactly the files of one unsharded job."""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jointreg.data.dataset import Dataset
from jointreg.errors import ConfigError, InputError
from jointreg.inference.pseudolabel import PseudolabelSettings, merge_pseudolabels, pseudolabel_dataset
from jointreg.inference.segment import merge_segmentations, segment_inputs
from jointreg.inference.shards import (
    Shard,
    claim_json,
    folder_lock,
    parse_shard,
    remove_temporaries_of,
    resolve_shard,
)
from jointreg.utils.atomic import write_json

REPO = Path(__file__).resolve().parents[2]
# sparse_phantom_factory names its cases liver_ct_000 ...; round robin over the sorted names:
CASES = [f"liver_ct_{i:03d}" for i in range(5)]
SHARD_0 = ["liver_ct_000", "liver_ct_002", "liver_ct_004"]
SHARD_1 = ["liver_ct_001", "liver_ct_003"]


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _at_once(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start every ``jointreg`` command line at the same time; wait for all of them. They use
    this process's torch thread count: the references are computed here, and a float reduction
    split over another number of threads can differ in the last bits."""
    import torch

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    processes = [subprocess.Popen([sys.executable, "-m", "jointreg.cli.main", *map(str, c)], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    results = []
    for process, command in zip(processes, commands):
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


# --------------------------------------------------------------------------------------------
# the split and the shard of a process
# --------------------------------------------------------------------------------------------
def test_shards_take_the_sorted_cases_round_robin():
    shuffled = ["liver_ct_003", "liver_ct_000", "liver_ct_004", "liver_ct_001", "liver_ct_002"]
    assert Shard(0, 2).select(shuffled) == SHARD_0 and Shard(1, 2).select(shuffled) == SHARD_1
    assert Shard(2, 3).select(CASES) == ["liver_ct_002"] and Shard(0, 1).select(shuffled) == CASES
    assert Shard(6, 7).select(CASES) == []  # more shards than cases: some have none
    for count in range(1, 8):
        shares = [Shard(i, count).select(shuffled) for i in range(count)]
        assert sorted(c for share in shares for c in share) == CASES  # every case exactly once


@pytest.mark.parametrize("text, message", [
    ("2/2", "--shard 2/2: the index must be in 0..1 (shards are numbered from 0)"),
    ("-1/2", "--shard -1/2: the index must be in 0..1"),
    ("1/0", "--shard 1/0: the shard count must be >= 1"),
    ("x", "--shard must be I/N, two integers with 0 <= I < N (e.g. 0/4), got 'x'"),
    ("1/2/3", "got '1/2/3'"),
    ("3", "got '3'"),
])
def test_a_bad_shard_is_one_line(text, message):
    with pytest.raises(ConfigError) as error:
        parse_shard(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_resolve_shard_reads_rank_and_world_size():
    assert parse_shard("1/3") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    assert resolve_shard(None, {}) is None
    assert resolve_shard(None, {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == Shard(2, 4)
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: every case
    assert resolve_shard("0/2", {"RANK": "1", "WORLD_SIZE": "4"}) == Shard(0, 2)  # --shard wins
    with pytest.raises(ConfigError, match=r"torchrun environment: RANK=4 is not in 0..WORLD_SIZE-1 \(WORLD_SIZE=4\)"):
        resolve_shard(None, {"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="RANK=None and WORLD_SIZE='2' must be integers"):
        resolve_shard(None, {"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="must be integers"):
        resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "two"})


# --------------------------------------------------------------------------------------------
# the shared folder
# --------------------------------------------------------------------------------------------
def test_claim_json_creates_once_with_the_bytes_of_write_json(tmp_path):
    write_json(tmp_path / "reference.json", {"mode": "fusion", "radius": 4.0})
    assert claim_json(tmp_path / "m.json", {"mode": "fusion", "radius": 4.0}) is None
    assert (tmp_path / "m.json").read_bytes() == (tmp_path / "reference.json").read_bytes()
    # a second shard, with other settings, finds the first one's and changes nothing
    assert claim_json(tmp_path / "m.json", {"mode": "segmentor"}) == {"mode": "fusion", "radius": 4.0}
    assert (tmp_path / "m.json").read_bytes() == (tmp_path / "reference.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "reference.json"]


def test_a_shard_removes_only_the_temporaries_of_its_own_files(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz", "a.json"):
        (tmp_path / f".tmp-0123456789ab-{name}").write_bytes(b"partial")
    (tmp_path / "a.nii.gz").write_bytes(b"finished")
    assert remove_temporaries_of(tmp_path, ["a.nii.gz", "a.json"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-0123456789ab-b.nii.gz", "a.nii.gz"]
    assert remove_temporaries_of(tmp_path / "absent", ["a.nii.gz"]) == 0


def test_the_folder_lock_is_exclusive_and_leaves_no_file(tmp_path):
    other = os.open(tmp_path, os.O_RDONLY)
    try:
        with folder_lock(tmp_path) as locked:
            assert locked
            with pytest.raises(BlockingIOError):  # what a second shard would wait for
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(other)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# pseudolabel
# --------------------------------------------------------------------------------------------
SEGMENTOR = PseudolabelSettings(mode="segmentor")


@pytest.fixture
def pseudo(identity_run, sparse_phantom_factory, tmp_path):
    """``{"run", "sparse", "reference"}``: 5 sparse cases, a run, and its unsharded pseudo-labels."""
    sparse = sparse_phantom_factory(5)
    run = identity_run(Dataset.open(sparse).spec.class_labels)
    reference = tmp_path / "reference"
    pseudolabel_dataset(run, sparse, reference, settings=SEGMENTOR, progress=False)
    return {"run": run, "sparse": sparse, "reference": reference}


def _pseudo_shard(pseudo, out, index, count=2, **options):
    options.setdefault("settings", SEGMENTOR)
    return pseudolabel_dataset(pseudo["run"], pseudo["sparse"], out, shard=Shard(index, count), progress=False, **options)


def test_two_pseudolabel_shards_give_the_files_of_one_job(pseudo, tmp_path):
    out = tmp_path / "sharded"
    first = _pseudo_shard(pseudo, out, 0)
    assert (first["shard"], first["labelled"], first["skipped"], first["missing"]) == ("0/2", 3, 0, SHARD_1)
    assert sorted(p.stem for p in (out / "provenance").iterdir()) == SHARD_0
    assert not (out / "dataset.json").exists() and first["review"] is None  # not a dataset yet
    assert (out / "pseudolabel.json").read_bytes() == (pseudo["reference"] / "pseudolabel.json").read_bytes()
    second = _pseudo_shard(pseudo, out, 1)
    assert (second["labelled"], second["missing"], second["review"]) == (2, [], str(out / "montages.md"))
    assert _digests(out) == _digests(pseudo["reference"])  # no file records time or the shard


def test_a_rerun_pseudolabel_shard_skips_its_finished_cases(pseudo, tmp_path):
    out = tmp_path / "sharded"
    _pseudo_shard(pseudo, out, 1)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "labelsTr").iterdir()}
    (out / "labelsTr" / ".tmp-0123456789ab-liver_ct_003.nii.gz").write_bytes(b"killed")  # this shard's leftover
    (out / "labelsTr" / ".tmp-0123456789ab-liver_ct_000.nii.gz").write_bytes(b"busy")  # another shard's, in the making
    again = _pseudo_shard(pseudo, out, 1)
    assert (again["labelled"], again["skipped"], again["missing"]) == (0, 2, SHARD_0)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "labelsTr").iterdir() if not p.name.startswith(".")} == before
    assert sorted(p.name for p in (out / "labelsTr").glob(".tmp-*")) == [".tmp-0123456789ab-liver_ct_000.nii.gz"]
    _pseudo_shard(pseudo, out, 0)
    assert _digests(out) == _digests(pseudo["reference"])


def test_a_pseudolabel_shard_of_other_settings_is_refused_and_deletes_nothing(pseudo, tmp_path):
    out = tmp_path / "sharded"
    _pseudo_shard(pseudo, out, 0)
    before = _digests(out)
    with pytest.raises(InputError, match=r"was made with other settings \(differs in: models, settings; 3 finished "
                                         r"case\(s\)\); a sharded job never deletes cases"):
        _pseudo_shard(pseudo, out, 1, settings=PseudolabelSettings(mode="fusion"))
    with pytest.raises(ConfigError, match="--overwrite cannot be combined with a sharded job"):
        _pseudo_shard(pseudo, out, 1, overwrite=True)
    assert _digests(out) == before
    # Unlike an unsharded rerun, a shard refuses even a folder without finished cases: another
    # shard may be labelling its first case there.
    (empty := tmp_path / "claimed").mkdir()
    shutil.copyfile(out / "pseudolabel.json", empty / "pseudolabel.json")
    with pytest.raises(InputError, match=r"\(differs in: models, settings; 0 finished case\(s\)\)"):
        _pseudo_shard(pseudo, empty, 1, settings=PseudolabelSettings(mode="fusion"))
    assert [p.name for p in empty.iterdir()] == ["pseudolabel.json"]


def test_a_failing_pseudolabel_shard_leaves_the_others_their_folder(pseudo, tmp_path):
    from jointreg.data.nifti import read_label, write_volume

    dataset = tmp_path / "sparse"
    shutil.copytree(pseudo["sparse"], dataset)
    path = dataset / "labelsTr" / "liver_ct_001.nii.gz"  # shard 1's first case
    good = path.read_bytes()
    label = read_label(path)
    write_volume(path, label.array[:-1], affine=label.affine, is_label=True)
    out = tmp_path / "sharded"
    run = pseudo["run"]
    with pytest.raises(InputError, match="does not fit its image"):
        pseudolabel_dataset(run, dataset, out, settings=SEGMENTOR, shard=Shard(1, 2), progress=False)
    assert (out / "pseudolabel.json").is_file()  # an unsharded job would have removed the folder
    assert pseudolabel_dataset(run, dataset, out, settings=SEGMENTOR, shard=Shard(0, 2), progress=False)["labelled"] == 3
    path.write_bytes(good)
    assert pseudolabel_dataset(run, dataset, out, settings=SEGMENTOR, shard=Shard(1, 2), progress=False)["missing"] == []
    reference, produced = _digests(pseudo["reference"]), _digests(out)
    # the same files; pseudolabel.json / dataset.json / provenance name the dataset folder, which differs here
    assert produced.keys() == reference.keys()
    assert [k for k in produced if k.startswith("labelsTr/") and produced[k] != reference[k]] == []


def test_merge_pseudolabels_names_the_missing_cases_then_writes_the_dataset(pseudo, tmp_path):
    out = tmp_path / "sharded"
    with pytest.raises(InputError, match="not found: nothing to merge"):
        merge_pseudolabels(pseudo["run"], pseudo["sparse"], out, settings=SEGMENTOR, progress=False)
    _pseudo_shard(pseudo, out, 1)
    with pytest.raises(InputError, match=r"3 of 5 case\(s\) are not finished \(liver_ct_000, liver_ct_002, "
                                         r"liver_ct_004\); run the shards that hold them"):
        merge_pseudolabels(pseudo["run"], pseudo["sparse"], out, settings=SEGMENTOR, progress=False)
    assert not (out / "dataset.json").exists()
    with pytest.raises(InputError, match=r"was made with other settings \(differs in: models, settings\)"):
        merge_pseudolabels(pseudo["run"], pseudo["sparse"], out, progress=False)
    _pseudo_shard(pseudo, out, 0)
    # As if the two shards had finished at once without seeing each other's last case:
    for name in ("dataset.json", "montages.md"):
        (out / name).unlink()
    shutil.rmtree(out / "montages")
    summary = merge_pseudolabels(pseudo["run"], pseudo["sparse"], out, settings=SEGMENTOR, progress=False)
    assert (summary["cases"], summary["labelled"], summary["missing"]) == (5, 0, [])
    assert _digests(out) == _digests(pseudo["reference"])


@pytest.mark.slow
def test_a_pseudolabel_shard_with_workers_gives_the_same_files(pseudo, tmp_path):
    out = tmp_path / "sharded"
    assert _pseudo_shard(pseudo, out, 0, workers=2)["labelled"] == 3
    assert _pseudo_shard(pseudo, out, 1, workers=2)["missing"] == []
    assert _digests(out) == _digests(pseudo["reference"])


@pytest.mark.slow
def test_pseudolabel_shards_running_at_once_give_the_files_of_one_job(pseudo, tmp_path):
    out = tmp_path / "sharded"
    base = ["pseudolabel", "--run", pseudo["run"], "--dataset", pseudo["sparse"], "--out", out, "--mode", "segmentor",
            "--no-progress", "--device", "cpu"]
    results = _at_once([base + ["--shard", f"{i}/3"] for i in range(3)], tmp_path)
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert sum("all 5 case(s) finished, dataset.json written" in r.stdout for r in results) >= 1
    assert _digests(out) == _digests(pseudo["reference"])


# --------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------
@pytest.fixture
def scans(identity_run, sparse_phantom_factory, tmp_path):
    """``{"model", "images", "reference"}``: 5 images, a segmentor, and its unsharded segmentation."""
    sparse = Dataset.open(sparse_phantom_factory(5))
    run = identity_run(sparse.spec.class_labels, size=(48, 40))
    reference = tmp_path / "reference"
    segment_inputs(run, [sparse.images_dir()], reference, probabilities=True, progress=False, device="cpu")
    return {"model": run, "images": sparse.images_dir(), "reference": reference}


def _segment_shard(scans, out, index, count=2, probabilities=True, **options):
    return segment_inputs(scans["model"], [scans["images"]], out, probabilities=probabilities, shard=Shard(index, count),
                          progress=False, device="cpu", **options)


def test_two_segment_shards_give_the_files_of_one_call(scans, tmp_path):
    out = tmp_path / "sharded"
    first = _segment_shard(scans, out, 1)
    assert (first["shard"], sorted(first["cases"]), first["complete"], first["missing"]) == ("1/2", SHARD_1, False, SHARD_0)
    shared = json.loads((out / "segmentation.json").read_text())
    assert (shared["complete"], shared["planned"], shared["cases"]) == (False, CASES, {})
    assert sorted(json.loads((out / "segmentation.shard-1-of-2.json").read_text())["cases"]) == SHARD_1
    second = _segment_shard(scans, out, 0)
    assert (sorted(second["cases"]), second["complete"], second["missing"], second["total"]) == (SHARD_0, True, [], 5)
    assert _digests(out) == _digests(scans["reference"])  # the records are gone, the manifest is the same


def test_a_rerun_segment_shard_skips_its_finished_cases(scans, tmp_path):
    out = tmp_path / "sharded"
    _segment_shard(scans, out, 0)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    again = _segment_shard(scans, out, 0)
    assert (again["already_done"], again["missing"]) == (SHARD_0, SHARD_1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == before
    _segment_shard(scans, out, 1)
    assert _digests(out) == _digests(scans["reference"])


def test_a_segment_shard_of_another_job_is_refused_and_replaces_nothing(scans, tmp_path):
    out = tmp_path / "sharded"
    _segment_shard(scans, out, 0)
    before = _digests(out)
    with pytest.raises(InputError, match=r"segmentation.json: was made with other settings \(differs in: probabilities\); "
                                         "a sharded job never replaces results"):
        _segment_shard(scans, out, 1, probabilities=False)
    one = scans["images"] / "liver_ct_001_0000.nii.gz"
    with pytest.raises(InputError, match=r"belongs to a job over other inputs \(5 case\(s\); this one has 1\)"):
        segment_inputs(scans["model"], [one], out, probabilities=True, shard=Shard(0, 1), progress=False)
    with pytest.raises(ConfigError, match="--overwrite cannot be combined with a sharded job"):
        _segment_shard(scans, out, 1, overwrite=True)
    assert _digests(out) == before


def test_merge_segmentations_names_the_missing_cases_then_completes_the_manifest(scans, tmp_path):
    out, other = tmp_path / "sharded", tmp_path / "other"
    _segment_shard(scans, out, 0)
    with pytest.raises(InputError, match=r"2 of 5 case\(s\) are not finished \(liver_ct_001, liver_ct_003\)"):
        merge_segmentations(scans["model"], [scans["images"]], out, probabilities=True)
    assert json.loads((out / "segmentation.json").read_text())["complete"] is False
    # Shard 1 ran where shard 0's files were not (yet) visible; its files arrive afterwards.
    _segment_shard(scans, other, 1)
    for path in [*other.glob("*.nii.gz"), *(other / "probabilities").iterdir(), other / "segmentation.shard-1-of-2.json"]:
        target = out / path.relative_to(other)
        shutil.copyfile(path, target)
    with pytest.raises(InputError, match=r"other settings \(differs in: precision\)"):  # float32 shards
        merge_segmentations(scans["model"], [scans["images"]], out, probabilities=True, backend="torch-bfloat16")
    summary = merge_segmentations(scans["model"], [scans["images"]], out, probabilities=True)
    assert (summary["complete"], sorted(summary["cases"]), summary["missing"]) == (True, CASES, [])
    assert _digests(out) == _digests(scans["reference"])


def test_an_unsharded_call_finishes_what_shards_left(scans, tmp_path):
    out = tmp_path / "sharded"
    _segment_shard(scans, out, 1)
    summary = segment_inputs(scans["model"], [scans["images"]], out, probabilities=True, progress=False, device="cpu")
    assert summary["already_done"] == SHARD_1
    assert _digests(out) == _digests(scans["reference"])  # the shard's record is gone


@pytest.mark.slow
def test_segment_shards_running_at_once_give_the_files_of_one_call(scans, tmp_path):
    out = tmp_path / "sharded"
    base = ["segment", "--model", scans["model"], scans["images"], "--out", out, "--probabilities", "--no-progress",
            "--device", "cpu"]
    results = _at_once([base + ["--shard", f"{i}/3"] for i in range(3)], tmp_path)
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert _digests(out) == _digests(scans["reference"])


@pytest.mark.slow
def test_under_torchrun_each_process_takes_its_shard_by_itself(pseudo, tmp_path):
    """``torchrun --nproc-per-node 2 -m jointreg pseudolabel ...`` without --shard: ranks 0 and 1
    take shards 0/2 and 1/2 and together write the files of the unsharded job. (``--run-folder``:
    torchrun's parser reads ``--run`` as an ambiguous abbreviation of its ``--run-path``.)"""
    import torch

    out = tmp_path / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as the reference
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "jointreg", "pseudolabel", "--run-folder", str(pseudo["run"]), "--dataset", str(pseudo["sparse"]),
               "--out", str(out), "--mode", "segmentor", "--no-progress"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shard 0/2" in result.stdout and "shard 1/2" in result.stdout
    assert _digests(out) == _digests(pseudo["reference"])
