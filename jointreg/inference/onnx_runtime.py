"""ONNX Runtime as the inference backend of a registration network (``--backend onnxruntime``).

``jointreg register`` and ``jointreg pseudolabel`` run the registration network with PyTorch by
default. With ``--backend onnxruntime`` the same network (same weights) is exported in memory to
ONNX, once per input size, and run by ONNX Runtime's CPU execution provider, which on this
project's CPUs registers 1.5–2.4× more pairs per second than PyTorch for the same graph
(results/registration_speed.md, "ONNX Runtime backend"). The outputs equal PyTorch's to float
rounding: every session is checked against the PyTorch network on a random pair before use and
refused if they differ by more than the export tolerance (1e-4 relative).

:class:`OnnxRuntimeRegistration` is a drop-in module: called like the network,
``net(moving, fixed)`` returns a :class:`~jointreg.nets.registration.RegistrationOutput` with the
warped image and the displacement (no per-scale extras or penalties, which inference does not
use). It has no parameters, so code that asks a module for its device gets the CPU. Instance
optimisation (``--refine``) still runs in PyTorch on the fields it returns.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'jointreg[export]'``); without them the
backend is refused with that line before any work starts.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

BACKENDS = ("torch", "onnxruntime")


def check_backend(backend: str, device: str | None = None) -> None:
    """Refuse an unknown backend, ONNX Runtime on a GPU, or ONNX Runtime without its packages.

    Raises:
        ConfigError: with the valid choices or the pip command.
    """
    from jointreg.errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "onnxruntime":
        if device is not None and device not in ("auto", "cpu"):
            raise ConfigError(f"--backend onnxruntime runs on the CPU; drop --device {device} or use --backend torch")
        from jointreg.export.onnx import require_onnx

        require_onnx()


class OnnxRuntimeRegistration(nn.Module):
    """A registration network run by ONNX Runtime (see the module docstring).

    Args:
        net: the PyTorch registration network (moved to the CPU, float32, eval mode).
        threads: ONNX Runtime's intra-op threads (default: torch's current thread count, which
            the commands set from ``--threads``).
    """

    def __init__(self, net: nn.Module, *, threads: int | None = None):
        from jointreg.export.onnx import require_onnx

        super().__init__()
        self._ort = require_onnx()
        # Kept in a list so that the network's weights are not this module's parameters: the
        # wrapper reports the CPU as its device and nothing in it trains.
        self._net = [net.to("cpu").float().eval()]
        self.spatial_dims = int(getattr(net, "spatial_dims", 2))
        self.threads = int(threads or torch.get_num_threads())
        self._sessions: dict[tuple[int, ...], object] = {}

    @property
    def net(self) -> nn.Module:
        """The PyTorch network this backend runs."""
        return self._net[0]

    def session(self, size: tuple[int, ...], channels: int = 1, batch: int = 1):
        """The checked ONNX Runtime session for ``batch`` inputs of spatial ``size`` (built on
        first use). One session serves every batch size, unless the traced graph fixed it (a
        network that builds a sampling grid of the traced batch): then one per batch size."""
        key = (channels, *size)
        if key not in self._sessions:
            self._sessions[key] = self._build(tuple(size), channels, None)
        if self._sessions[key] is not None:
            return self._sessions[key]
        fixed_key = (channels, *size, "batch", batch)
        if fixed_key not in self._sessions:
            self._sessions[fixed_key] = self._build(tuple(size), channels, batch)
        return self._sessions[fixed_key]

    def _build(self, size: tuple[int, ...], channels: int, batch: int | None):
        """A checked session; with ``batch`` ``None`` one with a dynamic batch axis, or ``None``
        when the graph does not take another batch size than the traced one."""
        with torch.inference_mode(False):  # the exporter traces; it may be called in inference mode
            return self._export_and_check(size, channels, batch)

    def _export_and_check(self, size: tuple[int, ...], channels: int, batch: int | None):
        from jointreg.errors import JointregError
        from jointreg.export.common import TOLERANCE, RegistrationTensors, relative_difference

        module = RegistrationTensors(self.net).eval()
        generator = torch.Generator().manual_seed(0)
        traced = 2 if batch is None else batch
        example = tuple(torch.rand((traced, channels, *size), generator=generator) for _ in range(2))
        buffer = io.BytesIO()
        names = ("moving", "fixed", "warped", "flow")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the graph is fixed-size by design
            torch.onnx.export(
                module, example, buffer, dynamo=False, opset_version=17, input_names=list(names[:2]),
                output_names=list(names[2:]), do_constant_folding=True,
                dynamic_axes=None if batch is not None else {name: {0: "batch"} for name in names},
            )
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's
        session = self._ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        checks = [example]
        if batch is None:  # the dynamic axis must really be dynamic
            checks.append(tuple(torch.rand((3, channels, *size), generator=generator) for _ in range(2)))
        for inputs in checks:
            try:
                produced = session.run(None, _feed(session, *inputs))
            except self._ort.capi.onnxruntime_pybind11_state.Fail:
                if inputs is example or batch is not None:
                    raise
                return None
            with torch.no_grad():
                expected = module(*inputs)
            difference = relative_difference(produced, expected)
            if difference > TOLERANCE:
                raise JointregError(f"--backend onnxruntime: ONNX Runtime differs from PyTorch by {difference:.3g} "
                                    f"for this network at {'x'.join(map(str, size))}; use --backend torch")
        return session

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor):
        from jointreg.nets.registration import RegistrationOutput

        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape")
        session = self.session(tuple(moving.shape[2:]), int(moving.shape[1]), int(moving.shape[0]))
        warped, flow = session.run(None, _feed(session, moving, fixed))
        return RegistrationOutput(torch.from_numpy(warped).to(moving.device), torch.from_numpy(flow).to(moving.device))


def _feed(session, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
    """The session's inputs (an input the graph does not use, e.g. the identity's fixed image,
    is pruned from it by the exporter)."""
    arrays = {"moving": moving, "fixed": fixed}
    return {i.name: arrays[i.name].detach().to("cpu", torch.float32).contiguous().numpy() for i in session.get_inputs()}


def registration_backend(net: nn.Module, backend: str) -> nn.Module:
    """``net`` for inference with ``backend``: PyTorch in its fastest layout
    (:func:`jointreg.inference.run_models.for_inference`), or the ONNX Runtime wrapper."""
    from jointreg.inference.run_models import for_inference

    if backend == "onnxruntime" and any(True for _ in net.parameters()):  # nothing to gain for the identity
        return OnnxRuntimeRegistration(net)
    return for_inference(net)
