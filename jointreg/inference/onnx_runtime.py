"""ONNX Runtime as the inference backend of the networks (``--backend onnxruntime``).

``jointreg register``, ``pseudolabel`` and ``segment`` run their networks with PyTorch by
default. With ``--backend onnxruntime`` the same network (same weights) is exported in memory to
ONNX, once per input size, and run by ONNX Runtime's CPU execution provider, which on this
project's CPUs registers 1.5–2.4× more pairs per second than PyTorch for the same graph
(results/registration_speed.md, "ONNX Runtime backend"). The outputs equal PyTorch's to float
rounding: every session is checked against the PyTorch network on random inputs before use (at
two batch sizes) and refused if they differ by more than the export tolerance (1e-4 relative).

Both wrappers are drop-in modules without parameters (code that asks a module for its device
gets the CPU):

* :class:`OnnxRuntimeRegistration`: ``net(moving, fixed)`` returns a
  :class:`~jointreg.nets.registration.RegistrationOutput` with the warped image and the
  displacement (no per-scale extras or penalties, which inference does not use). Instance
  optimisation (``--refine``) still runs in PyTorch on the fields it returns.
* :class:`OnnxRuntimeSegmentor`: ``net(image)`` returns the logits.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'jointreg[export]'``); without them the
backend is refused with that line before any work starts.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

BACKENDS = ("torch", "torch-bfloat16", "onnxruntime")


def check_backend(backend: str, device: str | None = None) -> None:
    """Refuse an unknown backend, ONNX Runtime on a GPU or without its packages, or bfloat16
    where it is not computed in hardware (:func:`jointreg.inference.autocast.check_bfloat16`).

    Raises:
        ConfigError: with the valid choices, the pip command or the backend to use instead.
    """
    from jointreg.errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "onnxruntime":
        if device is not None and device not in ("auto", "cpu"):
            raise ConfigError(f"--backend onnxruntime runs on the CPU; drop --device {device} or use --backend torch")
        from jointreg.export.onnx import require_onnx

        require_onnx()
    if backend == "torch-bfloat16":
        from jointreg.inference.autocast import check_bfloat16

        check_bfloat16(device)


class _OnnxRuntimeModule(nn.Module):
    """A network run by ONNX Runtime: in-memory export per input shape, checked sessions.

    Args:
        net: the PyTorch network (moved to the CPU, float32, eval mode).
        threads: ONNX Runtime's intra-op threads (default: torch's current thread count, which
            the commands set from ``--threads``).
    """

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def __init__(self, net: nn.Module, *, threads: int | None = None):
        from jointreg.export.onnx import require_onnx

        super().__init__()
        self._ort = require_onnx()
        # Kept in a list so that the network's weights are not this module's parameters: the
        # wrapper reports the CPU as its device and nothing in it trains.
        self._net = [net.to("cpu").float().eval()]
        self.spatial_dims = int(getattr(net, "spatial_dims", 2))
        self.threads = int(threads or torch.get_num_threads())
        self._sessions: dict[tuple, object] = {}

    @property
    def net(self) -> nn.Module:
        """The PyTorch network this backend runs."""
        return self._net[0]

    def tensor_module(self) -> nn.Module:
        """The network as a module of plain tensors (what is exported)."""
        raise NotImplementedError

    def session(self, shape: tuple[int, ...]):
        """The checked session for inputs of ``shape`` ``(B, C, *S)`` (built on first use). One
        session serves every batch size, unless the traced graph fixed it (a network that builds
        a sampling grid of the traced batch): then one per batch size."""
        key = tuple(shape[1:])
        if key not in self._sessions:
            self._sessions[key] = self._build(key, None)
        if self._sessions[key] is not None:
            return self._sessions[key]
        fixed_key = (*key, "batch", shape[0])
        if fixed_key not in self._sessions:
            self._sessions[fixed_key] = self._build(key, int(shape[0]))
        return self._sessions[fixed_key]

    def _build(self, shape: tuple[int, ...], batch: int | None):
        """A checked session; with ``batch`` ``None`` one with a dynamic batch axis, or ``None``
        when the graph does not take another batch size than the traced one."""
        with torch.inference_mode(False):  # the exporter traces; it may be called in inference mode
            return self._export_and_check(shape, batch)

    def _export_and_check(self, shape: tuple[int, ...], batch: int | None):
        from jointreg.errors import JointregError
        from jointreg.export.common import TOLERANCE, relative_difference

        module = self.tensor_module().eval()
        generator = torch.Generator().manual_seed(0)

        def example(b: int) -> tuple[torch.Tensor, ...]:
            return tuple(torch.rand((b, *shape), generator=generator) for _ in self.inputs)

        traced = example(2 if batch is None else batch)
        buffer = io.BytesIO()
        names = (*self.inputs, *self.outputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the graph is fixed-size by design
            torch.onnx.export(
                module, traced, buffer, dynamo=False, opset_version=17, input_names=list(self.inputs),
                output_names=list(self.outputs), do_constant_folding=True,
                dynamic_axes=None if batch is not None else {name: {0: "batch"} for name in names},
            )
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's own log lines (unused initialisers, the batch probe's failure) are not
        # the user's business: its errors come back as exceptions.
        options.log_severity_level = 4
        session = self._ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        checks = [traced] if batch is not None else [traced, example(3)]  # the dynamic axis must be dynamic
        for inputs in checks:
            try:
                produced = self._run(session, inputs)
            except self._ort.capi.onnxruntime_pybind11_state.Fail:
                if inputs is traced:
                    raise
                return None
            with torch.no_grad():
                expected = module(*inputs)
            difference = relative_difference(produced, expected if isinstance(expected, tuple) else (expected,))
            if difference > TOLERANCE:
                size = "x".join(map(str, shape[1:]))
                raise JointregError(f"--backend onnxruntime: ONNX Runtime differs from PyTorch by {difference:.3g} "
                                    f"for this network at {size}; use --backend torch")
        return session

    def _run(self, session, tensors: tuple[torch.Tensor, ...]) -> list:
        # An input the graph does not use (e.g. the identity's fixed image) is pruned by the exporter.
        arrays = dict(zip(self.inputs, tensors))
        feed = {i.name: arrays[i.name].detach().to("cpu", torch.float32).contiguous().numpy() for i in session.get_inputs()}
        return session.run(None, feed)

    def run(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The outputs for ``tensors`` (one per input name, same shape), on their device."""
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"the inputs must have the same shape; got {sorted(shapes)}")
        produced = self._run(self.session(tensors[0].shape), tensors)
        return [torch.from_numpy(a).to(tensors[0].device) for a in produced]


class OnnxRuntimeRegistration(_OnnxRuntimeModule):
    """A registration network run by ONNX Runtime (see the module docstring)."""

    inputs = ("moving", "fixed")
    outputs = ("warped", "flow")

    def tensor_module(self) -> nn.Module:
        from jointreg.export.common import RegistrationTensors

        return RegistrationTensors(self.net)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor):
        from jointreg.nets.registration import RegistrationOutput

        warped, flow = self.run(moving, fixed)
        return RegistrationOutput(warped, flow)


class OnnxRuntimeSegmentor(_OnnxRuntimeModule):
    """A segmentor run by ONNX Runtime: ``net(image)`` → logits (see the module docstring)."""

    inputs = ("image",)
    outputs = ("logits",)

    def tensor_module(self) -> nn.Module:
        from jointreg.export.common import SegmentorLogits

        return SegmentorLogits(self.net)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.run(image)[0]


def registration_backend(net: nn.Module, backend: str) -> nn.Module:
    """``net`` for inference with ``backend``: PyTorch in its fastest layout
    (:func:`jointreg.inference.run_models.for_inference`), under bfloat16 autocast, or the ONNX
    Runtime wrapper."""
    from jointreg.inference.run_models import for_inference

    if not any(True for _ in net.parameters()):  # nothing to gain for the identity
        return net
    if backend == "onnxruntime":
        return OnnxRuntimeRegistration(net)
    if backend == "torch-bfloat16":
        from jointreg.inference.autocast import Bfloat16Inference

        return Bfloat16Inference(net)
    return for_inference(net)


def segmentor_backend(net: nn.Module, backend: str) -> nn.Module:
    """``net`` for inference with ``backend``: as it is, under bfloat16 autocast, or the ONNX
    Runtime wrapper."""
    if backend == "torch-bfloat16":
        from jointreg.inference.autocast import Bfloat16Inference

        return Bfloat16Inference(net)
    return OnnxRuntimeSegmentor(net) if backend == "onnxruntime" else net
