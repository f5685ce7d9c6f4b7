"""Registration inference speed against the peers, interleaved in one process; prints JSON.

Models (each maps a moving and a fixed image to a displacement field and the warped moving
image; the label warp is timed separately and is the same for all):

* ``fmirnet``: jointreg's FMIRNet (the registry network, as ``jointreg register`` runs it);
* ``monai-voxelmorph``: MONAI's ``VoxelMorph(spatial_dims=2)`` with its default 2D backbone
  (81 k parameters) and 7 scaling-and-squaring steps, warping with MONAI's own ``Warp``;
* ``monai-voxelmorph-displacement``: the same with ``integration_steps=0`` (a plain
  displacement field, as jointreg's ``voxelmorph``);
* ``monai-localnet``: MONAI's ``LocalNet`` (DeepReg's local network; 2D, 16 initial channels,
  extraction levels 0-3) followed by MONAI's ``Warp`` of the moving image;
* ``fmirnet-channels-last``: a lever, measured like a model: FMIRNet with weights and inputs in
  the channels-last memory format (NHWC, the layout oneDNN's convolutions prefer);
* ``fmirnet-onnxruntime``: FMIRNet as ``--backend onnxruntime`` runs it (exported in memory,
  ONNX Runtime's CPU provider; :mod:`jointreg.inference.onnx_runtime`), and
  ``monai-voxelmorph-onnxruntime``: MONAI's VoxelMorph through the same path, for a like-for-like
  ratio (MONAI itself runs in PyTorch);
* ``fmirnet-bfloat16``: FMIRNet as ``--backend torch-bfloat16`` runs it (bfloat16 autocast,
  channels-last weights, float32 outputs; :mod:`jointreg.inference.autocast`), and
  ``monai-voxelmorph-bfloat16``: MONAI's VoxelMorph wrapped the same way, for a like-for-like
  ratio. Only meaningful on a CPU with bfloat16 matrix units (AMX, AVX512-BF16);
* ``fmirnet-fast`` (and its ``-channels-last`` / ``-onnxruntime`` forms): the registry's narrower
  FMIRNet (8 / 16 channels at full / half resolution, 46 % of FMIRNet's FLOPs); its Dice is
  measured by ``benchmarks/registration.py --part accuracy --accuracy-models fmirnet,fmirnet-fast``.

Ratios: every jointreg model (``fmirnet*``) over every MONAI model, per round, median.

Protocol. For each size, a short sweep over batch sizes finds every model's best batch; then
``--rounds`` rounds each time every model at batch 1 and at its best batch for ``--seconds``,
the models in turn within a round, so that every model sees the same machine conditions. The
figures are the medians over the rounds, and each ratio (FMIRNet / peer) is the median of the
per-round ratios. Inference in ``torch.inference_mode`` with float32 inputs.

FLOPs per pair: convolution and matrix-product FLOPs of one forward pass at batch 1
(``torch.utils.flop_counter``; sampling and elementwise work are not counted). The machine's
measured peak: float32 matrix product (``--gemm`` ², torch.mm) and a small-channel 3×3
convolution (16 → 16 channels, 128², batch 8), both in this process with the same threads. The
"fraction of peak" of a model is FLOPs/pair × pairs/s at its best batch / the convolution peak.

Needs MONAI (``pip install -c constraints.txt -e ".[peers]"``). Run:

    .venv/bin/python benchmarks/registration_peers.py [--threads 1] [--sizes 128x128,256x256] \
        [--rounds 5] [--seconds 1.0] [--out results/registration_peers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jointreg.nets.registration import create_registration_net  # noqa: E402
from jointreg.spatial import warp_labels  # noqa: E402

MODELS = ["fmirnet", "fmirnet-channels-last", "fmirnet-onnxruntime", "fmirnet-bfloat16", "fmirnet-fast",
          "fmirnet-fast-channels-last", "fmirnet-fast-onnxruntime", "monai-voxelmorph", "monai-voxelmorph-displacement",
          "monai-localnet", "monai-voxelmorph-onnxruntime", "monai-voxelmorph-bfloat16"]
BATCHES = [1, 2, 4, 8, 16, 32]
LABEL_CLASSES = 3


class MonaiPeer(nn.Module):
    """A MONAI network as ``(moving, fixed) -> (warped moving, displacement)``."""

    def __init__(self, name: str):
        super().__init__()
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        from monai.networks.blocks import Warp
        from monai.networks.nets import LocalNet, VoxelMorph

        self.name = name
        if name == "monai-localnet":
            self.net = LocalNet(spatial_dims=2, in_channels=2, num_channel_initial=16,
                                extract_levels=(0, 1, 2, 3), out_channels=2)
            self.warp = Warp()
        else:
            steps = 0 if name.endswith("displacement") else 7
            self.net = VoxelMorph(spatial_dims=2, integration_steps=steps)

    def forward(self, moving, fixed):
        if self.name == "monai-localnet":
            ddf = self.net(torch.cat([moving, fixed], 1))
            return self.warp(moving, ddf), ddf
        return self.net(moving, fixed)


class AsRegistrationOutput(nn.Module):
    """A ``(warped, field)`` network as jointreg's output type (what the ONNX Runtime backend wraps)."""

    spatial_dims = 2

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, moving, fixed):
        from jointreg.nets.registration import RegistrationOutput

        return RegistrationOutput(*self.net(moving, fixed))


def build(name: str) -> nn.Module:
    if name.endswith("-bfloat16"):
        from jointreg.inference.autocast import Bfloat16Inference

        return Bfloat16Inference(build(name.removesuffix("-bfloat16")).eval())
    if name.endswith("-onnxruntime"):
        from jointreg.inference.onnx_runtime import OnnxRuntimeRegistration

        base = build(name.removesuffix("-onnxruntime")).eval()
        return OnnxRuntimeRegistration(AsRegistrationOutput(base) if name.startswith("monai-") else base)
    if name.startswith("monai-"):
        return MonaiPeer(name)
    if name.endswith("-channels-last"):
        return create_registration_net(name.removesuffix("-channels-last"), spatial_dims=2).to(
            memory_format=torch.channels_last)
    return create_registration_net(name, spatial_dims=2)


def forward_fn(net: nn.Module, moving, fixed):
    # (A 1-channel NCHW input is also channels-last: a channels-last network needs no conversion.)
    return lambda: net(moving, fixed)


def _inputs(batch: int, size, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *size, generator=g), torch.rand(batch, 1, *size, generator=g)


def rate(fn, batch: int, seconds: float) -> float:
    """Pairs per second of ``fn`` (one batch) over ``seconds`` (at least 3 calls), after a warm-up."""
    with torch.inference_mode():
        fn()
        count, start = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - start < seconds:
            fn()
            count += 1
        return count * batch / (time.perf_counter() - start)


def flops_per_pair(net: nn.Module, size) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = getattr(net, "net", net) if type(net).__name__ == "OnnxRuntimeRegistration" else net  # the same graph
    moving, fixed = _inputs(1, size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(moving, fixed)
    return float(counter.get_total_flops())


def machine_peak(gemm: int, seconds: float) -> dict[str, float]:
    """Measured float32 GFLOP/s of a square matrix product and of a small-channel 3×3 conv."""
    a, b = torch.rand(gemm, gemm), torch.rand(gemm, gemm)
    mm = rate(lambda: torch.mm(a, b), 1, seconds) * 2 * gemm**3
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    x = torch.rand(8, 16, 128, 128)
    conv_rate = rate(lambda: conv(x), 1, seconds) * 2 * 9 * 16 * 16 * 128 * 128 * 8
    return {"sgemm_gflops": round(mm / 1e9, 2), "conv3x3_16ch_gflops": round(conv_rate / 1e9, 2)}


def best_batches(nets: dict[str, nn.Module], size, seconds: float) -> dict[str, int]:
    best = {}
    for name, net in nets.items():
        rates = {}
        for batch in BATCHES:
            moving, fixed = _inputs(batch, size)
            rates[batch] = rate(forward_fn(net, moving, fixed), batch, seconds / 2)
        best[name] = max(rates, key=rates.get)
    return best


def interleaved(nets: dict[str, nn.Module], size, batches: dict[str, int], rounds: int, seconds: float) -> dict:
    per_round: dict[str, list[float]] = {name: [] for name in nets}
    inputs = {name: _inputs(batches[name], size) for name in nets}
    for _ in range(rounds):
        for name, net in nets.items():
            moving, fixed = inputs[name]
            per_round[name].append(rate(forward_fn(net, moving, fixed), batches[name], seconds))
    return per_round


def label_warp_rate(size, batch: int, seconds: float) -> float:
    labels = torch.randint(0, LABEL_CLASSES + 1, (batch, 1, *size))
    labels[labels == LABEL_CLASSES] = 255
    flow = torch.randn(batch, 2, *size)
    return rate(lambda: warp_labels(labels, flow, LABEL_CLASSES, ignore_index=255), batch, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="128x128,256x256")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--gemm", type=int, default=1024)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.models.split(",")
    nets = {name: build(name).eval() for name in names}
    peak = machine_peak(args.gemm, args.seconds)
    report = {"benchmark": "registration_peers", "threads": args.threads, "load_average": os.getloadavg(),
              "torch": torch.__version__, "peak": peak,
              "parameters": {n: sum(p.numel() for p in getattr(net, "net", net).parameters()) for n, net in nets.items()},
              "sizes": {}}
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.split("x"))
        print(f"  {text}: batch sweep ...", file=sys.stderr, flush=True)
        best = best_batches(nets, size, args.seconds)
        entry = {"best_batch": best, "flops_per_pair_g": {}, "batch1": {}, "best": {}, "ratio_fmirnet_over": {},
                 "ratios": {}}
        for name, net in nets.items():
            entry["flops_per_pair_g"][name] = round(flops_per_pair(net, size) / 1e9, 3)
        for label, batches in (("batch1", {n: 1 for n in nets}), ("best", best)):
            print(f"  {text}: {label}, {args.rounds} interleaved rounds ...", file=sys.stderr, flush=True)
            rounds = interleaved(nets, size, batches, args.rounds, args.seconds)
            entry[label] = {n: round(statistics.median(r), 2) for n, r in rounds.items()}
            if "fmirnet" in rounds:
                for n, r in rounds.items():
                    if n != "fmirnet":
                        ratios = [a / b for a, b in zip(rounds["fmirnet"], r)]
                        entry["ratio_fmirnet_over"].setdefault(n, {})[label] = round(statistics.median(ratios), 2)
            for ours in (n for n in rounds if not n.startswith("monai-")):
                for peer in (n for n in rounds if n.startswith("monai-")):
                    ratios = [a / b for a, b in zip(rounds[ours], rounds[peer])]
                    entry["ratios"].setdefault(f"{ours} / {peer}", {})[label] = round(statistics.median(ratios), 2)
        entry["fraction_of_conv_peak_at_best"] = {
            n: round(entry["flops_per_pair_g"][n] * entry["best"][n] / peak["conv3x3_16ch_gflops"], 3) for n in nets}
        entry["label_warp_pairs_per_s"] = {"batch1": round(label_warp_rate(size, 1, args.seconds), 1),
                                           "batch8": round(label_warp_rate(size, 8, args.seconds), 1)}
        report["sizes"][text] = entry
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
