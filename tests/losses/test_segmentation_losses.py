"""Known answers for the segmentation losses and their handling of the ignore label."""

import pytest
import torch

from jointreg.losses.segmentation import ce_dice_loss, dice_loss, soft_dice, warped_label_dice_loss
from jointreg.spatial import one_hot

IGNORE = 3


def _labels(seed=0, shape=(2, 1, 6, 5), classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, shape, generator=g)


def test_soft_dice_of_identical_one_hot_is_one_and_known_value():
    target = one_hot(_labels(), 3)
    assert torch.allclose(soft_dice(target, target), torch.tensor(1.0))
    # Prediction covers 2 voxels, target 4, overlap 2: Dice = 2·2 / (2 + 4) = 2/3.
    pred = torch.zeros(1, 1, 2, 4)
    truth = torch.zeros(1, 1, 2, 4)
    pred[0, 0, 0, :2] = 1
    truth[0, 0, 0, :] = 1
    assert float(soft_dice(pred, truth, eps=0.0)) == pytest.approx(2 / 3)
    assert soft_dice(target, target, reduction="none").shape == (2, 3)
    assert soft_dice(target, target, include_background=False, reduction="none").shape == (2, 2)
    assert soft_dice(target, target, batch=True, reduction="none").shape == (3,)


def test_soft_dice_mask_leaves_voxels_out():
    pred = torch.zeros(1, 1, 1, 4)
    truth = torch.zeros(1, 1, 1, 4)
    pred[..., :2] = 1
    truth[..., :3] = 1
    mask = torch.tensor([[[[1.0, 1.0, 0.0, 1.0]]]])  # the miss at voxel 2 is masked out
    assert float(soft_dice(pred, truth, mask=mask, eps=0.0)) == pytest.approx(1.0)


def test_ignore_voxels_do_not_change_any_loss():
    g = torch.Generator().manual_seed(1)
    target = _labels(2)
    target[:, :, :2] = IGNORE
    logits = torch.randn(2, 3, 6, 5, generator=g)
    changed = logits.clone()
    changed[:, :, :2] = torch.randn(2, 3, 2, 5, generator=g) * 10  # predictions under ignore only
    for fn in (
        lambda x: dice_loss(x, target, ignore_index=IGNORE),
        lambda x: ce_dice_loss(x, target, ignore_index=IGNORE),
        lambda x: warped_label_dice_loss(torch.softmax(x, 1), target, ignore_index=IGNORE),
    ):
        assert torch.allclose(fn(logits), fn(changed))


def test_ce_matches_torch_cross_entropy_with_ignore_index():
    g = torch.Generator().manual_seed(2)
    target = _labels(3)
    target[0, 0, 0] = IGNORE
    logits = torch.randn(2, 3, 6, 5, generator=g)
    ours = ce_dice_loss(logits, target, ignore_index=IGNORE, dice_weight=0.0)
    reference = torch.nn.functional.cross_entropy(logits, target[:, 0], ignore_index=IGNORE)
    assert torch.allclose(ours, reference)


def test_only_ignore_voxels_give_zero_loss_and_zero_gradient():
    target = torch.full((2, 1, 4, 4), IGNORE)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = ce_dice_loss(logits, target, ignore_index=IGNORE) + dice_loss(logits, target, ignore_index=IGNORE)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradients_finite_with_empty_classes():
    target = torch.zeros(1, 1, 5, 5, dtype=torch.long)  # classes 1 and 2 absent
    logits = torch.zeros(1, 3, 5, 5, requires_grad=True)
    (dice_loss(logits, target) + ce_dice_loss(logits, target)).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_perfect_prediction_gives_near_zero_losses():
    target = _labels(4)
    logits = one_hot(target, 3) * 40.0
    assert float(dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-4)
    assert float(ce_dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-4)
    assert float(warped_label_dice_loss(one_hot(target, 3), target)) == pytest.approx(0.0, abs=1e-6)
    assert float(warped_label_dice_loss(one_hot(target, 3), one_hot(target, 3))) == pytest.approx(0.0, abs=1e-6)


def test_voxel_weight_scales_cross_entropy():
    target = _labels(5)
    logits = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(5))
    full = ce_dice_loss(logits, target, dice_weight=0.0)
    half = ce_dice_loss(logits, target, dice_weight=0.0, weight=torch.full((2, 1, 6, 5), 0.5))
    assert torch.allclose(half, 0.5 * full)


def test_gradcheck_dice_and_ce():
    g = torch.Generator().manual_seed(6)
    target = _labels(6, shape=(1, 1, 3, 4))
    target[0, 0, 0, 0] = IGNORE
    logits = torch.randn(1, 3, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ce_dice_loss(x, target, ignore_index=IGNORE), (logits,))


def test_unknown_label_value_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[7\]"):
        dice_loss(torch.zeros(1, 3, 2, 2), torch.tensor([[[[0, 1], [7, 2]]]]))


def test_sample_weight_scales_both_terms_per_sample():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 1, 6, 6))
    first = ce_dice_loss(logits[:1], target[:1])
    second = ce_dice_loss(logits[1:], target[1:])
    # Weight 0 on the second sample: only the first one counts (CE normalised over both samples' voxels).
    only_first = ce_dice_loss(logits, target, sample_weight=torch.tensor([1.0, 0.0]), ce_weight=0.0)
    assert torch.allclose(only_first, (ce_dice_loss(logits[:1], target[:1], ce_weight=0.0)) / 2)
    both = ce_dice_loss(logits, target, sample_weight=torch.ones(2))
    assert torch.allclose(both, (first + second) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="sample_weight has 3 values"):
        ce_dice_loss(logits, target, sample_weight=torch.ones(3))
