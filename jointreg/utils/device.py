"""Devices, threads and seeds: chosen from configuration and availability, never hard-coded."""

from __future__ import annotations

import functools
import os
import random
from typing import Any

from jointreg.errors import ConfigError


def resolve_device(name: Any = "auto"):
    """A ``torch.device`` from ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda[:N]``.

    Under torchrun (``WORLD_SIZE`` > 1), ``auto`` and ``cuda`` without an index mean
    ``cuda:LOCAL_RANK``: one GPU per process.

    Raises:
        ConfigError: an unknown name, CUDA asked for where none is available, or a torchrun
            ``LOCAL_RANK`` beyond this machine's GPUs.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    text = str(name or "auto").lower()
    if text == "auto":
        return _per_process(torch.device("cuda")) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not valid (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device type {device.type!r} is not supported (use auto, cpu, cuda)")
    return _per_process(device) if device.type == "cuda" else device


def _per_process(device):
    """``cuda`` → ``cuda:LOCAL_RANK`` in a torchrun job of several processes."""
    import torch

    env = os.environ
    world = env.get("WORLD_SIZE", "1")
    if device.index is not None or not world.isdigit() or int(world) < 2:
        return device
    local = env.get("LOCAL_RANK", "0")
    if not local.isdigit():
        raise ConfigError(f"torchrun environment: LOCAL_RANK={local!r} must be an integer")
    if int(local) >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", int(local))


def module_device(module: Any):
    """The device of a module's first parameter or buffer; CPU for a module with neither. (The
    identity registration has no parameters; its warp's cached grid, once built, is a buffer.)"""
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (``None`` leaves torch's default)."""
    import torch

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global RNG and torch (CPU and CUDA)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (Intel AMX or AVX512-BF16,
    read from the kernel's CPU flags; ``False`` where they cannot be read) and oneDNN can use them."""
    import torch

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bfloat16_in_hardware(device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CPU with bfloat16 matrix units
    (:func:`native_bfloat16`), a CUDA GPU with native bfloat16 (not emulated, as on V100 or T4)."""
    import torch

    if device.type == "cpu":
        return native_bfloat16()
    if device.type == "cuda":
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return False
