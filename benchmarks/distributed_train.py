"""Scale-out benchmark: training steps/s with 1 and 2 processes (torchrun + DDP, gloo), the
per-step communication overhead, and pseudo-label throughput unsharded vs 2 shards; prints JSON.

Protocol. A liver-CT phantom (``--cases`` training + 1 test volumes, 128² × 32, one annotated
slice each) and ``recipes/demo_liver_phantom.yaml`` at ``--size`` (default 64²) with a short
schedule (``--steps`` registration warm-up steps, then as many segmentation warm-up steps, one
round). Each configuration is a complete ``jointreg train`` process; its ``train.log`` (every
step logged, millisecond timestamps) gives seconds per step of each phase, from the warm-ups
(registration steps only, then segmentation steps only), the first 5 steps of each left out:

* ``1p1t``: one process, one thread, the recipe's batch (8): the single-core baseline;
* ``1p2t``: one process, two threads: what one process gets from this machine's 2 cores;
* ``2p1t``: ``torchrun --nproc-per-node 2``, one thread each, 4 + 4 of every batch;
* ``1p1t-half``: one process, one thread, batch 4: one rank's compute without communication.

``overhead_s`` = ``2p1t − 1p1t-half`` per step: what the gradient all-reduce and the
synchronisation add to a rank's step. ``speedup`` = ``1p1t / 2p1t`` (and against ``1p2t``).

Pseudo-labels: ``jointreg pseudolabel`` (fusion mode) with the ``1p2t`` run on the training
volumes, unsharded in one process (one thread), then as ``--shard 0/2`` and ``--shard 1/2`` at
the same time (one thread each); cases per second, and the check that both give the same files.

Run:
  .venv/bin/python benchmarks/distributed_train.py [--size 64] [--steps 60] [--cases 6] [--work DIR]

On a 2-core machine expect little gain: the point is correctness and overhead. On a machine
with more cores or GPUs the same command shows the scaling (each process uses 1 thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = REPO / "recipes" / "demo_liver_phantom.yaml"
STEP = re.compile(r"^(\S+ \S+) INFO step (\d+)/\d+ (registration|segmentation) ", re.M)
CONFIGS = {  # name: (processes, threads per process, batch)
    "1p1t": (1, 1, 8), "1p2t": (1, 2, 8), "2p1t": (2, 1, 8), "1p1t-half": (1, 1, 4),
}


def build_dataset(work: Path, cases: int) -> Path:
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    sparse = work / "phantom_1slice"
    if not (sparse / "dataset.json").is_file():
        full = generate_phantom_dataset(work / "phantom", "liver-ct", n_train=cases, n_test=1, seed=0,
                                        shape=(128, 128, 32), overwrite=True)
        sparsify_dataset(full, sparse, slices_per_volume=1, overwrite=True, progress=False)
    return sparse


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def train_config(name: str, dataset: Path, work: Path, size: int, steps: int) -> dict:
    processes, threads, batch = CONFIGS[name]
    run = work / "runs" / name
    sets = [f"data.dataset={dataset}", f"data.size=[{size}, {size}]", f"threads={threads}", "device=cpu",
            f"registration.batch_size={batch}", f"segmentation.batch_size={batch}",
            f"schedule.registration_warmup={steps}", f"schedule.segmentation_warmup={steps}",
            "schedule.rounds=1", "schedule.registration_steps=2", "schedule.segmentation_steps=2",
            "logging.log_every=1", "logging.image_every=0", "logging.tensorboard=false", f"name={name}"]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*launcher, "-m", "jointreg", "train", str(RECIPE), "--out", str(run), "--overwrite",
               "--no-progress", *[a for s in sets for a in ("--set", s)]]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name}: jointreg train failed:\n{result.stderr[-2000:]}")
    return {"processes": processes, "threads": threads, "batch_per_process": batch // processes,
            **phase_seconds(run / "train.log", steps), "wall_s": round(wall, 1), "run": str(run)}


def phase_seconds(log: Path, warmup: int, skip: int = 5) -> dict:
    """Seconds per step of the registration warm-up (steps ``skip .. warmup-1``) and of the
    segmentation warm-up (``warmup+skip .. 2·warmup-1``), from the log's timestamps."""
    times = {}
    for stamp, step, _ in STEP.findall(log.read_text(encoding="utf-8")):
        times[int(step)] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    out = {}
    for phase, first, last in (("registration", skip, warmup - 1), ("segmentation", warmup + skip, 2 * warmup - 1)):
        out[f"{phase}_s_per_step"] = round((times[last] - times[first]) / (last - first), 4)
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.parent.name != "imagesTr"}


def pseudolabel_throughput(run: Path, dataset: Path, work: Path, cases: int) -> dict:
    base = [sys.executable, "-m", "jointreg", "pseudolabel", "--run", str(run), "--dataset", str(dataset),
            "--no-progress", "--device", "cpu"]
    one = work / "pseudo_unsharded"
    started = time.perf_counter()
    subprocess.run([*base, "--out", str(one), "--overwrite"], cwd=REPO, env=_env(1), check=True, capture_output=True)
    unsharded = time.perf_counter() - started
    two = work / "pseudo_sharded"
    if two.exists():
        import shutil

        shutil.rmtree(two)
    started = time.perf_counter()
    jobs = [subprocess.Popen([*base, "--out", str(two), "--shard", f"{i}/2"], cwd=REPO, env=_env(1),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in (0, 1)]
    codes = [job.wait() for job in jobs]
    sharded = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"pseudolabel shards failed: {[job.stderr.read().decode()[-500:] for job in jobs]}")
    return {"cases": cases, "unsharded_s": round(unsharded, 1), "two_shards_s": round(sharded, 1),
            "unsharded_cases_per_s": round(cases / unsharded, 3), "two_shards_cases_per_s": round(cases / sharded, 3),
            "speedup": round(unsharded / sharded, 2), "same_files": _digest(one) == _digest(two)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="training size (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60, help="steps of each warm-up (default: %(default)s)")
    parser.add_argument("--cases", type=int, default=6, help="phantom training volumes (default: %(default)s)")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="jointreg-distributed-"))
    dataset = build_dataset(work, args.cases)
    trained = {name: train_config(name, dataset, work, args.size, args.steps) for name in CONFIGS}
    ratios = {}
    for phase in ("registration", "segmentation"):
        key = f"{phase}_s_per_step"
        two, half = trained["2p1t"][key], trained["1p1t-half"][key]
        ratios[phase] = {
            "steps_per_s": {name: round(1.0 / t[key], 2) for name, t in trained.items()},
            "speedup_2p_vs_1p1t": round(trained["1p1t"][key] / two, 2),
            "speedup_2p_vs_1p2t": round(trained["1p2t"][key] / two, 2),
            "overhead_s_per_step": round(two - half, 4),
            "overhead_fraction": round((two - half) / two, 3),
        }
    result = {
        "benchmark": "distributed_train", "size": args.size, "global_batch": 8, "steps_per_warmup": args.steps,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "configs": trained, "training": ratios,
        "pseudolabel": pseudolabel_throughput(Path(trained["1p2t"]["run"]), dataset, work, args.cases),
    }
    for config in trained.values():  # the report names runs inside the work folder, not where that was
        config["run"] = "WORK/" + Path(os.path.relpath(config["run"], work)).as_posix()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
