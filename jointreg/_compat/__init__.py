"""Work-arounds for third-party packages, each applied once and only where needed."""

from jointreg._compat.torchvision import ensure_torchvision, import_smp

__all__ = ["ensure_torchvision", "import_smp"]
