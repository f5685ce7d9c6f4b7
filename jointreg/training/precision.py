"""Automatic mixed precision for the training steps (the recipe's ``precision``).

``float32`` (default): no autocast. ``bfloat16``: forward passes and losses under
:func:`torch.autocast` in bfloat16 (same exponent range as float32: no loss scaling needed).
``float16``: autocast in float16 with a :class:`torch.amp.GradScaler`, which scales the loss
so that small gradients do not underflow, skips the steps whose gradients overflow and adapts
the scale (its state is part of the resume checkpoint). Weights, optimiser moments, validation,
export and inference stay float32. Worth it on CUDA GPUs with tensor cores; on most CPUs
float32 is as fast or faster (benchmarks/distributed_train.py measures both where it runs).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def autocast(precision: MixedPrecision | None):
    return contextlib.nullcontext() if precision is None else precision.autocast()


def backward_step(precision: MixedPrecision | None, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    if precision is None:
        loss.backward()
        optimizer.step()
    else:
        precision.step(loss, optimizer)
