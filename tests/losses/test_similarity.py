"""Known answers for the image similarities and their losses."""

import pytest
import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from jointreg.errors import ConfigError
from jointreg.losses.similarity import (
    SIMILARITY_LOSSES,
    create_similarity_loss,
    lncc,
    mse,
    mutual_information,
    ncc,
    nmi,
    ssim,
)

SIZES = {2: (24, 20), 3: (14, 12, 13)}


def _textured(dims, batch=2, seed=0, dtype=torch.float32):
    """Smooth random texture in [0, 1] (noise blurred by a 3-voxel box), no flat windows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, *SIZES[dims], generator=g, dtype=dtype)
    pool = torch.nn.functional.avg_pool2d if dims == 2 else torch.nn.functional.avg_pool3d
    x = pool(x, 3, stride=1, padding=1, count_include_pad=False)
    return (x - x.amin()) / (x.amax() - x.amin())


def test_mse_known_value_and_mask():
    x = torch.zeros(2, 1, 3, 4)
    y = torch.full((2, 1, 3, 4), 2.0)
    y[1] = 1.0
    assert torch.allclose(mse(x, y, reduction="none"), torch.tensor([4.0, 1.0]))
    assert torch.allclose(mse(x, y), torch.tensor(2.5))
    mask = torch.zeros(2, 1, 3, 4)
    mask[:, :, 0] = 1
    y[:, :, 1:] = 100.0  # outside the mask: no effect
    assert torch.allclose(mse(x, y, mask=mask, reduction="none"), torch.tensor([4.0, 1.0]))


@pytest.mark.parametrize("dims", [2, 3])
def test_ncc_perfect_for_affine_intensity_change(dims):
    x = _textured(dims)
    assert torch.allclose(ncc(x, x, reduction="none"), torch.ones(2), atol=1e-5)
    assert torch.allclose(ncc(x, 3.5 * x - 2.0), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(ncc(x, -x), torch.tensor(-1.0), atol=1e-5)
    assert ncc(x, _textured(dims, seed=1)).abs() < 0.3


@pytest.mark.parametrize("dims", [2, 3])
def test_lncc_perfect_for_affine_intensity_change_and_lower_for_other_images(dims):
    x = _textured(dims)
    assert torch.allclose(lncc(x, x, window=5), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(lncc(x, -3.0 * x, window=5), torch.tensor(1.0), atol=1e-5)
    # An offset is invisible only to windows inside the image: the border windows also see the
    # zero padding, which the offset does not shift (MONAI's and VoxelMorph's convention).
    interior = torch.zeros_like(x)
    interior[(slice(None), slice(None), *(slice(2, n - 2) for n in x.shape[2:]))] = 1
    assert torch.allclose(lncc(x, 2.0 * x + 0.5, window=5, mask=interior), torch.tensor(1.0), atol=1e-5)
    assert lncc(x, 2.0 * x + 0.5, window=5) < 0.999
    assert lncc(x, _textured(dims, seed=1), window=5, mask=interior) < 0.3


def _organs(dims, seed, shift=0):
    """Structured images: two ellipsoid 'organs' (intensity 0.4 and 0.8, smooth ramp + noise
    inside) on an exactly flat zero background, moved by ``shift`` voxels along axis 0."""
    g = torch.Generator().manual_seed(seed)
    size = SIZES[dims]
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in size], indexing="ij"))
    centre = torch.tensor([n / 2 for n in size], dtype=torch.float64).view(-1, *([1] * dims))
    centre[0] += shift
    radii = torch.tensor([n / 3 for n in size], dtype=torch.float64).view(-1, *([1] * dims))
    body = (((grid - centre) / radii) ** 2).sum(0) <= 1
    organ = (((grid - centre) / (radii / 2)) ** 2).sum(0) <= 1
    image = 0.4 * body + 0.4 * organ + 0.02 * grid[-1] * body
    image = image + 0.05 * torch.randn(size, generator=g, dtype=torch.float64) * body
    return image.view(1, 1, *size).float()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("images", ["random", "structured"])
@pytest.mark.parametrize("window", [3, 5, 9])
def test_lncc_equals_monai_local_normalized_cross_correlation(dims, images, window):
    if images == "random":
        g = torch.Generator().manual_seed(dims * 10 + window)
        x = torch.rand(2, 1, *SIZES[dims], generator=g)
        y = 0.6 * x + 0.4 * torch.rand(x.shape, generator=g)
    else:
        x = torch.cat([_organs(dims, 0), _organs(dims, 1)])
        y = torch.cat([_organs(dims, 2, shift=2), 1.5 - _organs(dims, 3, shift=-1)])
    monai = LocalNormalizedCrossCorrelationLoss(spatial_dims=dims, kernel_size=window, kernel_type="rectangular",
                                                reduction="none")
    expected = -monai(x, y).flatten(1).mean(1)
    ours = lncc(x, y, window=window, reduction="none")
    assert 0.05 < float(expected.min()) and float(expected.max()) < 0.99  # neither trivial nor perfect
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0), (ours, expected)
    loss = create_similarity_loss("lncc", window=window)(x, y)
    assert float(loss) == pytest.approx(1 + float(monai(x, y).mean()), abs=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kernel", ["gaussian", "box"])
def test_ssim_is_one_for_identical_and_decreases_with_noise(dims, kernel):
    x = _textured(dims)
    window = 7
    assert torch.allclose(ssim(x, x, window=window, kernel=kernel), torch.tensor(1.0), atol=1e-5)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(x.shape, generator=g)
    values = [float(ssim(x + s * noise, x, window=window, kernel=kernel)) for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]
    assert values[0] < 1.0


def test_ssim_known_value_for_constant_images():
    # Constant images: σ terms vanish, SSIM = (2 a b + C1) / (a² + b² + C1).
    a, b, c1 = 0.2, 0.6, 0.01**2
    x = torch.full((1, 1, 12, 12), a)
    y = torch.full((1, 1, 12, 12), b)
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    assert torch.allclose(ssim(x, y, window=5), torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_mutual_information_higher_for_dependent_images(dims):
    x = _textured(dims)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(9))
    assert mutual_information(x, x) > 3 * mutual_information(x, noise)
    assert mutual_information(x, 1 - x) > 3 * mutual_information(x, noise)  # any invertible mapping
    assert torch.allclose(nmi(x, x, sigma_ratio=0.0), torch.tensor(1.0), atol=1e-5)  # hard bins
    assert torch.allclose(nmi(x, 1 - x, sigma_ratio=0.0), torch.tensor(1.0), atol=1e-5)
    assert 0 <= float(nmi(x, noise, sigma_ratio=0.0)) < 0.3
    assert float(nmi(x, noise)) < 0.5 * float(nmi(x, x))  # soft (Parzen) NMI


def test_gradcheck_similarities_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.rand(1, 1, 7, 6, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda a: ncc(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a: lncc(a, y, window=3), (x,))
    assert torch.autograd.gradcheck(lambda a: ssim(a, y, window=5), (x,))
    assert torch.autograd.gradcheck(lambda a: mutual_information(a, y, bins=8, value_range=(0.0, 1.0)), (x,))


def test_device_dtype_follow_input_and_reduction():
    x = _textured(2, dtype=torch.float64)
    y = _textured(2, seed=1, dtype=torch.float64)
    for fn in (mse, ncc, lncc, ssim, mutual_information):
        per_pair = fn(x, y, reduction="none")
        assert per_pair.shape == (2,) and per_pair.dtype == torch.float64
        assert torch.allclose(fn(x, y, reduction="sum"), per_pair.sum())


def test_registry_builds_losses_that_are_zero_or_minimal_at_a_match():
    x = _textured(2)
    y = _textured(2, seed=1)
    for name in ("mse", "ncc", "ssim"):
        loss = create_similarity_loss(name)
        assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-5)
        assert float(loss(x, y)) > 0.02
    assert float(create_similarity_loss("lncc", window=5)(x, x)) == pytest.approx(0.0, abs=1e-5)
    mi = create_similarity_loss("mi")
    assert float(mi(x, x)) < float(mi(x, y))
    assert set(SIMILARITY_LOSSES) == {"mse", "ncc", "lncc", "ssim", "mi"}


def test_registry_errors_list_valid_names_and_options():
    with pytest.raises(ConfigError, match="lncc.*mi|mse.*ncc"):
        create_similarity_loss("cc")
    with pytest.raises(ConfigError, match="valid: window"):
        create_similarity_loss("lncc", size=9)


def test_window_larger_than_image_is_a_clear_error():
    with pytest.raises(ValueError, match="smaller window"):
        ssim(torch.rand(1, 1, 8, 30), torch.rand(1, 1, 8, 30), window=11)
