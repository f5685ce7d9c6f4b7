"""jointreg: few-label segmentation by joint registration and segmentation.

Importing this package is cheap: torch and friends load only when a feature needs them.
"""

from jointreg.version import __version__

__all__ = ["__version__", "load_model"]


def load_model(path, *, device="cpu", kind=None):
    """Load a jointreg model folder (``config.json`` + ``model.safetensors``).

    Args:
        path: a model folder, e.g. ``RUN/export/segmentor``.
        device: ``"cpu"``, ``"cuda"``, a ``torch.device``, or ``"auto"``.
        kind: optionally require ``"registration"`` or ``"segmentor"``.

    Returns:
        :class:`jointreg.export.model_folder.LoadedModel` with ``.model`` in eval mode.
    """
    from jointreg.export.model_folder import load_model_folder
    from jointreg.utils.device import resolve_device

    return load_model_folder(path, device=resolve_device(device), kind=kind)
