"""Known-answer tests for the spatial transformer (jointreg.spatial.warp)."""

import pytest
import torch
import torch.nn.functional as F

from jointreg.spatial import Warp, flow_to_grid_sample_grid, identity_grid, warp, warp_labels, warp_onehot

SIZES = {2: (5, 7), 3: (4, 6, 5)}  # non-square on purpose
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _image(dims, batch=2, channels=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *SIZES[dims], generator=g, dtype=dtype)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_zero_field_returns_input_bit_identical(dims, mode, padding_mode):
    image = _image(dims)
    flow = torch.zeros(2, dims, *SIZES[dims])
    out = warp(image, flow, mode=mode, padding_mode=padding_mode)
    assert torch.equal(out, image)
    assert torch.equal(Warp(mode, padding_mode)(image, flow), image)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("shift", [1.0, -1.0])
def test_one_voxel_shift_moves_exactly_that_axis(dims, mode, shift):
    image = _image(dims)
    for axis in range(dims):
        flow = torch.zeros(2, dims, *SIZES[dims])
        flow[:, axis] = shift
        out = warp(image, flow, mode=mode)
        n = SIZES[dims][axis]
        ax = 2 + axis
        if shift > 0:  # out[i] = image[i + 1], the last voxel repeats the border
            expected = torch.cat([image.narrow(ax, 1, n - 1), image.narrow(ax, n - 1, 1)], dim=ax)
        else:  # out[i] = image[i - 1], the first voxel repeats the border
            expected = torch.cat([image.narrow(ax, 0, 1), image.narrow(ax, 0, n - 1)], dim=ax)
        assert torch.equal(out, expected), f"axis {axis}"


def test_shift_with_zero_padding_reads_zeros_outside():
    image = torch.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    flow = torch.zeros(1, 2, 3, 4)
    flow[:, 1] = -1.0  # out[:, j] = image[:, j - 1]
    out = warp(image, flow, padding_mode="zeros")
    expected = torch.tensor([[0.0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]])
    assert torch.equal(out[0, 0], expected)


def test_half_voxel_shift_averages_neighbours_and_fades_at_zero_border():
    image = torch.tensor([[0.0, 2.0, 6.0]]).reshape(1, 1, 1, 3)
    flow = torch.zeros(1, 2, 1, 3)
    flow[:, 1] = 0.5
    assert torch.allclose(warp(image, flow)[0, 0, 0], torch.tensor([1.0, 4.0, 6.0]))
    assert torch.allclose(warp(image, flow, padding_mode="zeros")[0, 0, 0], torch.tensor([1.0, 4.0, 3.0]))


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_grid_sample_with_documented_axis_mapping(dims):
    image = _image(dims, batch=1, channels=2)
    g = torch.Generator().manual_seed(1)
    flow = torch.randn(1, dims, *SIZES[dims], generator=g) * 1.5
    grid = flow_to_grid_sample_grid(flow)
    for padding_mode in ["border", "zeros"]:
        ours = warp(image, flow, padding_mode=padding_mode)
        ref = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
        assert torch.allclose(ours, ref, atol=1e-5)
    ours = warp(image, flow, mode="nearest")
    ref = F.grid_sample(image, grid, mode="nearest", padding_mode="border", align_corners=True)
    assert (ours != ref).float().mean() < 0.02  # identical except at rounding ties


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck_float64_image_and_flow(dims):
    size = (3, 4) if dims == 2 else (2, 3, 3)
    g = torch.Generator().manual_seed(2)
    image = torch.randn(1, 2, *size, dtype=torch.float64, generator=g, requires_grad=True)
    # Fractional parts well inside (0, 1): the field is differentiable there (kinks at integers).
    frac = 0.2 + 0.6 * torch.rand(1, dims, *size, dtype=torch.float64, generator=g)
    whole = torch.randint(-1, 1, (1, dims, *size), generator=g).double()
    flow = (whole + frac).requires_grad_(True)
    for padding_mode in ["border", "zeros"]:
        assert torch.autograd.gradcheck(lambda i, f: warp(i, f, padding_mode=padding_mode), (image, flow))


def test_gradcheck_warp_onehot():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(1, 3, 3, 4, dtype=torch.float64, generator=g), 1).requires_grad_(True)
    flow = (0.25 + 0.5 * torch.rand(1, 2, 3, 4, dtype=torch.float64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(warp_onehot, (probs, flow))


def test_warp_onehot_keeps_a_partition_of_unity():
    g = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(2, 4, 6, 5, generator=g), 1)
    flow = torch.randn(2, 2, 6, 5, generator=g) * 3
    assert torch.allclose(warp_onehot(probs, flow).sum(1), torch.ones(2, 6, 5), atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device(dims, device, dtype):
    image = _image(dims, batch=1, channels=3, dtype=dtype).to(device)  # batch 1 broadcasts
    flow = torch.randn(4, dims, *SIZES[dims], dtype=dtype, device=device)
    out = warp(image, flow)
    assert out.shape == (4, 3, *SIZES[dims]) and out.dtype == dtype and out.device.type == device
    labels = torch.randint(0, 3, (4, 1, *SIZES[dims]), dtype=torch.int16, device=device)
    for mode in ["linear", "nearest"]:
        warped = warp_labels(labels, flow, 3, mode=mode)
        assert warped.shape == labels.shape and warped.dtype == torch.int16 and warped.device.type == device


def test_warp_module_caches_a_non_persistent_grid_and_rebuilds_it():
    module = Warp()
    flow = torch.zeros(1, 2, 5, 7)
    module(torch.ones(1, 1, 5, 7), flow)
    assert module.grid.shape == (1, 2, 5, 7)
    assert "grid" not in module.state_dict()
    cached = module.grid
    module(torch.ones(1, 1, 5, 7), flow)
    assert module.grid is cached
    module(torch.ones(1, 1, 4, 3, 2), torch.zeros(1, 3, 4, 3, 2))
    assert module.grid.shape == (1, 3, 4, 3, 2)
    module(torch.ones(1, 1, 4, 3, 2, dtype=torch.float64), torch.zeros(1, 3, 4, 3, 2, dtype=torch.float64))
    assert module.grid.dtype == torch.float64
    assert torch.equal(module.grid, identity_grid((4, 3, 2), dtype=torch.float64))


def test_grid_cached_under_inference_mode_still_works_with_autograd():
    module = Warp()
    with torch.inference_mode():
        module(torch.ones(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    flow = torch.zeros(1, 2, 4, 4, requires_grad=True)
    module(torch.arange(16.0).reshape(1, 1, 4, 4), flow + 0.5).sum().backward()
    assert flow.grad is not None and torch.isfinite(flow.grad).all()


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="spatial shape"):
        warp(torch.ones(1, 1, 4, 5), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="D = len"):
        warp(torch.ones(1, 1, 4, 5), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="batch"):
        warp(torch.ones(2, 1, 4, 5), torch.zeros(3, 2, 4, 5))
    with pytest.raises(TypeError, match="nearest"):
        warp(torch.ones(1, 1, 4, 5, dtype=torch.int64), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="mode"):
        warp(torch.ones(1, 1, 4, 5), torch.zeros(1, 2, 4, 5), mode="cubic")


# --- labels ---------------------------------------------------------------------------------


def test_thin_structure_survives_linear_label_warping_under_half_voxel_shift():
    labels = torch.zeros(1, 1, 9, 6, dtype=torch.int64)
    labels[0, 0, 4, :] = 2  # a one-voxel-thin line across axis 1
    flow = torch.zeros(1, 2, 9, 6)
    flow[:, 0] = 0.5
    out = warp_labels(labels, flow, num_classes=3)
    # Rows 3 and 4 now read halfway between the line and background: ties go to the label.
    assert torch.equal(out[0, 0, 3], torch.full((6,), 2)) and torch.equal(out[0, 0, 4], torch.full((6,), 2))
    assert int((out == 2).sum()) == 12 and set(out.unique().tolist()) == {0, 2}


def test_linear_label_warp_of_integer_shift_is_exact_and_ignore_propagates():
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (2, 1, 6, 7), generator=g)
    labels[:, :, :2, :3] = 9  # ignore region
    flow = torch.zeros(2, 2, 6, 7)
    flow[:, 1] = -2.0
    for mode in ["linear", "nearest"]:
        out = warp_labels(labels, flow, num_classes=3, mode=mode, ignore_index=9)
        assert torch.equal(out[..., 2:], labels[..., :-2])
        assert torch.equal(out[..., :2, 2:5], torch.full((2, 1, 2, 3), 9))


def test_label_warp_rejects_unknown_labels():
    labels = torch.tensor([[[[0, 1], [5, 0]]]])
    with pytest.raises(ValueError, match=r"\[5\]"):
        warp_labels(labels, torch.zeros(1, 2, 2, 2), num_classes=2)


def test_nan_displacement_gives_nan_not_a_crash():
    image = torch.rand(1, 1, 6, 7)
    flow = torch.zeros(1, 2, 6, 7)
    flow[0, :, 2, 3] = float("nan")
    flow[0, 0, 4, 4] = float("inf")
    out = warp(image, flow)
    assert torch.isnan(out[0, 0, 2, 3])
    assert torch.isnan(out[0, 0, 4, 4])
    finite = torch.ones(6, 7, dtype=torch.bool)
    finite[2, 3] = finite[4, 4] = False
    assert torch.equal(out[0, 0][finite], image[0, 0][finite])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_field_is_sampled_at_float32_coordinates(dtype):
    # A ramp image: warped(p) = p + shift, the shift as the half dtype holds it. Coordinates in
    # the half dtype would round p + shift: bfloat16 holds only multiples of 0.5 between 64 and
    # 128, float16 multiples of 1/16.
    ramp = torch.arange(128.0).reshape(1, 1, 128, 1).expand(1, 1, 128, 3).contiguous()
    flow = torch.zeros(1, 2, 128, 3, dtype=dtype)
    flow[:, 0] = 0.3
    shift = float(flow[0, 0, 0, 0])  # 0.30078125 in bfloat16, 0.2999… in float16
    expected = torch.clamp(torch.arange(128.0) + shift, max=127.0)
    for out in (warp(ramp, flow), Warp()(ramp, flow)):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out[0, 0, :, 1], expected, atol=1e-4, rtol=0)
    module = Warp()
    module(ramp, flow)
    assert module.grid.dtype == torch.float32


def test_the_grid_sample_grid_of_a_half_precision_field_is_float32():
    flow = torch.zeros(1, 2, 300, 3, dtype=torch.bfloat16)
    grid = flow_to_grid_sample_grid(flow)
    assert grid.dtype == torch.float32
    torch.testing.assert_close(grid, flow_to_grid_sample_grid(flow.float()))
