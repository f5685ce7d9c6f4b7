"""Make ``import torchvision`` work when its compiled ops do not match the installed torch.

Where the only torchvision wheel matching the installed torch is a CUDA build and torch is a CPU
build, torchvision's ``_C`` extension fails to load. torchvision tolerates that, but then
registers fake (meta) kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally,
and ``import torchvision`` raises::

    RuntimeError: operator torchvision::nms does not exist

jointreg does not use torchvision's detection ops; it needs torchvision only because
segmentation-models-pytorch (through timm) imports it. So, only when that exact error occurs,
we define the missing operator schemas with :mod:`torch.library` (schemas only, no kernels:
calling these ops still fails loudly) and import again. Where torchvision imports cleanly this
module does nothing.
"""

from __future__ import annotations

import re
import sys
from types import ModuleType

# Schemas as torchvision's C++ extension declares them.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING_OP = re.compile(r"operator torchvision::(\w+) does not exist")

_library = None  # the torch.library.Library holding our definitions, kept alive
patched = False  # True once the work-around has been applied in this process


def _drop_partial_import() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def _define_missing_schemas() -> None:
    global _library
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for op, schema in _SCHEMAS.items():
        if not _op_exists(op):
            _library.define(schema)


def _op_exists(op: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def ensure_torchvision() -> ModuleType:
    """Import torchvision, applying the schema work-around only if the known error occurs.

    Returns:
        The torchvision module.

    Raises:
        RuntimeError: any other import failure, unchanged.
    """
    global patched
    try:
        import torchvision
    except RuntimeError as exc:
        match = _MISSING_OP.search(str(exc))
        if match is None or match.group(1) not in _SCHEMAS:
            raise
        _drop_partial_import()
        _define_missing_schemas()
        patched = True
        import torchvision
    return torchvision


def import_smp() -> ModuleType:
    """Import segmentation_models_pytorch after making sure torchvision imports."""
    ensure_torchvision()
    import segmentation_models_pytorch

    return segmentation_models_pytorch
