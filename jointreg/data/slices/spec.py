"""How volumes become training slices (:class:`SliceSpec`), and intensity normalisation."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from jointreg.errors import ConfigError

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("auto", "ct", "mr", "none")
# Smallest training grid side in pixels.
MIN_SIZE = 8

# Channel-name tokens that select each normalisation under "auto".
_CT_NAMES = {"ct", "cta", "cect", "ncct", "hu"}
_MR_NAMES = {
    "mr", "mri", "t1", "t2", "t1w", "t2w", "t1c", "t1ce", "t1gd", "flair", "pd", "pdw", "dwi",
    "adc", "cine", "bssfp", "ssfp", "spir", "lge", "de", "dixon", "inphase", "outphase", "swi",
    "mra", "t2spir", "t1dual", "zscore", "rescale", "rescaleto01",
}
_US_NAMES = {"us", "echo", "ultrasound", "echocardiography", "tte", "tee"}
_NONE_NAMES = {"nonorm", "none"}


def _modality_tokens(modality: str) -> set[str]:
    lowered = modality.strip().lower()
    tokens = {t for t in re.split(r"[^a-z0-9]+", lowered) if t}
    tokens.add(re.sub(r"[^a-z0-9]+", "", lowered))
    return tokens


@dataclass(frozen=True)
class SliceSpec:
    """How volumes become training slices; saved (``to_dict``) in every model folder.

    Attributes:
        axis: the slicing axis, or ``None`` for each volume's through-plane axis.
        size: training grid ``(H, W)`` in pixels; any integers >= 8.
        normalization: ``"auto"`` (from the dataset's channel name), ``"ct"``, ``"mr"`` or
            ``"none"``.
        ct_window: ``(low, high)`` Hounsfield units mapped to ``[0, 1]`` for CT.
        mr_percentiles: ``(low, high)`` percentiles of each volume mapped to ``[0, 1]`` for MR
            and other modalities without calibrated units.
    """

    axis: int | None = None
    size: tuple[int, int] = (128, 128)
    normalization: str = "auto"
    ct_window: tuple[float, float] = (-160.0, 240.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int) or not 0 <= self.axis <= 2):
            raise ConfigError(f"slice axis must be 0, 1, 2 or null, got {self.axis!r}")
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= MIN_SIZE for v in size):
            raise ConfigError(f"slice size must be two integers >= {MIN_SIZE}, got {self.size!r}")
        object.__setattr__(self, "size", size)
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {self.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
        window = tuple(float(v) for v in self.ct_window)
        if len(window) != 2 or not window[0] < window[1]:
            raise ConfigError(f"ct_window must be (low, high) with low < high, got {self.ct_window!r}")
        object.__setattr__(self, "ct_window", window)
        pct = tuple(float(v) for v in self.mr_percentiles)
        if len(pct) != 2 or not 0.0 <= pct[0] < pct[1] <= 100.0:
            raise ConfigError(f"mr_percentiles must be (low, high) with 0 <= low < high <= 100, got {self.mr_percentiles!r}")
        object.__setattr__(self, "mr_percentiles", pct)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("size", "ct_window", "mr_percentiles"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceSpec:
        """Inverse of :meth:`to_dict` (JSON lists become tuples).

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown slice setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def resolve_normalization(self, modality: str) -> str:
        """The normalisation to apply: ``"ct"``, ``"mr"`` or ``"none"``.

        With ``"auto"``, CT channel names give ``"ct"``; MR names (MR, MRI, T1, T2, cine, bSSFP,
        ...), ultrasound names (echo, US) and unknown names give ``"mr"`` (per-volume
        percentiles, which suit any uncalibrated intensity; unknown names log a warning);
        nnU-Net's ``noNorm`` gives ``"none"``.
        """
        if self.normalization != "auto":
            return self.normalization
        tokens = _modality_tokens(modality)
        if tokens & _NONE_NAMES:
            return "none"
        if tokens & _CT_NAMES:
            return "ct"
        if tokens & (_MR_NAMES | _US_NAMES):
            return "mr"
        logger.warning(
            "unknown modality %r: normalising intensities by per-volume percentiles %s "
            "(set normalization to 'ct', 'mr' or 'none' to choose)", modality, self.mr_percentiles,
        )
        return "mr"


def normalize_intensities(array: np.ndarray, method: str, spec: SliceSpec) -> np.ndarray:
    """Map raw intensities to float32 ``[0, 1]``.

    Args:
        array: a whole volume (any shape); for ``"mr"`` the percentiles are taken over all of
            it, so every slice of a volume shares one mapping.
        method: ``"ct"`` (clip to ``spec.ct_window`` in HU, then scale), ``"mr"`` (clip to the
            volume's ``spec.mr_percentiles``, then scale) or ``"none"`` (unchanged).
        spec: supplies the window and percentiles.

    Returns:
        float32 array of the same shape; a constant volume maps to zeros.
    """
    data = np.asarray(array, dtype=np.float32)
    if method == "none":
        return data.copy()
    if method == "ct":
        low, high = spec.ct_window
    elif method == "mr":
        if data.size == 0:
            return data.copy()
        low, high = (float(v) for v in np.percentile(data, spec.mr_percentiles))
    else:
        raise ConfigError(f"unknown normalization {method!r}; valid: ct, mr, none")
    if not high > low:
        return np.zeros_like(data)
    out = (np.clip(data, low, high) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
