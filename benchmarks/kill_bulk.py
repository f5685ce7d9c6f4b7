"""Kill -9 trials of the bulk jobs `jointreg segment` and `jointreg pseudolabel`; prints JSON.

Each trial starts the real command in a fresh process (its own session, so pseudolabel's workers
die with it), sends SIGKILL at a random point of its progress (seeded: after a random number of
its output files exist, plus a random delay; see :func:`trials`), then reruns the same command
to the end. A trial
passes when the rerun exits 0, every output file has the sha256 of the uninterrupted run's file
(same names, same bytes) and no ``.tmp-`` entry is left anywhere in the output.

The inputs are made here and are tiny: a liver-CT phantom (``--cases`` volumes of ``--shape``,
one annotated slice each after ``jointreg sparsify``) and a run folder with randomly initialised
small networks (FMIRNet and an FCN; nothing is trained: the trials test the files, not the
labels). Every process runs with one thread, so reruns are bit-exact.

Usage:
  .venv/bin/python benchmarks/kill_bulk.py                  # 10 trials per command, seed 0
  .venv/bin/python benchmarks/kill_bulk.py --trials 20 --seed 3 --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TMP_PREFIX = ".tmp-"  # jointreg.utils.atomic.TMP_PREFIX, without importing jointreg in the parent


def build_inputs(root: Path, *, cases: int = 4, shape: tuple[int, int, int] = (40, 40, 12), seed: int = 0) -> dict[str, Path]:
    """A sparse phantom dataset and a run folder with small untrained networks.

    Returns:
        ``{"full", "sparse", "run"}``: the fully labelled phantom, its one-slice-per-volume copy
        (``labelsTr`` with ``ignore``), and the run folder (``export/registration`` and
        ``export/segmentor``, trained at the in-plane size of the data).
    """
    import torch

    from jointreg.data.dataset import Dataset
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset
    from jointreg.export.model_folder import save_model_folder
    from jointreg.export.run_folder import RunPaths
    from jointreg.nets.registration import create_registration_net
    from jointreg.nets.segmentation import create_segmentor

    full = generate_phantom_dataset(root / "full", "liver-ct", n_train=cases, n_test=0, seed=seed, shape=shape)
    sparse = root / "sparse"
    sparsify_dataset(full, sparse, slices_per_volume=1, progress=False)
    labels = dict(Dataset.open(sparse).spec.class_labels)
    torch.manual_seed(seed)
    registration = create_registration_net("fmirnet", spatial_dims=2, features=[4, 8, 8])
    segmentor = create_segmentor("fcn", in_channels=1, classes=len(labels), features=[4, 8, 8, 8, 8], head_channels=8)
    preprocessing = {"axis": None, "size": list(shape[:2]), "normalization": "auto", "ct_window": [-160.0, 240.0],
                     "mr_percentiles": [0.5, 99.5]}
    common = dict(preprocessing=preprocessing, labels=labels, modality="CT")
    run = RunPaths(root / "run")
    save_model_folder(run.model("registration"), registration.eval(), kind="registration", architecture="fmirnet",
                      extra={"pair_radius": 4}, **common)
    save_model_folder(run.model("segmentor"), segmentor.eval(), kind="segmentor", architecture="fcn", **common)
    (run.root / "recipe.yaml").write_text("name: kill_bulk\n", encoding="utf-8")
    return {"full": full, "sparse": sparse, "run": run.root}


def command(job: str, inputs: dict[str, Path], out: Path, *, workers: int = 1) -> list[str]:
    """The command line of one job (``segment`` or ``pseudolabel``)."""
    base = [sys.executable, "-m", "jointreg.cli.main", job]
    if job == "segment":
        return base + ["--model", str(inputs["run"]), str(inputs["sparse"] / "imagesTr"), "--out", str(out),
                       "--probabilities", "--no-progress", "--device", "cpu", "--batch-size", "4"]
    if job == "pseudolabel":
        return base + ["--run", str(inputs["run"]), "--dataset", str(inputs["sparse"]), "--out", str(out),
                       "--workers", str(workers), "--no-progress", "--device", "cpu", "--batch-size", "4"]
    raise ValueError(f"unknown job {job!r}")


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def leftovers(root: Path) -> list[str]:
    """``.tmp-`` entries anywhere under ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"{TMP_PREFIX}*")) if root.exists() else []


def timed_run(argv: list[str], out: Path, timeout: float = 600) -> dict[str, float]:
    """Run to the end; returns when ``out`` appeared and when the process ended (seconds from start)."""
    started = time.monotonic()
    process = subprocess.Popen(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    appeared = None
    while process.poll() is None:
        if appeared is None and out.exists():
            appeared = time.monotonic() - started
        if time.monotonic() - started > timeout:
            process.kill()
            raise RuntimeError(f"{' '.join(argv)} did not finish in {timeout} s")
        time.sleep(0.005)
    error = process.stderr.read().decode()
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}): {error}")
    ended = time.monotonic() - started
    return {"appeared": appeared if appeared is not None else ended, "ended": ended}


def count_files(root: Path) -> int:
    """Files under ``root``, temporaries included (0 while it does not exist)."""
    try:
        return sum(1 for p in root.rglob("*") if p.is_file())
    except OSError:  # an entry renamed or removed while listed
        return 0


def kill_when(argv: list[str], out: Path, *, files: int, delay: float, timeout: float = 600) -> int:
    """Start ``argv``; SIGKILL its whole session ``delay`` s after ``out`` holds ``files`` files
    (``files=0``: ``delay`` s after the start). Returns the process's exit code (-9: killed)."""
    process = subprocess.Popen(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    started = time.monotonic()
    reached = started if files == 0 else None
    while process.poll() is None:
        now = time.monotonic()
        if reached is None and count_files(out) >= files:
            reached = now
        if (reached is not None and now - reached >= delay) or now - started > timeout:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()
    return process.returncode


def trials(job: str, inputs: dict[str, Path], work: Path, *, count: int, seed: int, workers: int = 1) -> dict:
    """``count`` kill-and-rerun trials of ``job`` against one uninterrupted reference run.

    The kill moments are drawn in terms of progress, so that a loaded machine does not move them
    all to the start-up: a number of files ``k`` in ``[0, files of the reference)`` and a delay
    after the output holds ``k`` files (``k = 0``: a delay from the start, up to when the
    reference's output appeared; otherwise up to 50 ms).
    """
    reference = work / f"{job}_reference"
    timing = timed_run(command(job, inputs, reference, workers=workers), reference)
    expected = digests(reference)
    rng = random.Random(f"{job}-{seed}")
    details = []
    for index in range(count):
        out = work / f"{job}_trial{index}"
        files = rng.randrange(len(expected))
        delay = rng.uniform(0.0, timing["appeared"] if files == 0 else 0.05)
        code = kill_when(command(job, inputs, out, workers=workers), out, files=files, delay=delay)
        before = {"files": len(digests(out)) if out.exists() else 0, "tmp": len(leftovers(out))}
        rerun = subprocess.run(command(job, inputs, out, workers=workers), env=environment(), capture_output=True,
                               text=True, timeout=600)
        produced = digests(out) if out.exists() else {}
        different = sorted(name for name in expected.keys() | produced.keys() if produced.get(name) != expected.get(name))
        details.append({
            "kill_after_files": files,
            "delay_s": round(delay, 3),
            "killed": code == -signal.SIGKILL,
            "files_at_kill": before["files"],
            "tmp_at_kill": before["tmp"],
            "rerun_exit": rerun.returncode,
            "rerun_error": rerun.stderr.strip().splitlines()[-1] if rerun.returncode and rerun.stderr.strip() else None,
            "different_files": different,
            "tmp_after_rerun": leftovers(out),
        })
    passed = [d for d in details if d["rerun_exit"] == 0 and not d["different_files"] and not d["tmp_after_rerun"]]
    return {
        "trials": count,
        "identical": len(passed),
        "killed_before_the_end": sum(d["killed"] for d in details),
        "killed_with_partial_output": sum(d["killed"] and 0 < d["files_at_kill"] < len(expected) for d in details),
        "tmp_left_at_kill": sum(d["tmp_at_kill"] > 0 for d in details),
        "reference_files": len(expected),
        "reference_seconds": round(timing["ended"], 2),
        "details": details,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per command (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and the data (default: %(default)s)")
    parser.add_argument("--cases", type=int, default=4, help="phantom volumes (default: %(default)s)")
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 40, 12], metavar=("X", "Y", "Z"))
    parser.add_argument("--workers", type=int, default=1, help="pseudolabel worker processes (default: %(default)s)")
    parser.add_argument("--jobs", nargs="+", default=["segment", "pseudolabel"], choices=["segment", "pseudolabel"])
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jointreg-killbench-") as tmp:
        work = Path(tmp)
        inputs = build_inputs(work / "inputs", cases=args.cases, shape=tuple(args.shape), seed=args.seed)
        results = {job: trials(job, inputs, work, count=args.trials, seed=args.seed, workers=args.workers)
                   for job in args.jobs}
    summary = {
        "settings": {"trials": args.trials, "seed": args.seed, "cases": args.cases, "shape": args.shape,
                     "workers": args.workers, "threads": 1},
        **results,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
