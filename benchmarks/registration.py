"""Registration benchmark: inference speed and memory of the registration networks.

Part ``speed`` (issue 4, item 7): inference pairs per second and peak memory for 2D 128², 2D 256²
and 3D 64³, at batch 1 and at the best batch size of a small sweep, for FMIRNet-1/-2/-3 and
VoxelMorph (displacement and diffeomorphic), counting the forward pass INCLUDING the warp of the
moving image; the label warp (one-hot + linear + argmax, 3 classes + ignore) is timed as a
separate figure. A plain residual UNet of ~0.5 M parameters (full-resolution convolutions, the
yardstick of the "≥ 76 pairs/s at 128² on 2 cores" goal) runs at 128² in the same process, so
that every figure of one run shares the machine's conditions. Parameter counts are included.

Run (prints one JSON object; ``--out`` also writes it)::

    .venv/bin/python benchmarks/registration.py --part speed [--threads 2] [--device auto]
        [--seconds 1.5] [--models fmirnet,voxelmorph] [--sizes 128x128,64x64x64] [--out FILE]

Memory: on CPU the peak resident-set growth (psutil, sampled every millisecond in a separate,
untimed pass) over the RSS before the pass; on CUDA the peak of ``torch.cuda.max_memory_allocated``
over what was allocated before. Timings on a shared machine vary ±20–30 %: compare figures of the
same run, and look at ``conditions.load_average``.

Part ``accuracy``: trains every architecture with the shipped registration-only recipes
(``recipes/registration_liver_phantom.yaml``, ``recipes/registration_chaos_t2.yaml``; fewer steps,
``--steps``) through :func:`jointreg.training.loop.train`, then evaluates on held-out test volumes:

* the slice-propagation protocol of docs/design.md at the SOURCE resolution, through ``jointreg register``'s library path
  (:func:`jointreg.inference.register.register_volumes`): in each test volume the slice with the
  largest liver area is the moving slice, every slice with liver or within ±6 slices of it is a
  fixed slice; liver Dice of the warped label (one-hot + linear + argmax) against the fixed
  slice's label, next to copying the label (identity); NCC, % folding and SDlogJ of each pair
  on the model grid;
* the training loop's own test evaluation (:func:`jointreg.inference.evaluation.
  evaluate_registration_on_volumes`: fixed slices within ±radius only, on the training grid).

Data: a liver-CT phantom generated on the fly (``--phantom-cases`` training + 4 test volumes,
seed 0) and ``DATA/chaos_t2`` converted with ``data_tools`` paired-nifti into ``--work`` (liver
only; test volumes 10, 13, 15, 19, 20, the split of docs/design.md); each run holds one
training volume out for model selection; ``--datasets echo`` adds the apical echo phantom (8 + 4
loops, seed 0; frames are the slices, the end-diastolic LV registered onto every other frame of
its loop: the FMIRNet paper's EchoNet protocol, ``recipes/registration_echo_phantom.yaml``; the
tables' "liver" column is the LV there). ``identity`` needs no training. On a quiet 2-core CPU
one model trains 800 steps (64², batch 8) in about a minute; the whole part takes ~15 min. Run::

    .venv/bin/python benchmarks/registration.py --part accuracy --threads 2 \
        [--data ../shared/data] [--datasets phantom,chaos[,echo]] [--steps 800] [--work DIR] \
        [--accuracy-models identity,voxelmorph,fmirnet-1,fmirnet-2,fmirnet,fmirnet-diff] \
        [--out results/registration_benchmark.json]   # also writes the .md next to it

``--accuracy-models all`` trains every registry network; with ``--work`` a later call reuses the
finished runs (same recipe), so the part can be resumed, and one call per data set can run in
parallel (same ``--work``) and be merged: ``--merge A.json B.json --out FILE`` writes one report.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from jointreg.nets.blocks import ResidualBlock, Upsample, flow_head, pool  # noqa: E402
from jointreg.nets.registration import create_registration_net  # noqa: E402
from jointreg.nets.registration import Prediction, RegistrationNet  # noqa: E402
from jointreg.spatial import warp_labels  # noqa: E402

DEFAULT_MODELS = ["fmirnet-1", "fmirnet-2", "fmirnet", "fmirnet-diff", "voxelmorph", "voxelmorph-diff"]
DEFAULT_SIZES = ["128x128", "256x256", "64x64x64"]
BATCHES = {2: [1, 2, 4, 8, 16, 32], 3: [1, 2, 4]}
YARDSTICK = "plain-resunet-0.5M"
LABEL_CLASSES = 3  # + ignore


class PlainResidualUNet(RegistrationNet):
    """The yardstick: a textbook residual UNet (two-conv residual block at every level, full
    resolution included; max pooling; nearest upsampling and concatenation), ~0.5 M parameters
    with ``features=(16, 32, 64, 128)``, used as a registration net (flow head + warp)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, features=(16, 32, 64, 128)):
        super().__init__(spatial_dims, in_channels)
        features = list(features)
        self.multiple = 2 ** (len(features) - 1)
        self.encode = nn.ModuleList()
        previous = 2 * in_channels
        for f in features:
            self.encode.append(ResidualBlock(spatial_dims, previous, f))
            previous = f
        self.pool = pool(spatial_dims, "max")
        self.up = Upsample(spatial_dims)
        self.decode = nn.ModuleList(
            ResidualBlock(spatial_dims, features[k + 1] + features[k], features[k]) for k in range(len(features) - 1)
        )
        self.head = flow_head(spatial_dims, features[0])

    def predict(self, moving, fixed):
        x = torch.cat([moving, fixed], 1)
        skips = []
        for k, block in enumerate(self.encode):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for k in range(len(self.decode) - 1, -1, -1):
            x = self.decode[k](torch.cat([self.up(x), skips.pop()], 1))
        return Prediction(self.head(x))


def parse_size(text: str) -> tuple[int, ...]:
    size = tuple(int(v) for v in text.lower().split("x"))
    if len(size) not in (2, 3) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"size must be like 128x128 or 64x64x64; got {text!r}")
    return size


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(batch: int, size: tuple[int, ...], device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    moving = torch.rand(batch, 1, *size, generator=g).to(device)
    fixed = torch.rand(batch, 1, *size, generator=g).to(device)
    return moving, fixed


def pairs_per_second(fn, batch: int, device: torch.device, seconds: float) -> float:
    """Run ``fn`` (one batch) until ``seconds`` have passed (at least 3 times) after 2 warm-ups."""
    with torch.inference_mode():
        for _ in range(2):
            fn()
        _sync(device)
        count, start = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - start < seconds:
            fn()
            count += 1
        _sync(device)
        elapsed = time.perf_counter() - start
    return count * batch / elapsed


def peak_memory_mb(name: str, size: tuple[int, ...], batch: int, device: torch.device) -> float | None:
    """Peak memory growth of one inference call (see the module docstring), in MiB.

    On CPU this runs in a fresh child process whose glibc allocator returns every large block to
    the system on free (``MALLOC_MMAP_THRESHOLD_``), so that the resident set tracks live tensors;
    in this process freed memory stays mapped after the timing runs and would read as 0.
    """
    if device.type == "cuda":
        gc.collect()
        net = build(name, len(size)).to(device).eval()
        moving, fixed = _inputs(batch, size, device)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            net(moving, fixed)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    probe = json.dumps({"name": name, "size": list(size), "batch": batch, "threads": torch.get_num_threads()})
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-probe", probe],
        env=env, capture_output=True, text=True, check=False,
    )
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"memory probe failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return None


def memory_probe(spec: str) -> int:
    """Child process of :func:`peak_memory_mb`: prints the peak RSS growth in MiB."""
    import psutil

    spec = json.loads(spec)
    torch.set_num_threads(spec["threads"])
    size, batch = tuple(spec["size"]), spec["batch"]
    net = build(spec["name"], len(size)).eval()
    moving, fixed = _inputs(batch, size, torch.device("cpu"))
    with torch.inference_mode():
        net(moving, fixed)  # warm-up: one-time library initialisation is not the model's memory
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with torch.inference_mode():
        net(moving, fixed)
    done.set()
    sampler.join()
    print((max(peak[0], process.memory_info().rss) - before) / 2**20)
    return 0


def build(name: str, dims: int) -> nn.Module:
    if name == YARDSTICK:
        return PlainResidualUNet(dims)
    return create_registration_net(name, spatial_dims=dims)


def measure_model(name: str, size: tuple[int, ...], device: torch.device, seconds: float, no_memory: bool = False) -> dict:
    """Sweep the batch sizes (``seconds`` of timing each); report batch 1 and the best batch,
    each with its peak memory and the label-warp rate at that batch size."""
    dims = len(size)
    net = build(name, dims).to(device).eval()
    sweep = []
    for batch in BATCHES[dims]:
        moving, fixed = _inputs(batch, size, device)
        try:
            rate = pairs_per_second(lambda: net(moving, fixed), batch, device, seconds)
        except (RuntimeError, MemoryError) as error:  # out of memory: stop the sweep here
            sweep.append({"batch": batch, "error": str(error).splitlines()[0]})
            break
        sweep.append({"batch": batch, "pairs_per_s": round(rate, 2)})
    ok = [s for s in sweep if "pairs_per_s" in s]
    result = {"model": name, "size": list(size), "sweep": sweep}
    for label, entry in (("batch1", ok[0]), ("best", max(ok, key=lambda s: s["pairs_per_s"]))):
        batch = entry["batch"]
        moving, fixed = _inputs(batch, size, device)
        with torch.inference_mode():
            flow = net(moving, fixed).flow + 1.3  # a non-trivial field
        labels = torch.randint(0, LABEL_CLASSES + 1, (batch, 1, *size), device=device)
        labels[labels == LABEL_CLASSES] = 255
        label_rate = pairs_per_second(
            lambda: warp_labels(labels, flow, LABEL_CLASSES, ignore_index=255), batch, device, seconds / 2
        )
        memory = None if no_memory else peak_memory_mb(name, size, batch, device)
        result[label] = {
            "batch": batch,
            "pairs_per_s": entry["pairs_per_s"],
            "peak_memory_mb": None if memory is None else round(memory, 1),
            "label_warp_pairs_per_s": round(label_rate, 2),
        }
    del net
    gc.collect()
    return result


def parameter_counts(models: list[str]) -> dict[str, dict[str, int]]:
    counts = {}
    for name in models:
        counts[name] = {f"{d}d": sum(p.numel() for p in build(name, d).parameters()) for d in (2, 3)}
    return counts


def run_speed(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    models = args.models
    results = []
    for size in args.sizes:
        names = ([YARDSTICK] if size == (128, 128) and not args.no_yardstick else []) + models
        for name in names:
            print(f"  {name} at {'x'.join(map(str, size))} ...", file=sys.stderr, flush=True)
            results.append(measure_model(name, size, device, args.seconds, args.no_memory))
    summary: dict[str, dict[str, dict]] = {}
    for r in results:
        summary.setdefault(r["model"], {})["x".join(map(str, r["size"]))] = {
            "batch1_pairs_per_s": r["batch1"]["pairs_per_s"],
            "best_batch": r["best"]["batch"],
            "best_pairs_per_s": r["best"]["pairs_per_s"],
            "batch1_peak_memory_mb": r["batch1"]["peak_memory_mb"],
            "best_peak_memory_mb": r["best"]["peak_memory_mb"],
            "label_warp_batch1_pairs_per_s": r["batch1"]["label_warp_pairs_per_s"],
            "label_warp_best_pairs_per_s": r["best"]["label_warp_pairs_per_s"],
        }
    return {
        "parameters": parameter_counts(([YARDSTICK] if not args.no_yardstick else []) + models),
        "summary": summary,
        "runs": results,
    }



# --------------------------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------------------------
ACCURACY_MODELS = ["identity", "voxelmorph", "fmirnet-1", "fmirnet-2", "fmirnet", "fmirnet-diff"]
# ``--accuracy-models all``: the identity, then every trainable registry network in this order
# (networks registered later follow, by name).
ALL_ORDER = ["voxelmorph", "voxelmorph-diff", "fmirnet-1", "fmirnet-2", "fmirnet-3", "fmirnet", "fmirnet-diff", "fmirnet-fast",
             "tvf", "tvf-lddmm", "affine-deformable", "deformable-gradients", "affine", "pmrnet", "pmrnet-diff"]
SPEED_BATCHES = (1, 8)  # pairs/s of each trained model on its training grid, interleaved


def accuracy_model_names(text: str) -> list[str]:
    """``--accuracy-models``: comma-separated names, or ``all`` (every registry network)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names != ["all"]:
        return names
    from jointreg.nets.registration import REGISTRATION_NETS, is_trainable

    trainable = [n for n in REGISTRATION_NETS if is_trainable(n)]
    ordered = [n for n in ALL_ORDER if n in trainable]
    return ["identity", *ordered, *sorted(set(trainable) - set(ordered))]
ACCURACY_DATASETS = ["phantom", "chaos"]  # and "echo": the apical echo phantom (label 1 = the LV blood pool)
CHAOS_TEST = ("10", "13", "15", "19", "20")
LIVER = 1
RECIPES = {"phantom": "registration_liver_phantom.yaml", "chaos": "registration_chaos_t2.yaml",
           "echo": "registration_echo_phantom.yaml"}


def prepare_dataset(name: str, args: argparse.Namespace) -> Path | None:
    """The canonical dataset of one benchmark setting in ``args.work`` (``None``: no data)."""
    if name == "phantom":
        from jointreg.data.phantoms import generate_phantom_dataset

        return generate_phantom_dataset(
            args.work / "liver_phantom", "liver-ct", n_train=args.phantom_cases, n_test=4, seed=0, overwrite=True
        )
    if name == "echo":  # frames are the slices: the largest-LV frame (end-diastole) onto every other frame
        from jointreg.data.phantoms import generate_phantom_dataset

        return generate_phantom_dataset(args.work / "echo_phantom", "echo-a4c", n_train=8, n_test=4, seed=0,
                                        overwrite=True)
    source = args.data / "chaos_t2"
    if not source.is_dir():
        return None
    from data_tools._common import LabelMap
    from data_tools.paired_nifti import convert_paired_nifti

    return convert_paired_nifti(
        str(source / "image_*.nii.gz"), args.work / "chaos_t2", modality="T2", labels=str(source / "label_*.nii.gz"),
        label_map=LabelMap.parse(["1=liver:1"]), unmapped="background", case_prefix="chaos_",
        test_cases=CHAOS_TEST, overwrite=True,
    )


def accuracy_overrides(setting: str, architecture: str, dataset: Path, args: argparse.Namespace) -> list[str]:
    """``--set`` overrides applied to the shipped recipe of ``setting`` (recorded in the JSON)."""
    rounds = max(1, args.rounds)
    return [
        f"name={setting}_{architecture}",
        f"seed={args.seed}",
        f"output={args.work / 'runs'}",
        f"data.dataset={dataset}",
        "data.validation_count=1",
        f"registration.architecture={architecture}",
        "schedule.registration_warmup=0",
        f"schedule.rounds={rounds}",
        f"schedule.registration_steps={max(1, -(-args.steps // rounds))}",
        f"device={args.device}",
        f"threads={torch.get_num_threads()}",
        "logging.tensorboard=false",
        "logging.image_every=0",
        "logging.progress=false",
        "evaluation.write_predictions=false",
        *args.set,
    ]


def field_protocol(model, dataset: Path, radius: int = 6, *, cross_volume: bool = False) -> dict:
    """The slice-propagation protocol (docs/design.md) on the test split, at the source resolution.

    ``model`` is a loaded registration model folder, or ``None`` for the identity (copying the
    label). Returns per-pair means and standard deviations and per-volume means.

    ``cross_volume``: the moving slice (and its label) comes from the next test volume (in case
    order, cyclically) instead of the fixed slices' own volume, so whole-image differences
    (position, size, orientation) must be registered too; the fixed slices are the same.
    """
    import numpy as np

    from jointreg.data.dataset import Dataset
    from jointreg.inference.register import register_volumes
    from jointreg.metrics.overlap import dice

    ds = Dataset.open(dataset)
    rows = []
    cases = ds.cases("Ts")
    for index, case in enumerate(cases):
        image, label = ds.read_image(case, "Ts"), ds.read_label(case, "Ts")
        liver = label.array == LIVER
        area = liver.sum(axis=(0, 1))  # slices along axis 2 (the through-plane axis of both data sets)
        moving = int(area.argmax())
        fixed = [f for f in range(image.shape[2]) if f != moving and (area[f] > 0 or abs(f - moving) <= radius)]
        source, source_label, source_slice = image, label, moving
        if cross_volume:
            other = cases[(index + 1) % len(cases)]
            source, source_label = ds.read_image(other, "Ts"), ds.read_label(other, "Ts")
            source_slice = int((source_label.array == LIVER).sum(axis=(0, 1)).argmax())
        result = None
        if model is not None:
            result = register_volumes(model, source, image, moving_labels=source_label,
                                      slice_map=[(source_slice, f) for f in fixed], axis=2)
        for k, f in enumerate(fixed):
            truth = liver[:, :, f]
            row = {"case": case, "moving": source_slice, "fixed": f}
            if not cross_volume:
                row["identity_dice"] = dice(liver[:, :, moving], truth)
            if result is not None:
                pair = result.pairs[k]
                row.update(dice=dice(result.warped_labels[:, :, f] == LIVER, truth),
                           **{key: pair[key] for key in PAIR_METRICS if key in pair})
            else:
                row["dice"] = row["identity_dice"]
            rows.append(row)
    metrics = [k for k in ("dice", "identity_dice", *PAIR_METRICS) if k in rows[0]]
    out = {"pairs": len(rows), "volumes": len({r["case"] for r in rows})}
    for key in metrics:
        values = np.array([r[key] for r in rows], float)
        out[key] = round(float(values.mean()), 4)
        out[f"{key}_std"] = round(float(values.std()), 4)
    if model is not None and not cross_volume:
        from scipy.stats import wilcoxon

        gain = np.array([r["dice"] - r["identity_dice"] for r in rows])
        out["dice_gain_over_identity"] = round(float(gain.mean()), 4)
        out["pairs_improved"] = int((gain > 0).sum())
        out["pairs_worse"] = int((gain < 0).sum())
        # Paired two-sided Wilcoxon signed-rank test of Dice against copying the label.
        out["wilcoxon_p"] = float(wilcoxon(gain).pvalue) if np.any(gain != 0) else 1.0
    out["per_pair_dice"] = [round(float(r["dice"]), 5) for r in rows]
    out["per_volume_dice"] = {
        c: round(float(np.mean([r["dice"] for r in rows if r["case"] == c])), 4) for c in sorted({r["case"] for r in rows})
    }
    return out


PAIR_METRICS = ("ncc", "identity_ncc", "nmi", "identity_nmi", "ssim", "identity_ssim", "folding_percent", "sdlogj")


def cross_volume_rows(model, dataset: Path, radius: int) -> dict:
    """The cross-volume protocol for ``model`` and, through the same code path, the identity
    (the model's preprocessing with a zero field), with the paired test between them."""
    import dataclasses

    import numpy as np
    from scipy.stats import wilcoxon

    identity = dataclasses.replace(model, model=create_registration_net("identity", spatial_dims=2))
    warped = field_protocol(model, dataset, radius, cross_volume=True)
    copied = field_protocol(identity, dataset, radius, cross_volume=True)
    gain = np.array([warped["per_pair_dice"][k] - copied["per_pair_dice"][k] for k in range(len(warped["per_pair_dice"]))])
    warped.update(identity_dice=copied["dice"], dice_gain_over_identity=round(float(gain.mean()), 4),
                  pairs_improved=int((gain > 0).sum()), pairs_worse=int((gain < 0).sum()),
                  wilcoxon_p=float(wilcoxon(gain).pvalue) if np.any(gain != 0) else 1.0)
    return warped


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: on a shared machine, wall time divided by
    the load; CPU time is what a quiet machine would need (roughly, ÷ threads for wall time)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def accuracy_setting(setting: str, args: argparse.Namespace) -> dict:
    """Train and evaluate every model of ``args.accuracy_models`` on one data set."""
    from jointreg.export.model_folder import load_model_folder
    from jointreg.training.config import load_recipe
    from jointreg.training.loop import train
    from jointreg.training.run_folder import check_not_finished_otherwise, finished_summary
    from jointreg.utils.atomic import write_text

    started, started_cpu = time.perf_counter(), cpu_seconds()
    dataset = prepare_dataset(setting, args)
    if dataset is None:
        return {"skipped": f"{args.data / 'chaos_t2'} not found"}
    report: dict = {"dataset": str(dataset), "prepare_seconds": round(time.perf_counter() - started, 1), "models": {}}
    recipe_path = REPO / "recipes" / RECIPES[setting]
    trained: dict[str, tuple] = {}
    for name in args.accuracy_models:
        print(f"  accuracy: {setting} / {name} ...", file=sys.stderr, flush=True)
        if name == "identity":
            t0 = time.perf_counter()
            report["models"][name] = {"field_protocol": field_protocol(None, dataset), "eval_seconds": round(time.perf_counter() - t0, 1)}
            continue
        overrides = accuracy_overrides(setting, name, dataset, args)
        recipe = load_recipe(recipe_path, overrides)
        run_dir = Path(recipe.output) / recipe.name
        summary, timing = finished_summary(run_dir, recipe), run_dir / TIMING_FILE
        if summary is not None and timing.is_file():  # a finished run of an earlier call (--work)
            print(f"  accuracy: reusing {run_dir}", file=sys.stderr, flush=True)
            train_wall, train_cpu = json.loads(timing.read_text(encoding="utf-8"))
        else:
            if not args.retrain:
                check_not_finished_otherwise(run_dir, recipe)
            t0, c0 = time.perf_counter(), cpu_seconds()
            summary = train(recipe, overwrite=True, progress=False)
            train_wall, train_cpu = time.perf_counter() - t0, cpu_seconds() - c0
            write_text(timing, json.dumps([train_wall, train_cpu]) + "\n")
        model = load_model_folder(summary["exported"]["registration"], device=resolve_device(args.device))
        trained[name] = (model, tuple(recipe.data.size))
        t0, c0 = time.perf_counter(), cpu_seconds()
        field = field_protocol(model, dataset, radius=recipe.pairs.radius)
        cross = cross_volume_rows(model, dataset, recipe.pairs.radius) if args.cross_volume else None
        report["models"][name] = {
            "recipe": str(recipe_path.relative_to(REPO)),
            "overrides": overrides,
            "parameters": sum(p.numel() for p in model.model.parameters()),
            "steps": summary["registration_steps"],
            "best_step": summary["best_step"],
            "best_validation_dice": summary["best_validation"],
            "train_wall_seconds": round(train_wall, 1),
            "train_cpu_seconds": round(train_cpu, 1),
            "field_protocol": field,
            "cross_volume": cross,
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "eval_cpu_seconds": round(cpu_seconds() - c0, 1),
            "loop_evaluation_radius": summary.get("evaluation", {}).get("registration"),
        }
        for backend in args.backends:
            if backend != "torch":
                report["models"][f"{name} [{backend}]"] = backend_row(model, backend, dataset, recipe, field)
                trained[f"{name} [{backend}]"] = (model_with_backend(model, backend), tuple(recipe.data.size))
    speed = interleaved_speed(trained, resolve_device(args.device), args.seconds)
    for name, rates in speed.items():
        report["models"][name]["pairs_per_s"] = rates
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["cpu_seconds"] = round(cpu_seconds() - started_cpu, 1)
    return report


def model_with_backend(model, backend: str):
    """The loaded ``model`` with its network run by ``backend`` (``--backend`` of ``register``)."""
    from dataclasses import replace

    from jointreg.inference.onnx_runtime import registration_backend

    return replace(model, model=registration_backend(model.model, backend))


def backend_row(model, backend: str, dataset: Path, recipe, torch_field: dict) -> dict:
    """The field protocol with the same trained network run by ``backend``, paired per pair
    against PyTorch float32 (``torch_field``): the Dice a faster backend costs or not."""
    import numpy as np
    from scipy.stats import wilcoxon

    t0 = time.perf_counter()
    field = field_protocol(model_with_backend(model, backend), dataset, radius=recipe.pairs.radius)
    difference = np.array(field["per_pair_dice"]) - np.array(torch_field["per_pair_dice"])
    return {"backend": backend, "parameters": sum(p.numel() for p in model.model.parameters()),
            "field_protocol": field, "eval_seconds": round(time.perf_counter() - t0, 1),
            "versus_torch": {"dice_difference": round(float(difference.mean()), 5),
                             "max_abs_pair_difference": round(float(np.abs(difference).max()), 5),
                             "pairs_better": int((difference > 0).sum()), "pairs_worse": int((difference < 0).sum()),
                             "wilcoxon_p": float(wilcoxon(difference).pvalue) if np.any(difference != 0) else 1.0}}


TIMING_FILE = "benchmark_train_seconds.json"  # [wall, cpu] of the training, for reuse


def interleaved_speed(trained: dict[str, tuple], device: torch.device, seconds: float, rounds: int = 3) -> dict:
    """Pairs/s (forward pass + image warp, inference mode) of every trained model on its training
    grid at each of ``SPEED_BATCHES``: the models take turns for ``rounds`` rounds and each
    figure is the median of its rounds, so that all of them share the machine's conditions."""
    rates: dict[str, dict[str, list[float]]] = {name: {} for name in trained}
    for _ in range(rounds):
        for name, (model, size) in trained.items():
            net = model.model.eval()
            for batch in SPEED_BATCHES:
                moving, fixed = _inputs(batch, size, device)
                rate = pairs_per_second(lambda: net(moving, fixed), batch, device, seconds / rounds)
                rates[name].setdefault(f"batch{batch}", []).append(rate)
    import numpy as np

    return {name: {key: round(float(np.median(values)), 1) for key, values in by_batch.items()}
            for name, by_batch in rates.items()}


def run_accuracy(args: argparse.Namespace) -> dict:
    import tempfile

    cleanup = None
    if args.work is None:
        cleanup = tempfile.TemporaryDirectory(prefix="jointreg-regbench-")
        args.work = Path(cleanup.name)
    args.work_used = args.work
    try:
        results = {name: accuracy_setting(name, args) for name in args.datasets}
    finally:
        if cleanup is not None:
            cleanup.cleanup()
            args.work = None
    return {"protocol": "docs/design.md (moving = largest-liver slice; fixed = liver slices or within ±6); source resolution",
            "steps": args.steps, "settings": results}


def accuracy_markdown(report: dict, command: str) -> str:
    """The accuracy tables (and the speed summary, when present) as Markdown."""
    lines = ["# Registration benchmark", ""]
    conditions = report.get("conditions", {})
    lines += [
        f"Command (repository root): `{command}`", "",
        f"Machine: {conditions.get('cpu_count')} CPUs, {conditions.get('threads')} torch threads, "
        f"device {conditions.get('device')}, torch {conditions.get('torch')}; load average "
        f"{conditions.get('load_average_start')} at the start, {conditions.get('load_average_end')} at the end "
        f"({conditions.get('time')}).", "",
    ]
    accuracy = report.get("accuracy")
    if accuracy:
        lines += [
            "## Accuracy on held-out volumes", "",
            f"Protocol: {accuracy['protocol']}. Dice: liver, mean ± std over pairs; NCC, folding and SDlogJ "
            f"on the model grid. Training: {accuracy['steps']} steps per model (shipped recipe, see overrides in the JSON). "
            "Pairs/s: forward pass + image warp on the training grid, the trained models taking turns (median of 3 rounds).", "",
            *summary_table(accuracy["settings"]),
        ]
        for setting, result in accuracy["settings"].items():
            lines.append(f"### {setting}")
            lines.append("")
            if "skipped" in result:
                lines += [f"skipped: {result['skipped']}", ""]
                continue
            lines += [
                "| model | parameters | liver Dice | Δ vs identity (pairs better/worse, Wilcoxon p) | NCC (identity → warped) "
                "| NMI | SSIM | folding % | SDlogJ | loop eval Dice ±6 (identity) | train s (CPU s) | pairs/s batch 1 / 8 | eval s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            identity = None
            for name, row in result["models"].items():
                f = row["field_protocol"]
                if name == "identity":
                    identity = f["dice"]
            for name, row in result["models"].items():
                f = row["field_protocol"]
                delta = "–"
                if identity is not None and name != "identity":
                    delta = f"{f['dice'] - identity:+.3f} ({f['pairs_improved']}/{f['pairs_worse']}, p = {f['wilcoxon_p']:.1g})"
                ncc, nmi, ssim = (_before_after(f, key) for key in ("ncc", "nmi", "ssim"))
                loop = row.get("loop_evaluation_radius") or {}
                loop_text = f"{loop['label_dice']:.3f} ({loop['identity_dice']:.3f})" if loop.get("label_dice") is not None else "–"
                lines.append(
                    f"| {name} | {row.get('parameters', 0):,} | {f['dice']:.3f} ± {f['dice_std']:.3f} | {delta} | {ncc} | "
                    f"{nmi} | {ssim} | {f.get('folding_percent', 0.0):.3f} | {f.get('sdlogj', 0.0):.3f} | {loop_text} | "
                    f"{row.get('train_wall_seconds', 0):.0f} ({row.get('train_cpu_seconds', 0):.0f}) | "
                    f"{_rates(row)} | {row.get('eval_seconds', 0):.0f} |"
                )
            pairs = next(iter(result["models"].values()))["field_protocol"]
            lines += ["", f"{pairs['pairs']} pairs in {pairs['volumes']} test volumes; data set {result['dataset']}; "
                      f"wall time {result['wall_seconds']:.0f} s, CPU time {result['cpu_seconds']:.0f} s.", ""]
            backends = {name: row["versus_torch"] for name, row in result["models"].items() if row.get("versus_torch")}
            if backends:
                lines += [f"Backends ({setting}): the same trained network, paired per pair against PyTorch float32.", "",
                          "| model [backend] | Dice difference | largest pair difference | pairs better / worse | Wilcoxon p |",
                          "|---|---|---|---|---|"]
                lines += [f"| {name} | {v['dice_difference']:+.5f} | {v['max_abs_pair_difference']:.5f} | "
                          f"{v['pairs_better']} / {v['pairs_worse']} | {v['wilcoxon_p']:.2g} |" for name, v in backends.items()]
                lines.append("")
            crossed = {name: row["cross_volume"] for name, row in result["models"].items() if row.get("cross_volume")}
            if crossed:
                lines += [f"Cross-volume pairs ({setting}): the moving slice from the next test volume, the same fixed slices.", "",
                          "| model | liver Dice | identity (same preprocessing, zero field) | Δ (better/worse, Wilcoxon p) | NCC | folding % |",
                          "|---|---|---|---|---|---|"]
                for name, c in crossed.items():
                    lines.append(f"| {name} | {c['dice']:.3f} ± {c['dice_std']:.3f} | {c['identity_dice']:.3f} | "
                                 f"{c['dice_gain_over_identity']:+.3f} ({c['pairs_improved']}/{c['pairs_worse']}, "
                                 f"p = {c['wilcoxon_p']:.1g}) | {_before_after(c, 'ncc')} | {c.get('folding_percent', 0.0):.3f} |")
                lines.append("")
    speed = report.get("speed")
    if speed:
        lines += ["## Speed (pairs/s, forward pass + image warp)", "",
                  "| model | size | batch 1 | best batch | best pairs/s | peak MiB (batch 1) |", "|---|---|---|---|---|---|"]
        for model, sizes in speed["summary"].items():
            for size, row in sizes.items():
                lines.append(f"| {model} | {size} | {row['batch1_pairs_per_s']} | {row['best_batch']} | "
                             f"{row['best_pairs_per_s']} | {row['batch1_peak_memory_mb']} |")
        lines.append("")
    return "\n".join(lines)


def _rates(row: dict) -> str:
    rates = row.get("pairs_per_s") or {}
    return " / ".join(f"{rates[f'batch{b}']:.0f}" if f"batch{b}" in rates else "–" for b in SPEED_BATCHES)


def summary_table(settings: dict) -> list[str]:
    """One row per network over every data set: liver Dice gain over the identity (within-volume
    and cross-volume pairs), folding, parameters and speed, the detail tables below."""
    ran = {k: v for k, v in settings.items() if "skipped" not in v}
    if not ran:
        return []
    names = list(dict.fromkeys(n for v in ran.values() for n in v["models"]))
    head = ["model", "parameters"]
    for setting, result in ran.items():
        head += [f"{setting} Dice (Δ vs identity)"]
        if any(r.get("cross_volume") for r in result["models"].values()):
            head += [f"{setting} cross-volume Δ"]
        head += [f"{setting} folding %"]
    head += ["pairs/s batch 1 / 8 (" + ", ".join(ran) + ")", "train CPU s (" + ", ".join(ran) + ")"]
    lines = ["One table, every network (details per data set below):", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name in names:
        cells, rates, cpu, parameters = [name], [], [], None
        for setting, result in ran.items():
            row = result["models"].get(name)
            crossed = any(r.get("cross_volume") for r in result["models"].values())
            if row is None:
                cells += ["–"] * (3 if crossed else 2)
                rates.append("–")
                cpu.append("–")
                continue
            identity = result["models"].get("identity", {}).get("field_protocol", {}).get("dice")
            f = row["field_protocol"]
            gain = "" if identity is None or name == "identity" else f" ({f['dice'] - identity:+.3f}, p = {f['wilcoxon_p']:.1g})"
            cells.append(f"{f['dice']:.3f}{gain}")
            if crossed:
                c = row.get("cross_volume")
                cells.append(f"{c['dice_gain_over_identity']:+.3f}" if c else "–")
            cells.append(f"{f.get('folding_percent', 0.0):.3f}")
            rates.append(_rates(row) if row.get("pairs_per_s") else "–")
            cpu.append(f"{row['train_cpu_seconds']:.0f}" if "train_cpu_seconds" in row else "–")
            parameters = row.get("parameters", parameters)
        cells.insert(1, f"{parameters or 0:,}")
        lines.append("| " + " | ".join(cells + [", ".join(rates), ", ".join(cpu)]) + " |")
    return lines + [""]


def _before_after(row: dict, key: str) -> str:
    """``identity → warped`` of a similarity, or ``–`` where the row has none."""
    if key not in row or f"identity_{key}" not in row:
        return "–"
    return f"{row[f'identity_{key}']:.3f} → {row[key]:.3f}"


PARTS = {"speed": run_speed, "accuracy": run_accuracy}


def conditions(args: argparse.Namespace) -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(resolve_device(args.device)),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_start": [round(v, 2) for v in load] if load else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([".venv/bin/python", "benchmarks/registration.py", *sys.argv[1:]]),
    }
    if torch.cuda.is_available() and info["device"].startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def merge_reports(paths: list[Path], out: Path) -> int:
    """One accuracy report from several (their data sets side by side; conditions of each kept)."""
    from jointreg.utils.atomic import write_text

    reports = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    accuracy = {k: v for k, v in reports[0]["accuracy"].items() if k != "settings"}
    accuracy["settings"] = {}
    for report in reports:
        if report["accuracy"].get("steps") != accuracy.get("steps"):
            raise SystemExit(f"--merge: the reports trained different numbers of steps ({paths})")
        accuracy["settings"].update(report["accuracy"]["settings"])
    commands = [r["conditions"]["command"] for r in reports]
    merged = {"conditions": {**reports[0]["conditions"], "command": " ; ".join(commands),
                             "merged_from": [r["conditions"] for r in reports]},
              "accuracy": accuracy}
    text = json.dumps(merged, indent=2)
    write_text(out, text + "\n")
    write_text(out.with_suffix(".md"), accuracy_markdown(merged, merged["conditions"]["command"]) + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per batch size (and per figure)")
    parser.add_argument("--models", type=lambda s: s.split(","), default=DEFAULT_MODELS)
    parser.add_argument("--sizes", type=lambda s: [parse_size(v) for v in s.split(",")],
                        default=[parse_size(s) for s in DEFAULT_SIZES])
    parser.add_argument("--no-yardstick", action="store_true", help="skip the plain residual UNet")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory figures")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding chaos_t2/ (accuracy part; default ../shared/data)")
    parser.add_argument("--datasets", type=lambda v: v.split(","), default=ACCURACY_DATASETS,
                        help="accuracy data sets: phantom,chaos")
    parser.add_argument("--accuracy-models", type=accuracy_model_names, default=ACCURACY_MODELS,
                        help="accuracy: identity and registry names, or 'all' (every registry network)")
    parser.add_argument("--cross-volume", action="store_true",
                        help="accuracy: also the cross-volume protocol (moving slice from another test volume)")
    parser.add_argument("--backends", type=lambda v: [b.strip() for b in v.split(",") if b.strip()], default=["torch"],
                        help="accuracy: also evaluate every trained network with these backends of `register` "
                             "(e.g. torch,torch-bfloat16), paired per pair against torch")
    parser.add_argument("--steps", type=int, default=800, help="accuracy: training steps per model")
    parser.add_argument("--rounds", type=int, default=4, help="accuracy: validations (model selection) per run")
    parser.add_argument("--phantom-cases", type=int, default=8, help="accuracy: phantom training volumes (+4 test)")
    parser.add_argument("--seed", type=int, default=0, help="accuracy: recipe seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="accuracy: extra recipe override for every model (repeatable)")
    parser.add_argument("--work", type=Path, default=None,
                        help="accuracy: keep data sets and runs here (default: a temporary folder); a later call "
                             "with the same settings reuses the finished runs")
    parser.add_argument("--retrain", action="store_true",
                        help="accuracy: train again (replacing them) the runs in --work that finished with other "
                             "settings; without it the benchmark stops at the first such run, untouched (the runs "
                             "it finished before stay)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (and, with the accuracy part, a .md beside it)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="run nothing: merge the accuracy parts of these reports (e.g. one per data set, run "
                             "in parallel) into --out and its .md")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe)
    if args.merge is not None:
        if args.out is None:
            parser.error("--merge needs --out")
        return merge_reports(args.merge, args.out)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = {"conditions": conditions(args)}
    from jointreg.errors import ConfigError

    try:
        from jointreg.inference.onnx_runtime import check_backend

        for backend in args.backends:  # before any training
            check_backend(backend, args.device)
        for part, fn in PARTS.items():
            if args.part in (part, "all"):
                report[part] = fn(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["conditions"]["load_average_end"] = [round(v, 2) for v in load] if load else None
    report = portable(report, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        from jointreg.utils.atomic import write_text

        write_text(args.out, text + "\n")
        if "accuracy" in report:
            write_text(args.out.with_suffix(".md"), accuracy_markdown(report, report["conditions"]["command"]) + "\n")
    return 0


def portable(report: dict, args: argparse.Namespace) -> dict:
    """The report with this machine's folders named generically: the work folder as ``WORK``,
    the data folder as ``DATA``, the repository as relative paths (results are committed)."""
    replacements = [(str(REPO) + os.sep, ""), (str(REPO), ".")]
    work = getattr(args, "work_used", None)
    if work is not None:
        replacements.insert(0, (str(Path(work).resolve()), "WORK"))
        replacements.insert(0, (str(work), "WORK"))
    replacements.insert(0, (str(args.data), "DATA"))
    text = json.dumps(report)
    for old, new in replacements:
        if old not in ("", "."):
            text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
    return json.loads(text)


if __name__ == "__main__":
    sys.exit(main())
