"""The protocol of benchmarks/phantom_difficulty.py (label copying between nearby slices)."""

from __future__ import annotations

import numpy as np
import pytest


def test_copy_label_protocol_known_answer(benchmark_script):
    bench = benchmark_script("phantom_difficulty")
    mask = np.zeros((4, 4, 10), bool)
    mask[0:2, 0:2, 2] = True            # area 4
    mask[0:2, 0:3, 3] = True            # area 6: the moving slice
    mask[0:1, 0:3, 4] = True            # area 3, inside the moving mask
    pairs = bench.copy_label_pairs(mask, window=2)
    # Fixed: slices with the structure (2, 4) and every slice within ±2 of 3 (1, 5).
    assert [(o, round(d, 4), has) for o, d, has in pairs] == [
        (-2, 0.0, False), (-1, 0.8, True), (1, round(2 * 3 / 9, 4), True), (2, 0.0, False),
    ]
    summary = bench.summarise([pairs])
    assert summary["pairs"] == 4
    assert summary["dice_mean"] == pytest.approx((0.8 + 2 / 3) / 4, abs=1e-4)
    assert summary["dice_mean_structure_slices"] == pytest.approx((0.8 + 2 / 3) / 2, abs=1e-4)
    assert bench.copy_label_pairs(np.zeros((3, 3, 3), bool)) == []


def test_ed_copy_protocol_known_answer(benchmark_script):
    bench = benchmark_script("phantom_difficulty")
    label = np.zeros((4, 4, 3), np.int16)
    label[0:2, 0:2, 0] = 1              # area 4: ED
    label[0:2, 0:1, 1] = 1              # area 2, inside the ED mask
    label[2:4, 2:4, 2] = 1              # area 4, disjoint
    pairs = bench.ed_copy_pairs(label, 1, ed=0)
    assert [(o, round(d, 4), has) for o, d, has in pairs] == [(1, round(2 * 2 / 6, 4), True), (2, 0.0, True)]
