"""ONNX export (opset 17, TorchScript-based exporter), runnable with onnxruntime.

>>> session = onnxruntime.InferenceSession("RUN/export/onnx/registration.onnx")   # doctest: +SKIP
>>> warped, flow = session.run(None, {"moving": m, "fixed": f})                    # doctest: +SKIP

Input and output names are those of :class:`~jointreg.export.common.Signature`; the batch
axis is dynamic, H and W are fixed at the exported size. When onnxruntime is installed the
exported file is checked against the PyTorch model before it is kept.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from jointreg.errors import JointregError
from jointreg.export.common import ONNX_OPSET, TOLERANCE, as_tuple, export_size, metadata, relative_difference, wrap
from jointreg.utils.atomic import atomic_path, write_json

log = logging.getLogger(__name__)


def _check_with_onnxruntime(file: Path, loaded: Any, size: tuple[int, int], names: list[str]) -> float | None:
    """Largest relative difference between onnxruntime and PyTorch at batch 2 (``None``: no onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        log.info("onnxruntime is not installed: %s is not checked", file)
        return None
    module, _, inputs = wrap(loaded, size, batch=2)
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    produced = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    with torch.no_grad():
        expected = as_tuple(module(*inputs))
    return relative_difference(produced, expected)


def export_onnx(
    loaded: Any, path: str | PathLike[str], *, size: Sequence[int] | None = None, opset: int = ONNX_OPSET
) -> Path:
    """Export a loaded model folder to ONNX, with ``{name}.json`` beside it.

    Args:
        loaded: a :class:`~jointreg.export.model_folder.LoadedModel`.
        path: the ``.onnx`` file to write (atomically).
        size: ``(H, W)`` to export at (default: the training size).
        opset: ONNX opset version.

    Returns:
        ``path``.

    Raises:
        JointregError: the ``onnx`` package is missing, or onnxruntime disagrees with PyTorch.
    """
    path = Path(path)
    hw = export_size(loaded, size)
    module, signature, inputs = wrap(loaded, hw)
    input_names, output_names = list(signature.inputs), list(signature.outputs)
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings: the graph is fixed-size by design
                torch.onnx.export(
                    module, inputs, str(tmp), dynamo=False, opset_version=opset, input_names=input_names,
                    output_names=output_names, dynamic_axes=dynamic, do_constant_folding=True,
                )
        except ImportError as exc:
            raise JointregError(f"ONNX export needs the 'onnx' package ({exc}); install it with: pip install onnx") from None
        finally:
            loaded.model.eval()  # the exporter restores the wrapper's mode, which may be training
        difference = _check_with_onnxruntime(tmp, loaded, hw, input_names)
        if difference is not None and difference > TOLERANCE:
            raise JointregError(f"{loaded.path}: onnxruntime differs from PyTorch by {difference:.3g}; not exported")
    write_json(path.with_suffix(".json"), metadata(
        loaded, "onnx", path.name, signature, opset=opset,
        load="onnxruntime.InferenceSession(file).run(None, {input name: array})",
        checked_with_onnxruntime=difference is not None,
    ))
    return path
