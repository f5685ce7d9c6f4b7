"""benchmarks/pseudolabel_slices.py: per-slice profile, intensity gate and the ignore edit, on
masks whose answers are counted by hand."""

from __future__ import annotations

import numpy as np


def test_profile_counts_the_slices_the_stop_leaves_out(benchmark_script):
    bench = benchmark_script("pseudolabel_slices")
    truth = np.zeros((4, 4, 6), bool)
    truth[:2, :2, 0:5] = True        # 4 pixels on slices 0-4
    pseudo = np.zeros_like(truth)
    pseudo[:2, :, 2:4] = True        # 8 pixels on slices 2-3: twice the organ, stopped early
    profile = bench.slice_profile(pseudo, truth)
    assert profile["extent"] == [2, 3]
    assert profile["missed_below"] == 2 and profile["missed_above"] == 1
    assert profile["slices"][2] == (4, 8, 4) and profile["slices"][5] == (0, 0, 0)
    assert bench.slice_profile(np.zeros_like(truth), truth)["extent"] is None


def test_gate_drops_the_pixels_outside_the_annotated_intensities(benchmark_script):
    bench = benchmark_script("pseudolabel_slices")
    image = np.full((12, 12, 2), 0.5, np.float32)
    image[:, 6:, :] = 0.9            # the right half is not liver-like
    reference = np.zeros(image.shape, bool)
    reference[2:10, 0:6, 0] = True   # annotated: only intensities 0.5
    pseudo = np.zeros(image.shape, bool)
    pseudo[2:10, 2:10, 1] = True     # spills 4 columns into the bright half
    kept = bench.gated(pseudo, image, reference, 1.0)
    assert kept[..., 1].sum() == 8 * 4 and not kept[:, 6:].any()
    assert bench.gated(pseudo, image, reference, 0) is pseudo


def test_uncertain_ignores_the_dilated_footprint_next_to_each_end_only(benchmark_script):
    bench = benchmark_script("pseudolabel_slices")
    label = np.zeros((9, 9, 10), np.uint8)
    label[4, 4, 3:6] = 1             # the structure on slices 3-5
    out = bench.uncertain_beyond_stop(label, 1, 9, radius=1, slices=2)
    disk = (out[..., 1] == 9)
    assert disk.sum() == 5 and disk[4, 4] and disk[3, 4] and not disk[3, 3]   # a radius-1 disk
    assert (out[..., 1] == 9).sum() == (out[..., 2] == 9).sum() == (out[..., 6] == 9).sum() == (out[..., 7] == 9).sum() == 5
    assert not (out[..., 0] == 9).any() and not (out[..., 8] == 9).any()     # beyond the 2 slices: as before
    assert (out[..., 3:6] == label[..., 3:6]).all()
