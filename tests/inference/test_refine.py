import pytest
import torch

from jointreg.inference.refine import Refinement, refine_flow
from jointreg.spatial.warp import warp


def _blob(shift_rows: float, size: int = 32) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    return torch.exp(-((r - 16 - shift_rows) ** 2 + (c - 16) ** 2) / (2 * 4.0**2))[None, None]


def test_refinement_recovers_a_translation_the_network_missed():
    # moving is the fixed blob moved 2 pixels down; warped(p) = moving(p + u) needs u_rows = +2.
    moving, fixed = _blob(2.0), _blob(0.0)
    start = torch.zeros(1, 2, 32, 32)
    refined = refine_flow(moving, fixed, start, Refinement(steps=300, lr=0.1, smoothness=0.01))
    centre = refined[0, :, 12:21, 12:21].mean(dim=(1, 2))
    assert centre[0].item() == pytest.approx(2.0, abs=0.25)
    assert abs(centre[1].item()) < 0.1
    before = (warp(moving, start) - fixed).pow(2).mean()
    after = (warp(moving, refined) - fixed).pow(2).mean()
    assert after < 0.05 * before


def test_pairs_are_refined_independently():
    moving = torch.cat([_blob(2.0), _blob(-2.0)])
    fixed = torch.cat([_blob(0.0), _blob(0.0)])
    both = refine_flow(moving, fixed, torch.zeros(2, 2, 32, 32), Refinement(steps=50, lr=0.1, smoothness=0.01))
    first = refine_flow(moving[:1], fixed[:1], torch.zeros(1, 2, 32, 32), Refinement(steps=50, lr=0.1, smoothness=0.01))
    assert torch.allclose(both[:1], first, atol=1e-5)
    assert both[0, 0, 16, 16] > 0 > both[1, 0, 16, 16]


def test_zero_steps_keep_the_network_field():
    flow = torch.randn(1, 2, 8, 8)
    assert refine_flow(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), flow, Refinement()) is flow


@pytest.mark.parametrize("kwargs", [{"steps": -1}, {"lr": 0.0}, {"smoothness": -1.0}, {"lr": float("nan")}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Refinement(**kwargs)


def _moving_disc_stack(n: int = 7, size: int = 32, step: float = 1.5):
    """Slices of a bright disc whose centre moves ``step`` pixels down per slice; labels = the disc."""
    import numpy as np

    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images, labels = [], []
    for s in range(n):
        inside = (r - 10 - step * s) ** 2 + (c - 16) ** 2 <= 5.0**2
        images.append(np.where(inside, 0.9, 0.1).astype(np.float32))
        labels.append(inside.astype(np.int64))
    return np.stack(images), np.stack(labels)


def test_refined_chain_from_the_identity_follows_a_moving_structure():
    # The identity network copies the annotated disc; refining each adjacent pair moves it with
    # the disc, so the label at the far end of the chain (9 pixels away) still covers it.
    import numpy as np

    from jointreg.inference.propagate import propagate_chain
    from jointreg.nets.registration import create_registration_net

    images, truth = _moving_disc_stack()
    labels = np.full_like(truth, 2)  # ignore everywhere but the annotated slice
    labels[0] = truth[0]
    net = create_registration_net("identity", spatial_dims=2, in_channels=1)
    targets = list(range(1, 7))

    def last_dice(refinement):
        estimate = propagate_chain(net, images, labels, targets, [0], num_classes=2, ignore_index=2, refinement=refinement)
        probs, _ = estimate.probabilities()
        pred = probs.argmax(1)[-1].numpy() == 1
        gt = truth[-1] == 1
        return 2 * (pred & gt).sum() / (pred.sum() + gt.sum())

    copied = last_dice(None)
    refined = last_dice(Refinement(steps=100, lr=0.1, smoothness=0.001))
    assert copied < 0.2  # 9 pixels off a 5-pixel-radius disc: almost no overlap
    assert refined > 0.85


@pytest.mark.parametrize("size", [(16, 32), (12, 20), (8, 16, 12), (8, 16, 4)])
def test_the_optimisation_warp_equals_the_spatial_transformer(size):
    # Same interpolation and border rule as jointreg.spatial.warp.warp, 2D and 3D, power-of-two
    # sizes or not; an integer displacement lands exactly on the pixels it names when every size
    # is a power of two (the normalisation is then exact), to float rounding otherwise.
    from jointreg.inference.refine import _GridSampleWarp

    g = torch.Generator().manual_seed(0)
    moving = torch.rand(2, 1, *size, generator=g)
    flow = torch.randn(2, len(size), *size, generator=g) * 3
    torch.testing.assert_close(_GridSampleWarp(flow)(moving, flow), warp(moving, flow), atol=1e-5, rtol=0)
    shift = torch.zeros(2, len(size), *size)
    shift[:, 0] = 1.0
    exact = all(n & (n - 1) == 0 for n in size)
    torch.testing.assert_close(_GridSampleWarp(shift)(moving, shift), warp(moving, shift), atol=0 if exact else 1e-5, rtol=0)


def test_refinement_gradients_equal_the_spatial_transformer_inside_the_image():
    # Off the image edge (where only the subgradient convention differs), the similarity
    # gradient through grid_sample equals the one through warp().
    from jointreg.inference.refine import _GridSampleWarp

    g = torch.Generator().manual_seed(1)
    moving, fixed = torch.rand(1, 1, 32, 32, generator=g), torch.rand(1, 1, 32, 32, generator=g)
    flow = (torch.rand(1, 2, 32, 32, generator=g) - 0.5) * 4  # non-integer positions
    grads = []
    for fn in (lambda m, u: warp(m, u), _GridSampleWarp(flow)):
        u = flow.clone().requires_grad_(True)
        (fn(moving, u) - fixed).pow(2).sum().backward()
        grads.append(u.grad)
    inside = (torch.arange(32)[:, None] + flow[0, 0]).gt(0.5) & (torch.arange(32)[:, None] + flow[0, 0]).lt(30.5) \
        & (torch.arange(32)[None, :] + flow[0, 1]).gt(0.5) & (torch.arange(32)[None, :] + flow[0, 1]).lt(30.5)
    torch.testing.assert_close(grads[0][0][:, inside], grads[1][0][:, inside], atol=1e-5, rtol=1e-4)


def test_a_larger_smoothness_weight_gives_a_smoother_field():
    # The blob moved 2 px: MSE alone bends the field around the blob's edge; a heavy diffusion
    # weight keeps it close to one translation over the whole grid.
    from jointreg.losses.regularization import diffusion

    moving, fixed = _blob(2.0), _blob(0.0)
    rough = refine_flow(moving, fixed, torch.zeros(1, 2, 32, 32), Refinement(steps=100, smoothness=0.0))
    smooth = refine_flow(moving, fixed, torch.zeros(1, 2, 32, 32), Refinement(steps=100, smoothness=1.0))
    assert diffusion(smooth).item() < 0.2 * diffusion(rough).item()
    assert smooth[0, 0, 16, 16].item() > 0.5  # still moves towards the blob
