"""Kill -9 `segment` and `pseudolabel` at random points and rerun them: the files of an uninterrupted run.

Two seeded trials per command of ``benchmarks/kill_bulk.py`` (which runs ten or more and prints
the figures). Each kills the real command (and pseudolabel's workers) once a drawn number of its
output files exist, reruns the same command, and compares every file's sha256 with an
uninterrupted run; no ``.tmp-`` entry may be left.
"""

from __future__ import annotations


import pytest



def _benchmark():
    from benchmarks import kill_bulk

    return kill_bulk


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return _benchmark().build_inputs(tmp_path_factory.mktemp("kill_bulk"), cases=2, shape=(32, 32, 8))


@pytest.mark.slow
@pytest.mark.parametrize("job", ["segment", "pseudolabel"])
def test_a_killed_job_reruns_to_the_same_files(job, inputs, tmp_path):
    result = _benchmark().trials(job, inputs, tmp_path, count=2, seed=1)
    for trial in result["details"]:
        assert trial["rerun_exit"] == 0, trial
        assert trial["different_files"] == [], trial
        assert trial["tmp_after_rerun"] == [], trial
    assert result["identical"] == 2
    # segment: 2 labels, 2 probability maps, segmentation.json; pseudolabel: 2 images, labels and
    # provenance files, pseudolabel.json, dataset.json (and the review's pictures)
    if job == "segment":
        assert result["reference_files"] == 5
    else:
        assert result["reference_files"] >= 8
