"""jointreg.data.slices.spec: SliceSpec and intensity normalisation."""

import json
import logging

import numpy as np
import pytest

from jointreg.data.slices import SliceSpec, normalize_intensities
from jointreg.errors import ConfigError


def test_slice_spec_json_roundtrip_and_validation():
    spec = SliceSpec(axis=1, size=(96, 64), normalization="mr", mr_percentiles=(1, 99))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["size"] == [96, 64]
    back = SliceSpec.from_dict(data)
    assert back == spec and back.size == (96, 64) and back.mr_percentiles == (1.0, 99.0)
    for bad in ({"size": (7, 64)}, {"size": (64,)}, {"normalization": "zscore"}, {"axis": 3},
                {"ct_window": (240, -160)}, {"mr_percentiles": (50, 50)}):
        with pytest.raises(ConfigError):
            SliceSpec(**bad)
    with pytest.raises(ConfigError, match="unknown slice setting"):
        SliceSpec.from_dict({"sizes": [64, 64]})


@pytest.mark.parametrize(
    "modality, method",
    [("CT", "ct"), ("ct", "ct"), ("MRI", "mr"), ("T2-SPIR", "mr"), ("T1w", "mr"), ("cine", "mr"),
     ("bSSFP", "mr"), ("echo", "mr"), ("US", "mr"), ("ultrasound", "mr"), ("noNorm", "none")],
)
def test_auto_normalization_from_channel_name(modality, method):
    assert SliceSpec().resolve_normalization(modality) == method


def test_unknown_modality_warns_and_uses_percentiles(caplog):
    with caplog.at_level(logging.WARNING, logger="jointreg.data.slices"):
        assert SliceSpec().resolve_normalization("PET") == "mr"
    assert "unknown modality 'PET'" in caplog.text
    assert SliceSpec(normalization="ct").resolve_normalization("MRI") == "ct"


def test_ct_window_maps_exactly():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], np.float32)
    out = normalize_intensities(hu, "ct", SliceSpec())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_mr_percentiles_are_taken_over_the_whole_volume():
    # Slice 0 holds 0..100, slice 1 holds 100..200: per-volume percentiles (0, 50) are 0 and
    # 100, so slice 1 saturates; per-slice percentiles would stretch each slice to [0, 1].
    volume = np.stack([np.linspace(0, 100, 101), np.linspace(100, 200, 101)], axis=-1).astype(np.float32)
    out = normalize_intensities(volume, "mr", SliceSpec(mr_percentiles=(0, 50)))
    np.testing.assert_allclose(out[:, 0], np.linspace(0, 1, 101), atol=1e-6)
    np.testing.assert_array_equal(out[:, 1], 1.0)
    assert normalize_intensities(np.full((3, 3), 7.0), "mr", SliceSpec()).max() == 0.0
    raw = np.array([[-5.0, 3.5]])
    np.testing.assert_array_equal(normalize_intensities(raw, "none", SliceSpec()), raw.astype(np.float32))
