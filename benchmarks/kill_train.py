"""Kill -9 trials of `jointreg train`: a run killed at a random point, then resumed, must end
with exactly the weights of an uninterrupted run; prints JSON.

Protocol. A tiny version of ``recipes/demo_liver_phantom.yaml`` (32² slices, FCN + FMIRNet with
few channels, 24 steps: warm-ups of 6 + 6, two rounds of 3 + 3, a checkpoint every 4 steps, one
validation case, evaluation on the test volume) is trained once uninterrupted, as a fresh
``jointreg train`` process, while its ``train.log`` is watched to time start-up, steps and the
final export. Each trial then starts the same command in its own run folder and sends SIGKILL at
a random point (seeded): during start-up (before step 0: imports, data loading, the recipe
being written), just after a random step (inside a step, a checkpoint write, a validation), or
during the export and evaluation after the last step. The trial then does what a user would:
``jointreg train --resume RUN`` when the folder has its ``recipe.yaml``, else the same command
again. It checks that the resumed run finishes, that no ``.tmp-*`` leftovers of interrupted
writes remain, and that every tensor of both exported models (``export/*/model.safetensors``)
equals the uninterrupted run's (``torch.equal``). Threads are 1 everywhere: with more, torch's
reductions may be ordered differently from run to run and no two runs would be identical.

Usage:
  .venv/bin/python benchmarks/kill_train.py                       # 12 trials, seed 0
  .venv/bin/python benchmarks/kill_train.py --trials 3 --seed 1 --work WORK

``tests/reliability/test_train_kill.py`` runs two trials of the same protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = REPO / "recipes" / "demo_liver_phantom.yaml"
OVERRIDES = (
    "threads=1", "device=cpu",
    "data.size=[32, 32]", "data.validation_count=1",
    "registration.batch_size=2", "registration.arguments={features: [4, 8, 8]}",
    "segmentation.architecture=fcn", "segmentation.batch_size=2",
    "segmentation.arguments={features: [4, 8, 8, 8, 8], head_channels: 8, dropout: 0.1}",
    "schedule.registration_warmup=6", "schedule.segmentation_warmup=6", "schedule.rounds=2",
    "schedule.registration_steps=3", "schedule.segmentation_steps=3", "schedule.checkpoint_steps=4",
    "logging.log_every=1", "logging.image_every=4", "logging.progress=false",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
STEP_LINE = re.compile(r" step (\d+)/(\d+) ")
KINDS = ("registration", "segmentor")


def build_dataset(work: Path) -> Path:
    """A sparse liver-CT phantom dataset (4 training + 1 test volumes, one annotated slice each)."""
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    sparse = work / "phantom_1slice"
    if not (sparse / "dataset.json").is_file():
        full = generate_phantom_dataset(work / "phantom", "liver-ct", n_train=4, n_test=1, seed=3,
                                        shape=(64, 64, 32), overwrite=True)
        sparsify_dataset(full, sparse, slices_per_volume=1, overwrite=True, progress=False)
    return sparse


def overrides(dataset: Path, name: str) -> list[str]:
    return [*OVERRIDES, f"data.dataset={dataset}", f"name={name}"]


def train_command(dataset: Path, run_dir: Path, *, resume: bool = False) -> list[str]:
    """The ``jointreg train`` command line of a trial (``--resume RUN`` takes no overrides)."""
    base = [sys.executable, "-m", "jointreg.cli.main", "train"]
    if resume:
        return [*base, "--resume", str(run_dir), "--no-progress"]
    sets = [arg for item in overrides(dataset, run_dir.name) for arg in ("--set", item)]
    return [*base, str(RECIPE), *sets, "--out", str(run_dir), "--no-progress"]


def last_logged_step(run_dir: Path) -> int:
    """The last global step ``train.log`` reports as done (-1 before the first)."""
    try:
        text = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return -1
    steps = [int(m.group(1)) for m in STEP_LINE.finditer(text)]
    return max(steps, default=-1)


def run_and_kill(command: list[str], run_dir: Path, *, after_step: int | None, delay: float,
                 log_file: Path, timeout: float = 600.0) -> dict[str, Any]:
    """Start ``command``; once ``train.log`` shows ``after_step`` done, wait ``delay`` seconds and
    send SIGKILL (unless it has ended by then). ``after_step=None``: a kill in start-up, ``delay``
    seconds after the start or as soon as step 0 is logged, whichever comes first (start-up
    time varies with the machine's load)."""
    started = time.monotonic()
    with log_file.open("ab") as err:
        proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        try:
            while after_step is not None and proc.poll() is None and last_logged_step(run_dir) < after_step:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{command}: step {after_step} not reached in {timeout} s")
                time.sleep(0.005)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                if after_step is None and last_logged_step(run_dir) >= 0:
                    break
                time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"killed": killed, "returncode": code, "seconds": round(time.monotonic() - started, 2),
            "last_logged_step": last_logged_step(run_dir)}


def reference_run(dataset: Path, run_dir: Path, log_file: Path) -> dict[str, Any]:
    """The uninterrupted run, timed from its log: start-up, per step, and the final export."""
    started = time.monotonic()
    with log_file.open("ab") as err:
        proc = subprocess.Popen(train_command(dataset, run_dir), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=err)
        first = last = None
        seen = -1
        while proc.poll() is None:
            step = last_logged_step(run_dir)
            now = time.monotonic() - started
            if step >= 0 and first is None:
                first = now
            if step > seen:
                seen, last = step, now
            time.sleep(0.005)
    end = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed (exit {proc.returncode}); see {log_file}")
    total = seen + 1
    return {"steps": total, "startup_s": first, "step_s": (last - first) / max(1, total - 1),
            "finish_s": end - last, "total_s": end}


def leftovers(run_dir: Path) -> list[str]:
    """``.tmp-*`` entries left by interrupted atomic writes where a run writes them."""
    from jointreg.utils.atomic import TMP_PREFIX

    found = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "export"):
        if folder.is_dir():
            found += [str(p.relative_to(run_dir)) for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    return sorted(found)


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of ``checkpoints/last`` (``None`` without one)."""
    state = run_dir / "checkpoints" / "last" / "state.json"
    if not state.is_file():
        return None
    return json.loads(state.read_text(encoding="utf-8"))["state"]["step"]


def differing_tensors(run_a: Path, run_b: Path) -> list[str]:
    """``kind:key`` of every exported tensor that is not equal between two runs (missing ones too)."""
    import torch
    from safetensors.torch import load_file

    different = []
    for kind in KINDS:
        a = load_file(str(run_a / "export" / kind / "model.safetensors"))
        b_path = run_b / "export" / kind / "model.safetensors"
        b = load_file(str(b_path)) if b_path.is_file() else {}
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b or a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key]):
                different.append(f"{kind}:{key}")
    return different


def where(done: int, dataset: Path) -> str:
    """The part of the run after ``done`` logged steps (start-up, a warm-up, a round, the finish)."""
    from jointreg.training.config import load_recipe
    from jointreg.training.plan import build_plan

    if done == 0:
        return "start-up or step 0"
    step, position = done, 0
    for phase in build_plan(load_recipe(RECIPE, overrides(dataset, "where"))):
        position += phase.steps
        if step < position:
            return f"{phase.network} warm-up" if phase.round < 0 else f"round {phase.round} ({phase.network})"
    return "finish (export, evaluation)"


def kill_trial(dataset: Path, reference: Path, run_dir: Path, *, after_step: int | None, delay: float,
               log_file: Path) -> dict[str, Any]:
    """One trial: start, SIGKILL, resume (or rerun) to the end, compare with ``reference``."""
    kill = run_and_kill(train_command(dataset, run_dir), run_dir, after_step=after_step, delay=delay, log_file=log_file)
    on_disk = {"checkpoint_step": checkpoint_step(run_dir), "leftovers_after_kill": len(leftovers(run_dir))}
    resume = (run_dir / "recipe.yaml").is_file()
    with log_file.open("ab") as err:
        done = subprocess.run(train_command(dataset, run_dir, resume=resume), cwd=REPO, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=err, timeout=600)
    summary = run_dir / "summary.json"
    finished = done.returncode == 0 and summary.is_file() and json.loads(summary.read_text())["status"] == "finished"
    different = differing_tensors(reference, run_dir) if finished else ["(not finished)"]
    return {
        "killed": kill["killed"], "killed_after_s": kill["seconds"], "killed_after_step": kill["last_logged_step"],
        "killed_during": where(kill["last_logged_step"] + 1, dataset) if kill["killed"] else "(had ended)",
        **on_disk, "then": "resume" if resume else "rerun", "resumed_ok": finished,
        "leftovers_after_resume": leftovers(run_dir), "identical": finished and not different,
        "differing_tensors": different[:5],
    }


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, deleted)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kill_train_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dataset = build_dataset(work)
        log_file = work / "stderr.log"
        reference = work / "runs" / "reference"
        if reference.exists():
            raise SystemExit(f"{reference} exists: use an empty --work folder")
        timing = reference_run(dataset, reference, log_file)
        rng = np.random.default_rng(args.seed)
        total = timing["steps"]
        trials = []
        for i in range(args.trials):
            # -1: during start-up; total - 1: after the last step, i.e. during export and evaluation.
            after = int(rng.integers(-1, total))
            if after < 0:
                delay = float(rng.uniform(0.0, timing["startup_s"]))
            else:
                delay = float(rng.uniform(0.0, timing["finish_s"] if after == total - 1 else timing["step_s"]))
            run_dir = work / "runs" / f"trial{i:02d}"
            trial = kill_trial(dataset, reference, run_dir, after_step=None if after < 0 else after,
                               delay=delay, log_file=log_file)
            trials.append({"trial": i, "target_after_step": after, "delay_s": round(delay, 3), **trial})
            print(json.dumps(trials[-1]), file=sys.stderr, flush=True)
    killed = [t for t in trials if t["killed"]]
    result = {
        "recipe": f"{RECIPE.relative_to(REPO)} + {' '.join(OVERRIDES)}",
        "reference": {k: round(v, 2) if isinstance(v, float) else v for k, v in timing.items()},
        "trials": len(trials),
        "killed": len(killed),
        "killed_during": sorted({t["killed_during"] for t in killed}),
        "rerun_without_checkpoint": sum(t["then"] == "rerun" or t["checkpoint_step"] is None for t in killed),
        "resumed_ok": sum(t["resumed_ok"] for t in trials),
        "identical": sum(t["identical"] for t in trials),
        "leftovers_after_kill": sum(t["leftovers_after_kill"] for t in trials),
        "leftovers_after_resume": sum(len(t["leftovers_after_resume"]) for t in trials),
        "per_trial": trials,
    }
    print(json.dumps(result, indent=1))
    return 0 if result["identical"] == result["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
