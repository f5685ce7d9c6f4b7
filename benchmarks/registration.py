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
from jointreg.nets.registration.base import RegistrationNet  # noqa: E402
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
        super().__init__(spatial_dims, in_channels, diffeomorphic=False, int_steps=0, int_downsize=1)
        features = list(features)
        self.config = dict(spatial_dims=spatial_dims, in_channels=in_channels, features=features)
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
        field = self.head(x)
        return field, (field,), None


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


PARTS = {"speed": run_speed}  # the accuracy part joins here


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
    }
    if torch.cuda.is_available() and info["device"].startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


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
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = {"conditions": conditions(args)}
    for part, fn in PARTS.items():
        if args.part in (part, "all"):
            report[part] = fn(args)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["conditions"]["load_average_end"] = [round(v, 2) for v in load] if load else None
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        from jointreg.utils.atomic import write_text

        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
