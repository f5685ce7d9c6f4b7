"""benchmarks/demons_propagation.py: demons behind the registration network's interface, on a
shift whose answer is known (SimpleITK is an optional dependency: skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest


def _blob(centre_row: float, size: int = 32) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.exp(-((rows - centre_row) ** 2 + (cols - 16.0) ** 2) / (2 * 4.0**2)).astype(np.float32)


def test_demons_network_recovers_a_known_shift_and_warps_the_label_onto_the_fixed_slice(benchmark_script):
    pytest.importorskip("SimpleITK")
    torch = pytest.importorskip("torch")
    from jointreg.spatial.warp import warp

    bench = benchmark_script("demons_propagation")
    net = bench.demons_network(bench.Demons(size=32, iterations=200))
    moving, fixed = _blob(18.0), _blob(16.0)   # the fixed blob lies 2 rows above the moving one
    flow = net(torch.from_numpy(moving)[None, None], torch.from_numpy(fixed)[None, None]).flow
    assert flow.shape == (1, 2, 32, 32)
    # warped(x) = moving(x + u(x)): at the fixed blob's centre the field reads 2 rows further down
    assert flow[0, 0, 14:19, 14:19].mean().item() == pytest.approx(2.0, abs=0.5)
    assert abs(flow[0, 1, 14:19, 14:19].mean().item()) < 0.3
    label = torch.from_numpy((moving > 0.5).astype(np.float32))[None, None]
    warped = warp(label, flow, mode="nearest")[0, 0].numpy() > 0.5
    truth = fixed > 0.5
    dice = 2 * (warped & truth).sum() / (warped.sum() + truth.sum())
    assert dice > 0.9 and 2 * ((label[0, 0].numpy() > 0.5) & truth).sum() / (2 * truth.sum()) < dice
