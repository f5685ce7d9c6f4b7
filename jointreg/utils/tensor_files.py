"""Write safetensors files that are byte-identical for identical tensors, readable by others.

``safetensors.torch.save_file`` has two habits that hurt users sharing models: the JSON header
lists its keys in hash-map order, so two runs with the same weights give files with different
hashes, and the file is created with mode 0600 whatever the umask, so a colleague cannot load a
shared model. :func:`save_tensors` serialises with ``safetensors.torch.save`` (bytes), rewrites
the header with sorted keys (tensor offsets are unchanged: they are relative to the data block),
and writes the bytes atomically with the permissions of any other file (``0666 & ~umask``).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from jointreg.utils.atomic import atomic_path

if TYPE_CHECKING:
    import torch

_HEADER_ALIGNMENT = 8  # the format pads its header with spaces to a multiple of 8 bytes


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its header's keys (and metadata keys) in sorted order."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % _HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text + blob[8 + length :]


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, "torch.Tensor"],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (contiguous CPU tensors) to ``path`` deterministically and atomically."""
    from safetensors.torch import save

    blob = canonical_safetensors(save(dict(tensors), metadata=None if metadata is None else dict(metadata)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
