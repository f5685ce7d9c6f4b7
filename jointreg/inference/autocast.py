"""bfloat16 inference (``--backend torch-bfloat16``): the same network under :func:`torch.autocast`.

On CPUs with bfloat16 matrix units (Intel AMX, AVX512-BF16) oneDNN runs the convolutions in
bfloat16 in hardware; with the weights in channels-last layout FMIRNet then registers about
1.6-1.8x the pairs per second of float32 PyTorch at 128² (results/registration_speed.md,
"bfloat16 inference"). Elsewhere bfloat16 is emulated and slower than float32: the backend is
refused there (:func:`check_bfloat16`), so that nobody pays for it by accident.

What stays float32: the inputs, every output (cast back before it leaves the wrapper), the label
warp (done by the callers from the float32 displacement) and the instance optimisation
(``--refine``, in float32 outside the wrapper). Inside, the convolutions and the network's own
image warp run in bfloat16, so the displacement carries bfloat16's 8-bit mantissa (about 0.4 %
of its value); the propagated-label Dice it gives is measured against float32 on trained
networks in results/registration_speed.md.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

import torch
from torch import nn


def check_bfloat16(device: str | None) -> None:
    """Refuse the bfloat16 backend where bfloat16 is not computed in hardware.

    Raises:
        ConfigError: on a CPU without bfloat16 matrix units, or a GPU without bfloat16.
    """
    from jointreg.errors import ConfigError
    from jointreg.utils.device import bfloat16_in_hardware, resolve_device

    resolved = resolve_device(device or "auto")
    if not bfloat16_in_hardware(resolved):
        where = "this CPU has no bfloat16 matrix units (AMX, AVX512-BF16)" if resolved.type == "cpu" else \
            f"{resolved} does not compute bfloat16 in hardware"
        raise ConfigError(f"--backend torch-bfloat16: {where}, so bfloat16 would be slower than float32 here; "
                          "use --backend torch")


def _as_float32(value):
    """``value`` (a tensor, a tuple/list/dict of them, or a dataclass holding them) with every
    floating tensor in float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_as_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _as_float32(getattr(value, f.name)) for f in fields(value) if f.init})
    return value


class Bfloat16Inference(nn.Module):
    """``net`` run under bfloat16 autocast, with float32 inputs and outputs.

    A drop-in module: the network stays a submodule (its parameters, device and attributes such
    as ``spatial_dims`` are the wrapped network's), and 2D weights take the channels-last layout
    that oneDNN's bfloat16 convolutions run fastest in.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        self.spatial_dims = int(getattr(net, "spatial_dims", 2))
        if self.spatial_dims == 2:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, *inputs: torch.Tensor):
        device_type = inputs[0].device.type if inputs else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = self.net(*inputs)
        return _as_float32(out)
