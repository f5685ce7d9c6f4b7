"""TorchScript export: ``torch.jit.trace`` of the tensor-only wrapper, loadable with plain torch.

>>> module = torch.jit.load("RUN/export/torchscript/segmentor.pt")      # doctest: +SKIP
>>> logits = module(image)            # (B, 1, H, W) at the exported size  # doctest: +SKIP

See :mod:`jointreg.export.common` for the wrappers, the fixed-size caveat and the metadata.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from jointreg.errors import JointregError
from jointreg.export.common import TOLERANCE, as_tuple, export_size, metadata, relative_difference, wrap
from jointreg.utils.atomic import atomic_path, write_json


def export_torchscript(loaded: Any, path: str | PathLike[str], *, size: Sequence[int] | None = None) -> Path:
    """Trace a loaded model folder and save it as TorchScript, with ``{name}.json`` beside it.

    Args:
        loaded: a :class:`~jointreg.export.model_folder.LoadedModel` (segmentor or registration).
        path: the ``.pt`` file to write (atomically).
        size: ``(H, W)`` to trace at (default: the training size).

    Returns:
        ``path``.

    Raises:
        JointregError: the traced module does not reproduce the eager one at another batch size.
    """
    path = Path(path)
    hw = export_size(loaded, size)
    module, signature, inputs = wrap(loaded, hw)
    with warnings.catch_warnings():
        # Shape-dependent Python branches are expected: the graph is fixed-size by design. torch
        # 2.x marks TorchScript deprecated in favour of torch.export; it is still what plain
        # `torch.jit.load` deployments read.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, inputs, check_trace=False)
    _, _, check_inputs = wrap(loaded, hw, batch=2)
    with torch.no_grad():
        difference = relative_difference(as_tuple(traced(*check_inputs)), as_tuple(module(*check_inputs)))
    if difference > TOLERANCE:
        raise JointregError(f"{loaded.path}: the traced {loaded.kind} differs from the model by {difference:.3g}; not exported")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, buffer)
    with atomic_path(path) as tmp:
        # Written by Python, not by torch's C++ writer: a folder that cannot be written is then an
        # OSError naming the file (one line on the command line), not a RuntimeError.
        tmp.write_bytes(buffer.getvalue())
    write_json(path.with_suffix(".json"), metadata(
        loaded, "torchscript", path.name, signature, load="torch.jit.load(file); outputs = module(*inputs)",
    ))
    return path
