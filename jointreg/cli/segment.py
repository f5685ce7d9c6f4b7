"""Segment NIfTI volumes with a trained 2D segmentor, slice by slice along its training axis.

Examples:
  jointreg segment --model runs/chaos/export/segmentor scans/*.nii.gz --out predictions
  jointreg segment --model runs/chaos data/chaos_t2 --out predictions --probabilities

MODEL is a segmentor model folder or a run folder (its export/segmentor). INPUTS are NIfTI files,
folders of them, or dataset folders (the cases of imagesTr/ and imagesTs/, normalised with the
dataset's channel name; other inputs use the model's modality). Each input gives OUT/{case}.nii.gz
with the input's affine and header ({case}_0000.nii.gz is named {case}); --probabilities adds
OUT/probabilities/{case}.nii.gz, float32 (X, Y, Z, K) with class k in volume k. An input whose
orientation differs from the training data is segmented in the training orientation and written
back in its own; a very different spacing is resampled like any input, with a warning.
Existing outputs are never replaced without --overwrite. The job is resumable: the same command
run again (after an interruption, or a failure on one input) keeps the volumes already done and
segments the others; OUT/segmentation.json lists the finished volumes ("complete": false until
the last one). Details: docs/inference.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jointreg.cli._options import add_inference_options

NAME = "segment"
HELP = "segment NIfTI volumes with a trained segmentor (labels keep the input geometry)"
ORDER = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, metavar="MODEL",
                        help="segmentor model folder, or a run folder (uses RUN/export/segmentor)")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="NIfTI files, folders of them, or dataset folders")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder for {case}.nii.gz")
    parser.add_argument("--probabilities", action="store_true", help="also write class probabilities (4D float NIfTI)")
    add_inference_options(parser, batch_unit="slices")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jointreg.inference.segment import segment_inputs

    manifest = segment_inputs(
        args.model, args.inputs, args.out, probabilities=args.probabilities, batch_size=args.batch_size,
        device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
    )
    warned = sum(1 for case in manifest["cases"].values() if case["warnings"])
    done = len(manifest["already_done"])
    print(f"segmented {len(manifest['cases']) - done} volume(s)" + (f", {done} already done," if done else "")
          + f" into {args.out}" + (f" ({warned} with geometry warnings)" if warned else ""))
    return 0
