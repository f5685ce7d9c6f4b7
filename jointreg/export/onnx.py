"""ONNX export (opset 17, TorchScript-based exporter), runnable with onnxruntime.

>>> session = onnxruntime.InferenceSession("RUN/export/onnx/registration.onnx")   # doctest: +SKIP
>>> warped, flow = session.run(None, {"moving": m, "fixed": f})                    # doctest: +SKIP

Input and output names are those of :class:`~jointreg.export.common.Signature`; the batch
axis is dynamic, H and W are fixed at the exported size. The exported file is checked with
onnxruntime against the PyTorch model before it is kept. Both ``onnx`` (the exporter writes
through it) and ``onnxruntime`` come with the ``export`` extra: ``pip install 'jointreg[export]'``;
without them the export is refused with that line before anything is written.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from jointreg.errors import ConfigError, JointregError
from jointreg.export.common import ONNX_OPSET, TOLERANCE, as_tuple, export_size, metadata, relative_difference, wrap
from jointreg.utils.atomic import atomic_path, write_json

MISSING_PACKAGE = "ONNX export needs the {} package: pip install 'jointreg[export]'"


def require_onnx() -> Any:
    """Import ``onnx`` and ``onnxruntime`` (the ``export`` extra) and return ``onnxruntime``.

    Both are optional dependencies; torch's exporter reports a missing ``onnx`` only halfway
    through the export, as a long traceback, so they are checked first.

    Raises:
        ConfigError: either is not importable (the message names it and the pip command).
    """
    try:
        import onnx  # noqa: F401  (torch's exporter imports it; checked here for a clear message)
    except ImportError:
        raise ConfigError(MISSING_PACKAGE.format("onnx")) from None
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(MISSING_PACKAGE.format("onnxruntime")) from None
    return onnxruntime


def _check_with_onnxruntime(file: Path, loaded: Any, size: tuple[int, int], names: list[str]) -> float:
    """Largest relative difference between onnxruntime and PyTorch at batch 2."""
    onnxruntime = require_onnx()
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
        ConfigError: ``onnx`` or ``onnxruntime`` is not installed (``pip install 'jointreg[export]'``).
        JointregError: onnxruntime disagrees with PyTorch.
    """
    require_onnx()
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
        except ImportError as exc:  # another module the exporter imports late
            raise ConfigError(f"{MISSING_PACKAGE.format('onnx')} ({exc})") from None
        finally:
            loaded.model.eval()  # the exporter restores the wrapper's mode, which may be training
        difference = _check_with_onnxruntime(tmp, loaded, hw, input_names)
        if difference > TOLERANCE:
            raise JointregError(f"{loaded.path}: onnxruntime differs from PyTorch by {difference:.3g}; not exported")
    write_json(path.with_suffix(".json"), metadata(
        loaded, "onnx", path.name, signature, opset=opset,
        load="onnxruntime.InferenceSession(file).run(None, {input name: array})",
        checked_with_onnxruntime=True,
    ))
    return path
