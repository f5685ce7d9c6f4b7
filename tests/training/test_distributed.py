"""Multi-process training (jointreg.training.distributed): torchrun's environment, shares of a
batch, the collectives, and whole runs under ``torchrun --nproc-per-node 2`` (gloo) against one
process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jointreg.errors import ConfigError
from jointreg.training.distributed import Distributed, check_batch_sizes, from_environment

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


# --- torchrun's environment and the shares of a batch -------------------------------------------

def test_without_torchrun_the_process_is_alone():
    ctx = from_environment({})
    assert (ctx.rank, ctx.world_size, ctx.active, ctx.is_main) == (0, 1, False, True)
    assert ctx.share([3, 1, 2]) == [3, 1, 2]


def test_torchrun_variables_give_rank_and_world_size():
    ctx = from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.active, ctx.is_main) == (3, 4, 1, True, False)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "must be integers"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not in 0..WORLD_SIZE-1"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "not in 0..WORLD_SIZE-1"),
])
def test_a_broken_torchrun_environment_is_one_clear_error(env, message):
    with pytest.raises(ConfigError, match=message):
        from_environment(env)


def test_each_rank_takes_its_contiguous_equal_share():
    batch = list(range(8))
    shares = [Distributed(r, 4).share(batch) for r in range(4)]
    assert shares == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sum(shares, []) == batch  # together: the global batch, once


def test_batch_sizes_must_split_evenly_over_the_processes(tiny_recipe):
    recipe = tiny_recipe("registration.batch_size=4", "segmentation.batch_size=4")
    check_batch_sizes(recipe, Distributed(1, 2))  # 4, 4 and 4 // 2 = 2: fine
    with pytest.raises(ConfigError, match=r"registration.batch_size = 4 does not split over 3 processes"):
        check_batch_sizes(recipe, Distributed(0, 3))
    with pytest.raises(ConfigError, match=r"segmentation.batch_size // 2 .* = 2 does not split over 4"):
        check_batch_sizes(tiny_recipe("registration.batch_size=4", "segmentation.batch_size=4"), Distributed(0, 4))
    check_batch_sizes(tiny_recipe("registration.batch_size=3"), Distributed(0, 1))  # alone: anything


# --- the collectives on two gloo processes -------------------------------------------------------

@pytest.mark.slow
def test_collectives_on_two_processes(tmp_path):
    result = subprocess.run([*TORCHRUN, str(REPO / "tests" / "training" / "_ddp_worker.py"), str(tmp_path)],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, seen in enumerate(ranks):
        assert (seen["rank"], seen["world_size"]) == (r, 2)
        assert seen["finite_when_one_rank_has_nan"] is False  # both ranks stop, not only rank 1
        assert seen["finite_when_all_finite"] is True
        assert seen["mean"] == {"loss": 0.5, "other": 4.0}
        assert seen["broadcast"] == {"from": 0}
        assert seen["share"] == [[0, 1, 2, 3], [4, 5, 6, 7]][r]
        assert seen["buffer_after_check"] == [0.0, 0.0]  # rank 0's running statistics
        assert seen["differing_weights"] == "the net weights differ between rank 0 and rank(s) [1]; stopping"
    assert ranks[0]["draw"] != ranks[1]["draw"]  # each rank its own dropout/sampling stream


# --- whole runs ---------------------------------------------------------------------------------

REGISTRATION_ONLY = ("segmentation.enabled=false", "registration.batch_size=4", "threads=1")


def _recipe_file(tiny_recipe, tmp_path: Path, *overrides: str) -> Path:
    import yaml

    from jointreg.training.run_folder import canonical_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(canonical_recipe(tiny_recipe(*overrides))))
    return path


def _train(args: list[str], *, ranks: int) -> subprocess.CompletedProcess:
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    command = [*launcher, "-m", "jointreg", "train", *args, "--no-progress"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    return result


def _max_difference(run_a: Path, run_b: Path, kind: str = "registration") -> float:
    from safetensors.torch import load_file

    a = load_file(str(run_a / "export" / kind / "model.safetensors"))
    b = load_file(str(run_b / "export" / kind / "model.safetensors"))
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_processes_with_half_batches_follow_one_process(tiny_recipe, tmp_path):
    """FMIRNet (no batch norm) on MSE + SSIM + smoothness, all means over the batch's samples:
    2 ranks × 2 pairs give the weights of 1 process × 4 pairs, to float rounding."""
    recipe = _recipe_file(tiny_recipe, tmp_path, *REGISTRATION_ONLY)
    one, two = tmp_path / "one", tmp_path / "two"
    _train([str(recipe), "--out", str(one)], ranks=1)
    _train([str(recipe), "--out", str(two)], ranks=2)
    assert _max_difference(one, two) < 1e-6
    # not a vacuous equality: half the batch on one process trains other weights
    half = tmp_path / "half"
    _train([str(recipe), "--out", str(half), "--set", "registration.batch_size=2"], ranks=1)
    assert _max_difference(one, half) > 1e-4


@pytest.mark.slow
def test_joint_run_on_two_processes(tiny_recipe, tmp_path):
    """Both networks in DDP (FCN with batch norm and dropout, augmentation): the ranks agree on
    the weights after every round, rank 0 alone writes, and the run is exported and evaluated."""
    recipe = _recipe_file(tiny_recipe, tmp_path, "segmentation.batch_size=4", "threads=1")
    two, one = tmp_path / "two", tmp_path / "one"
    result = _train([str(recipe), "--out", str(two)], ranks=2)
    assert json.loads(result.stdout)["status"] == "finished"  # printed once, by rank 0
    from jointreg.training.config import load_recipe
    from jointreg.training.plan import build_plan, round_ends

    log = (two / "train.log").read_text()
    rounds = len(round_ends(build_plan(load_recipe(recipe))))  # the warm-ups' ends and the 2 rounds'
    assert log.count("the 2 ranks hold identical weights") == rounds == 3
    total = json.loads((two / "summary.json").read_text())["steps"]
    assert log.count(f"/{total} registration") + log.count(f"/{total} segmentation") == total  # one writer
    assert "dice" in json.dumps(json.loads((two / "summary.json").read_text())["evaluation"])
    _train([str(recipe), "--out", str(one)], ranks=1)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker with ``RANK=rank`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _checkpoint_step(run: Path) -> int | None:
    state = run / "checkpoints" / "last" / "state.json"
    try:
        return json.loads(state.read_text())["state"]["step"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
def test_a_killed_rank_resumes_with_another_world_size(tiny_recipe, tmp_path):
    """kill -9 of rank 1 after the first checkpoint; the 2-process job dies; ``--resume`` in one
    process finishes, with the weights of an uninterrupted single-process run. And the other way
    round: a single-process checkpoint resumed by 2 processes."""
    longer = (*REGISTRATION_ONLY, "schedule.registration_warmup=4", "schedule.rounds=12",
              "schedule.checkpoint_steps=4", "schedule.segmentation_warmup=0")
    recipe = _recipe_file(tiny_recipe, tmp_path, *longer)
    reference, killed, grown = tmp_path / "reference", tmp_path / "killed", tmp_path / "grown"
    _train([str(recipe), "--out", str(reference)], ranks=1)

    command = [*TORCHRUN, "-m", "jointreg", "train", str(recipe), "--out", str(killed), "--no-progress"]
    job = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while job.poll() is None and (_checkpoint_step(killed) or 0) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = _rank_pid(job.pid, 1)
        assert pid is not None and job.poll() is None, "the job ended before the kill"
        os.kill(pid, signal.SIGKILL)
        assert job.wait(timeout=120) != 0  # torchrun stops rank 0 too
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    step = _checkpoint_step(killed)
    total = json.loads((reference / "summary.json").read_text())["steps"]
    assert step is not None and 4 <= step < total
    _train(["--resume", str(killed)], ranks=1)
    assert f"resumed {killed} at step {step} of {total}" in (killed / "train.log").read_text()
    assert _max_difference(reference, killed) < 1e-6

    _train([str(recipe), "--out", str(grown), "--stop-after", "6"], ranks=1)
    _train(["--resume", str(grown)], ranks=2)
    assert _max_difference(reference, grown) < 1e-6
