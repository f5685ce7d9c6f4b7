"""Export a run's networks as TorchScript or ONNX files that run without jointreg.

Examples:
  jointreg export runs/chaos_t2_1slice --format onnx
  jointreg export runs/chaos_t2_1slice --format torchscript --size 256 256 --out deploy/

RUN is a run folder (exports RUN/export/registration and RUN/export/segmentor) or one model
folder. Files: {kind}.pt or {kind}.onnx (opset 17) plus {kind}.json describing the input and
output tensors, labels and preprocessing, in --out (default RUN/export/torchscript or
RUN/export/onnx). The graphs are traced at a FIXED H × W (default: the model's training size,
or --size H W); the batch size may vary. Segmentor: image (B, 1, H, W) -> logits (B, K, H, W).
Registration: moving, fixed (B, 1, H, W) -> warped (B, 1, H, W), flow (B, 2, H, W) in pixels.
The native format stays the model folder (jointreg.load_model). Details: docs/inference.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "export trained networks as TorchScript or ONNX (run without jointreg)"
ORDER = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder, or one model folder")
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx"), dest="fmt", help="file format")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: RUN/export/FORMAT)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size to trace at (default: training size)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    from jointreg.export.standalone import export_run

    files = export_run(args.run, args.fmt, out=args.out, size=args.size, overwrite=args.overwrite)
    for file in files:
        print(f"wrote {file} (+ {file.with_suffix('.json').name})")
    return 0
