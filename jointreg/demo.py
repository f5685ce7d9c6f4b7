"""``jointreg demo``: the whole pipeline on a synthetic liver-CT phantom, on a CPU, in minutes.

1. Generate a liver-CT phantom dataset (training + test volumes with exact labels).
2. Sparsify it: one annotated slice per training volume, the rest ``ignore``.
3. Validate it.
4. Train UNet alone on the annotated slices (the lower bound).
5. Train IUNet: the same labelling rules as RUNet with the identity instead of a registration
   (the baseline that shows what registration itself adds).
6. Train RUNet: UNet + FMIRNet, jointly (registration propagates the few labels).
7. Evaluate them on the held-out test volumes (full labels, millimetres) and print the table.

Everything goes into one folder, named at the end. The recipe is
``recipes/demo_liver_phantom.yaml`` (shipped as ``jointreg.recipes``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from jointreg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DEMO_RECIPE = "demo_liver_phantom.yaml"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo (the defaults run in a few minutes on 2 CPU cores).

    Attributes:
        train_cases, test_cases: phantom volumes.
        seed: phantom and training seed.
        quick: a tiny version (seconds) for tests: few steps, small volumes.
    """

    train_cases: int = 10
    test_cases: int = 4
    seed: int = 0
    quick: bool = False

    def __post_init__(self):
        # Checked when the settings are made, before run_demo creates its folder.
        for option, value, low in (("--train-cases", self.train_cases, 1), ("--test-cases", self.test_cases, 0),
                                   ("--seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"demo: {option} must be an integer >= {low}, got {value!r}")


def demo_recipe_path() -> Path:
    return Path(str(resources.files("jointreg.recipes").joinpath(DEMO_RECIPE)))


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also ``out/demo_summary.json``)."""
    import shutil

    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset
    from jointreg.data.validate import validate_dataset
    from jointreg.training.config import load_recipe
    from jointreg.training.loop import train
    from jointreg.training.results import postprocessing_note, registration_table, segmentation_table
    from jointreg.utils.atomic import write_json, write_text

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "demo folder already exists; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    overrides = [f"seed={settings.seed}"]
    shape = None
    if settings.quick:
        shape = (64, 64, 24)
        overrides += [
            "data.size=[48, 48]", "schedule.registration_warmup=6", "schedule.segmentation_warmup=6",
            "schedule.rounds=1", "schedule.registration_steps=3", "schedule.segmentation_steps=3",
            "registration.batch_size=2", "segmentation.batch_size=2", "logging.image_every=0",
            "segmentation.arguments.encoder_depth=3", "segmentation.arguments.decoder_channels=[16, 8, 8]",
        ]
    _say(progress, f"1/6 generating liver-CT phantoms ({settings.train_cases} training, {settings.test_cases} test)")
    full = generate_phantom_dataset(
        out / "data" / "phantom_full", "liver-ct", n_train=settings.train_cases, n_test=settings.test_cases,
        seed=settings.seed, shape=shape,
    )
    _say(progress, "2/6 sparsifying: one annotated slice per training volume")
    sparse = out / "data" / "phantom_1slice"
    sparsify_dataset(full, sparse, slices_per_volume=1, strategy="largest", classes=["liver"], seed=settings.seed, progress=False)
    report = validate_dataset(sparse)
    if not report.ok:
        raise InputError(sparse, f"demo dataset failed validation: {report.problems[0]}")
    recipe_path = demo_recipe_path()
    runet = load_recipe(recipe_path, overrides + [f"data.dataset={sparse}", "output=" + str(out / "runs")])
    unet = runet.replace(name="unet_alone", registration=runet.registration.__class__(enabled=False))
    iunet = runet.replace(name="iunet_identity", registration=replace(runet.registration, architecture="identity", arguments={}))
    methods = (("UNet (1 slice/volume)", unet), ("IUNet (UNet + identity)", iunet), ("RUNet (UNet + FMIRNet)", runet))
    runs = []
    for step, (title, recipe) in enumerate(methods, start=3):
        _say(progress, f"{step}/6 training {title}")
        summary = train(recipe, progress=progress)
        runs.append((title, summary))
    _say(progress, "6/6 evaluation on the held-out phantoms (full labels, mm)")
    table = segmentation_table(runs)
    reg_table = registration_table(runs)
    text = f"# jointreg demo\n\n## Segmentation on {settings.test_cases} held-out phantom volumes\n\n{table}\n"
    text += postprocessing_note(runs)
    if reg_table:
        text += f"\n## Registration (label propagation on the test volumes)\n\n{reg_table}\n"
    write_text(out / "results.md", text)
    summary = {
        "folder": str(out),
        "seconds": round(time.perf_counter() - started, 1),
        "runs": {title: s.get("run") for title, s in runs},
        "table": table,
    }
    write_json(out / "demo_summary.json", summary)
    print("\n" + text)
    print(f"Everything is in {out} (results.md, runs/*/summary.json, TensorBoard: tensorboard --logdir {out / 'runs'})")
    print(f"Total time: {summary['seconds'] / 60:.1f} min")
    return summary


def _say(progress: bool, message: str) -> None:
    log.info(message)
    if progress:
        print(f"[demo] {message}", flush=True)


def results_as_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
