"""Automatic mixed precision for the training steps (the recipe's ``precision``).

``float32`` (default): no autocast. ``auto``: bfloat16 where the device computes it in
hardware (a CPU with bfloat16 matrix units, a CUDA GPU that supports it), float32 elsewhere
(:func:`resolve_precision`; the run's ``train.log`` names the choice). ``bfloat16``: forward passes and losses under
:func:`torch.autocast` in bfloat16 (same exponent range as float32: no loss scaling needed).
``float16``: autocast in float16 with a :class:`torch.amp.GradScaler`, which scales the loss
so that small gradients do not underflow, skips the steps whose gradients overflow and adapts
the scale (its state is part of the resume checkpoint). Weights, optimiser moments, validation,
export and inference stay float32. Worth it on CUDA GPUs with tensor cores, and on CPUs with
bfloat16 matrix units (Intel AMX, AVX512-BF16: :func:`native_bfloat16`), where oneDNN runs the
convolutions in bfloat16 (``benchmarks/train_steps.py --variants after,bfloat16`` measures it;
results/registration_speed.md). On other CPUs bfloat16 is emulated and slower than float32: a
warning says so. In mixed precision a 2D network trains with its weights in channels-last memory
format (:func:`use_channels_last`): oneDNN's bfloat16 convolutions run fastest on NHWC tensors
(1.05–1.6× over bfloat16 in NCHW on this project's networks, results/registration_speed.md); the
values are the same, only their order in memory differs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from typing import Any

import torch

from jointreg.utils.device import bfloat16_in_hardware, native_bfloat16

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

log = logging.getLogger(__name__)


@functools.cache
def _warn_emulated() -> None:  # once per process, not once per network
    log.warning("precision: bfloat16 on a CPU without bfloat16 matrix units (AMX, AVX512-BF16): it is "
                "emulated and slower than float32 here; precision: float32 is the faster choice")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The recipe's ``precision`` with ``auto`` decided for ``device``: ``bfloat16`` on a CPU
    with bfloat16 matrix units (:func:`native_bfloat16`) or a CUDA GPU that supports bfloat16,
    ``float32`` elsewhere; other values as they are."""
    if precision != "auto":
        return precision
    if device.type == "cpu":
        return "bfloat16" if native_bfloat16() else "float32"
    return "bfloat16" if bfloat16_in_hardware(device) else "float32"


class MixedPrecision:
    """The autocast context and the loss scaling of one network's optimiser.

    Args:
        precision: ``float32``, ``bfloat16`` or ``float16``.
        device: where the network trains (autocast is per device type).
    """

    def __init__(self, precision: str, device: torch.device):
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.device_type = device.type
        self.scaler = None
        if self.dtype is torch.bfloat16 and device.type == "cpu" and not native_bfloat16():
            _warn_emulated()
        if self.dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(device.type)
            # The scaler skips the optimiser step when gradients overflow (by design, mostly in
            # the first steps while it finds its scale); the schedule still advances, which
            # torch reports as a call order mistake. It is not one here.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning)

    def autocast(self):
        """The context for forward pass and loss (nothing for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``backward()`` and the optimiser step, through the loss scaler for float16."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # skipped when a gradient is inf/NaN
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def use_channels_last(net: torch.nn.Module, precision: str) -> bool:
    """Put ``net``'s weights in channels-last memory format when it trains in mixed precision
    and is a 2D network (every convolution weight 4-D); returns whether it did. Float32 training
    keeps NCHW (channels-last measured no faster there), 3D networks keep NCDHW (not measured)."""
    if DTYPES[precision] is None:
        return False
    kernels = [p for p in net.parameters() if p.dim() >= 4]  # convolution weights
    if not kernels or any(p.dim() != 4 for p in kernels):
        return False
    net.to(memory_format=torch.channels_last)
    return True


def autocast(precision: MixedPrecision | None):
    return contextlib.nullcontext() if precision is None else precision.autocast()


def backward_step(precision: MixedPrecision | None, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    if precision is None:
        loss.backward()
        optimizer.step()
    else:
        precision.step(loss, optimizer)
