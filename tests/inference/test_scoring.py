"""jointreg.inference.scoring: the one Dice rule, and the registration scorer both callers share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointreg.data.nifti import Volume
from jointreg.data.pairs import SlicePair
from jointreg.data.slices import PlaneGeometry, SlicedVolume, stack_status
from jointreg.inference.evaluation import evaluate_registration_on_volumes, largest_slice_pairs
from jointreg.inference.scoring import SCORE_NAMES, class_dice, mean_foreground_dice, score_registration_pairs
from jointreg.nets.registration.output import RegistrationOutput

IGNORE = 3  # three classes proper (background, 1, 2); ignore is the next id


# --------------------------------------------------------------------------------------------
# the Dice rule (docs/metrics.md)
# --------------------------------------------------------------------------------------------
def test_class_dice_known_answers():
    truth = np.zeros((4, 4), np.int64)
    truth[0, :2] = 1  # class 1: two pixels; class 2 absent
    pred = np.zeros((4, 4), np.int64)
    pred[0, :1] = 1  # one of them found
    scores = class_dice(pred, truth, num_classes=3, ignore_index=IGNORE)
    # class 1: 2·1 / (1 + 2); class 2: absent from both masks -> 1.0 (not skipped)
    assert scores == {1: pytest.approx(2 / 3), 2: 1.0}
    assert mean_foreground_dice(pred, truth, num_classes=3, ignore_index=IGNORE) == pytest.approx((2 / 3 + 1.0) / 2)


def test_missed_and_spurious_structures_score_zero():
    empty = np.zeros((4, 4), np.int64)
    structure = empty.copy()
    structure[1:3, 1:3] = 1
    assert class_dice(empty, structure, num_classes=2, ignore_index=IGNORE) == {1: 0.0}  # missed
    assert class_dice(structure, empty, num_classes=2, ignore_index=IGNORE) == {1: 0.0}  # found where there is none
    assert class_dice(empty, empty, num_classes=2, ignore_index=IGNORE) == {1: 1.0}  # nothing to find, nothing found


def test_ignore_voxels_are_not_counted():
    truth = np.full((4, 4), IGNORE, np.int64)
    truth[0] = [1, 1, 0, 0]  # only the first row is known
    pred = np.ones((4, 4), np.int64)  # class 1 everywhere: wrong only on known pixels 2 and 3
    assert class_dice(pred, truth, num_classes=2, ignore_index=IGNORE) == {1: pytest.approx(2 * 2 / (4 + 2))}
    pred[0, 2:] = 0  # right on every known pixel; the unknown rows still say class 1
    assert class_dice(pred, truth, num_classes=2, ignore_index=IGNORE) == {1: 1.0}
    # A prediction of the ignore id is no class (the warped "unknown" channel).
    assert class_dice(np.full((4, 4), IGNORE), truth, num_classes=2, ignore_index=IGNORE) == {1: 0.0}


def test_no_foreground_class_is_an_error():
    with pytest.raises(ValueError, match="foreground class"):
        class_dice(np.zeros(3), np.zeros(3), num_classes=1, ignore_index=1)


# --------------------------------------------------------------------------------------------
# registration pairs
# --------------------------------------------------------------------------------------------
class ZeroFlow(torch.nn.Module):
    """A registration network that does not move anything: warped = moving, flow = 0."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the network a device

    def forward(self, moving, fixed):
        return RegistrationOutput(moving.clone(), torch.zeros(moving.shape[0], 2, *moving.shape[2:]))


def _volume(labels: np.ndarray, full: np.ndarray | None = None) -> SlicedVolume:
    """A sliced volume on an identity grid: image = label / 2 (so identical labels mean identical images)."""
    n, h, w = labels.shape
    return SlicedVolume(
        case="v", axis=2, images=(np.where(labels == IGNORE, 0, labels) / 2).astype(np.float32) + 0.1 * np.arange(w),
        labels=labels, status=stack_status(labels, IGNORE), geometry=PlaneGeometry((h, w), (1.0, 1.0), (h, w)),
        reference=Volume(np.zeros((h, w, n), np.float32), np.eye(4)), source_shape=(h, w, n), full_labels=full,
    )


def _stack() -> tuple[np.ndarray, np.ndarray]:
    """Five 8 × 8 slices: the structure on slices 0-2 (largest on 1), none on 3-4; slice 1 annotated."""
    full = np.zeros((5, 8, 8), np.int64)
    full[0, 3:5, 3:5] = 1
    full[1, 2:6, 2:6] = 1
    full[2, 3:5, 3:6] = 1
    sparse = np.full_like(full, IGNORE)
    sparse[1] = full[1]
    return sparse, full


def test_scores_of_a_network_that_does_not_move():
    sparse, full = _stack()
    volumes = [_volume(sparse, full)]
    pairs = [SlicePair((0, 1), (0, f), abs(f - 1)) for f in (0, 2, 3)]
    scores = score_registration_pairs(ZeroFlow(), volumes, pairs, num_classes=2, ignore_index=IGNORE, batch_size=2)
    assert [s.pair for s in scores.pairs] == pairs
    # Warping by zero is copying: the registration and identity figures agree.
    for s in scores.pairs:
        assert s.label_dice == pytest.approx(s.identity_dice) and s.ncc == pytest.approx(s.identity_ncc)
        assert s.folding_percent == 0.0
    # 16 pixels copied onto 4 (slice 0) and 6 (slice 2); onto slice 3 the structure is spurious: 0.
    assert [s.label_dice for s in scores.pairs] == [pytest.approx(2 * 4 / 20), pytest.approx(2 * 6 / 22), 0.0]
    assert scores.mean("label_dice") == pytest.approx(np.mean([8 / 20, 12 / 22, 0.0]))
    # Truth: the complete labels; without them the sparse ones, and a fixed slice without any
    # known pixel is not scored (it would otherwise read as "both empty": 1.0 whatever the warp).
    sparse_only = score_registration_pairs(ZeroFlow(), [_volume(sparse)], pairs, num_classes=2, ignore_index=IGNORE)
    assert [s.label_dice for s in sparse_only.pairs] == [None, None, None]
    assert sparse_only.mean("label_dice") is None


def test_an_empty_slice_onto_an_empty_slice_scores_one():
    sparse, full = _stack()
    sparse[3] = full[3]  # an annotated slice without the structure
    scores = score_registration_pairs(
        ZeroFlow(), [_volume(sparse, full)], [SlicePair((0, 3), (0, 4), 1)], num_classes=2, ignore_index=IGNORE
    )
    assert scores.pairs[0].label_dice == 1.0 and scores.pairs[0].identity_dice == 1.0


def test_network_mode_is_restored_and_names_are_checked():
    sparse, full = _stack()
    net = ZeroFlow().train()
    scores = score_registration_pairs(net, [_volume(sparse, full)], [SlicePair((0, 1), (0, 2), 1)], num_classes=2, ignore_index=IGNORE)
    assert net.training
    with pytest.raises(KeyError, match="unknown score"):
        scores.mean("dice")
    assert score_registration_pairs(net, [], [], num_classes=2, ignore_index=IGNORE).mean("ncc") is None


# --------------------------------------------------------------------------------------------
# the two callers: evaluation (largest slice) and validation (annotated slices)
# --------------------------------------------------------------------------------------------
def test_evaluation_scores_the_largest_slice_onto_its_neighbours():
    sparse, full = _stack()
    volumes = [_volume(sparse, full)]
    pairs = largest_slice_pairs(volumes, radius=2, ignore_index=IGNORE)
    assert [(p.moving, p.fixed) for p in pairs] == [((0, 1), (0, 0)), ((0, 1), (0, 2)), ((0, 1), (0, 3))]
    result = evaluate_registration_on_volumes(ZeroFlow(), volumes, radius=2, num_classes=2, ignore_index=IGNORE)
    assert list(result) == [*SCORE_NAMES, "pairs"] and result["pairs"] == 3
    assert result["label_dice"] == pytest.approx(np.mean([8 / 20, 12 / 22, 0.0]))
    assert result["identity_dice"] == pytest.approx(result["label_dice"])
    empty = evaluate_registration_on_volumes(ZeroFlow(), [], radius=2, num_classes=2, ignore_index=IGNORE)
    assert empty == {**{name: None for name in SCORE_NAMES}, "pairs": 0}


def test_validation_uses_the_same_scorer():
    from jointreg.training.validation import validate_registration

    sparse, full = _stack()
    volumes = [_volume(sparse, full)]
    result = validate_registration(ZeroFlow(), volumes, radius=2, num_classes=2, ignore_index=IGNORE)
    # Annotated slice 1 onto slices 0, 2, 3: here the same pairs as the evaluation's.
    assert set(result) == {"ncc", "folding_percent", "pairs", "label_dice", "identity_dice"}
    assert result["pairs"] == 3.0
    assert result["label_dice"] == pytest.approx(np.mean([8 / 20, 12 / 22, 0.0]))
    assert validate_registration(ZeroFlow(), volumes, radius=2, num_classes=2, ignore_index=IGNORE, max_pairs=2)["pairs"] == 2.0
