"""What the TorchScript and ONNX exports share: wrappers, export size, signature, metadata, checks.

The self-describing model folders (``config.json`` + ``model.safetensors``, loaded with
:func:`jointreg.load_model`) stay the native format. These exports are for deployment where
jointreg is not installed: plain ``torch.jit.load`` or ``onnxruntime`` runs them.

Each network is wrapped so that it takes and returns plain tensors:

* segmentor: ``image`` ``(B, 1, H, W)`` normalised slice → ``logits`` ``(B, K, H, W)``;
* registration: ``moving``, ``fixed`` ``(B, 1, H, W)`` → ``warped`` ``(B, 1, H, W)`` and
  ``flow`` ``(B, 2, H, W)`` (pixels, channel ``d`` along spatial axis ``d``, pull warping
  ``warped(p) = moving(p + flow(p))``).

Tracing specialises the graph to the traced spatial size (padding amounts, the identity grid), so
every export is FIXED-SIZE in H and W: by default the model's training size
(``preprocessing["size"]``), or the size given. The batch size may vary. Next to each file a
``{name}.json`` records the input and output names and shapes, labels, preprocessing settings
and modality, and the ``pipeline`` they resolve to (:mod:`jointreg.export.preprocessing`: reading,
orientation, slicing axis, normalisation formula, resize and padding rules, and for a segmentor
how logits become labels), so that a deployment can prepare inputs exactly like jointreg does;
``examples/deploy_onnx.py`` does it with numpy + onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jointreg.errors import ConfigError, InputError
from jointreg.export.preprocessing import PIPELINE, pipeline_of
from jointreg.version import __version__

ONNX_OPSET = 17
# Largest difference accepted between an exported network and the PyTorch model, relative to the
# output's magnitude (at least 1): export must not change the computation.
TOLERANCE = 1e-4
# Input voxels (channels x H x W) an export may be traced at; see export_size.
MAX_EXPORT_VOXELS = 2048 * 2048
FIXED_SIZE_NOTE = (
    "The graph was traced at this spatial size and only accepts it (padding and sampling grids are "
    "fixed at export); the batch size may vary. Re-export with --size H W for another size."
)


class SegmentorLogits(nn.Module):
    """``image (B, 1, H, W) → logits (B, K, H, W)`` (eval mode)."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.segmentor(image)


class RegistrationTensors(nn.Module):
    """``(moving, fixed) → (warped, flow)`` as plain tensors (eval mode)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(moving, fixed).as_tuple()


@dataclass(frozen=True)
class Signature:
    """Tensor names and shapes of an exported network."""

    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]


def as_tuple(value: Any) -> tuple[torch.Tensor, ...]:
    """A module's output(s) as a tuple of tensors."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def relative_difference(produced: Sequence[Any], expected: Sequence[Any]) -> float:
    """``max |a - b| / max(1, max |b|)`` over paired outputs (tensors or arrays)."""
    worst = 0.0
    for a, b in zip(produced, expected):
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
        b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else b
        worst = max(worst, float(abs(a - b).max()) / max(1.0, float(abs(b).max())))
    return worst


def export_size(loaded: Any, size: Sequence[int] | None) -> tuple[int, int]:
    """The ``(H, W)`` to trace at: ``size`` or the model's training size.

    The input voxels (channels × H × W) are bounded by :data:`MAX_EXPORT_VOXELS`: tracing runs
    the network on an example of that size and keeps its activations, so an absurd size would
    exhaust memory long before the export finished.

    Raises:
        ConfigError: a size that is not two integers >= 8, or too many voxels.
        InputError: no size given, or a recorded size that is unusable (naming config.json).
    """
    recorded = size is None
    if recorded:
        size = loaded.preprocessing.get("size")
        if not size:
            raise InputError(loaded.path, "records no training size in config.json; pass --size H W")
    try:
        values = tuple(int(v) for v in size)
        channels = int(loaded.config.get("arguments", {}).get("in_channels", 1))
    except (TypeError, ValueError):
        values, channels = (), 1
    problem = None
    if len(values) != 2 or min(values) < 8:
        problem = f"export size must be two integers >= 8 (H W), got {size!r:.60}"
    elif channels * values[0] * values[1] > MAX_EXPORT_VOXELS:
        problem = (
            f"export size {values[0]} x {values[1]} x {channels} channel(s) is "
            f"{channels * values[0] * values[1]:,} input voxels, more than {MAX_EXPORT_VOXELS:,} "
            f"(2048 x 2048): the graph is traced on an example of this size, whose activations "
            f"would exhaust memory"
        )
    if problem is None:
        return values  # type: ignore[return-value]
    if recorded:
        config = Path(loaded.path) / "config.json" if loaded.path is not None else None
        raise InputError(config, f"preprocessing.size: {problem}")
    raise ConfigError(problem)


def wrap(loaded: Any, size: tuple[int, int], batch: int = 1) -> tuple[nn.Module, Signature, tuple[torch.Tensor, ...]]:
    """The tensor-only wrapper (eval mode, CPU, float32), its signature and example inputs.

    Args:
        loaded: a :class:`~jointreg.export.model_folder.LoadedModel`.
        size: ``(H, W)``.
        batch: batch size of the example inputs.
    """
    if loaded.spatial_dims != 2:
        raise InputError(loaded.path, f"only 2D networks can be exported; this one has spatial_dims={loaded.spatial_dims}")
    model = loaded.model.to("cpu").float().eval()
    channels = int(loaded.config.get("arguments", {}).get("in_channels", 1))
    generator = torch.Generator().manual_seed(0)
    shape = (batch, channels, *size)
    if loaded.kind == "segmentor":
        module: nn.Module = SegmentorLogits(model).eval()
        inputs: tuple[torch.Tensor, ...] = (torch.rand(shape, generator=generator),)
        with torch.no_grad():
            logits = module(*inputs)
        signature = Signature({"image": shape}, {"logits": tuple(logits.shape)})
    else:
        module = RegistrationTensors(model).eval()
        inputs = (torch.rand(shape, generator=generator), torch.rand(shape, generator=generator))
        with torch.no_grad():
            warped, flow = module(*inputs)
        signature = Signature({"moving": shape, "fixed": shape}, {"warped": tuple(warped.shape), "flow": tuple(flow.shape)})
    return module, signature, inputs


def metadata(loaded: Any, fmt: str, file_name: str, signature: Signature, **more: Any) -> dict[str, Any]:
    """The ``{name}.json`` written next to an exported file."""

    def tensors(shapes: dict[str, tuple[int, ...]]) -> list[dict[str, Any]]:
        return [{"name": n, "shape": ["batch", *s[1:]], "dtype": "float32"} for n, s in shapes.items()]

    data = {
        "format": fmt,
        "file": file_name,
        "kind": loaded.kind,
        "architecture": loaded.architecture,
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
        "fixed_size": True,
        "note": FIXED_SIZE_NOTE,
        "labels": loaded.labels,
        "modality": loaded.modality,
        "preprocessing": loaded.preprocessing,
        PIPELINE: pipeline_of(loaded.config, loaded.path),
        "source_model": str(Path(loaded.path).resolve()) if loaded.path is not None else None,
        "jointreg_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    if loaded.kind == "registration":
        data["flow"] = "pixels; channel d = displacement along spatial axis d; warped(p) = moving(p + flow(p))"
    else:
        data["logits"] = "softmax over channel 1 gives class probabilities; argmax = label id (see labels)"
    data.update(more)
    return data
