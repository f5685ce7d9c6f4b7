"""kill -9 of `jointreg train` inside each warm-up, then `--resume`: the weights of an
uninterrupted run, tensor by tensor (the protocol of benchmarks/kill_train.py, two trials)."""

from __future__ import annotations


import numpy as np
import pytest



def _benchmark():
    from benchmarks import kill_train

    return kill_train


@pytest.mark.slow
def test_train_killed_in_a_warmup_resumes_to_the_uninterrupted_weights(tmp_path, capsys):
    from jointreg.cli.main import main
    from jointreg.training.config import load_recipe
    from jointreg.training.loop import train

    bench = _benchmark()
    dataset = bench.build_dataset(tmp_path)
    reference = tmp_path / "runs" / "reference"
    # In this process (one thread, as the killed processes): the same weights as a fresh process.
    train(load_recipe(bench.RECIPE, bench.overrides(dataset, "reference")), run_dir=reference)
    rng = np.random.default_rng(14)
    # Registration warm-up: steps 0-5 (checkpoint at 4 and 6); segmentation warm-up: 6-11 (at 8 and 12).
    for trial, steps in enumerate(((0, 5), (6, 11))):
        after = int(rng.integers(*steps))
        run = tmp_path / "runs" / f"trial{trial}"
        kill = bench.run_and_kill(bench.train_command(dataset, run), run, after_step=after,
                                  delay=float(rng.uniform(0.0, 0.2)), log_file=tmp_path / "stderr.log")
        assert kill["killed"] and kill["last_logged_step"] >= after, kill
        assert bench.checkpoint_step(run) is not None or kill["last_logged_step"] < 4  # nothing lost past step 4
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
        assert bench.leftovers(run) == []
        assert bench.differing_tensors(reference, run) == [], (trial, kill)
