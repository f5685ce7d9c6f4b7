"""Label propagation and fusion on tiny hand-made volumes with known answers."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from jointreg.inference.propagate import (
    RegistrationEstimate,
    Source,
    distance_weight,
    foreground_agreement,
    fuse,
    nearest_slice_labels,
    nearest_sources,
    propagate_chain,
    propagate_direct,
)

CPU = torch.device("cpu")


class ConstantFlow(torch.nn.Module):
    """A 'registration network' whose field is the same constant shift for every pair."""

    def __init__(self, shift=(0.0, 0.0)):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor(shift, dtype=torch.float32), requires_grad=False)
        self.calls = 0

    def forward(self, moving, fixed):
        self.calls += moving.shape[0]
        flow = self.shift.view(1, 2, 1, 1).expand(moving.shape[0], 2, *moving.shape[2:]).contiguous()
        return SimpleNamespace(flow=flow, warped=moving)


def _volume(num_slices=7, size=(6, 6), annotated=(3,)):
    """Images of noise; labels: a 2×2 square of class 1 (and class 2 at one pixel), ignore elsewhere."""
    rng = np.random.default_rng(0)
    images = rng.random((num_slices, *size)).astype(np.float32)
    labels = np.full((num_slices, *size), 3, np.int64)  # ignore id = K = 3
    for a in annotated:
        labels[a] = 0
        labels[a, 2:4, 2:4] = 1
        labels[a, 0, 5] = 2
    return images, labels


@pytest.mark.parametrize(
    "annotated, index, per_side, expected",
    [
        ([2, 5, 9, 20], 7, 1, [5, 9]),
        ([2, 5, 9, 20], 7, 2, [5, 9, 2, 20]),
        ([2, 5, 9, 20], 0, 1, [2]),
        ([2, 5, 9, 20], 25, 3, [20, 9, 5]),
        ([4, 6], 5, 1, [4, 6]),  # equal distance: the lower slice first
        ([4], 4, 1, []),  # a slice is never its own source
        ([], 3, 1, []),
    ],
)
def test_nearest_sources(annotated, index, per_side, expected):
    assert nearest_sources(annotated, index, per_side) == expected


def test_distance_weight():
    assert distance_weight(0, 6) == 1.0
    assert distance_weight(6, 6) == pytest.approx(math.exp(-1))
    assert distance_weight(3, 6) > distance_weight(4, 6)


def test_nearest_slice_labels_copies_the_nearest_annotation():
    labels = np.zeros((6, 2, 2), np.int16)
    labels[1] = 1
    labels[4] = 2
    out = nearest_slice_labels(labels, [1, 4])
    assert [int(out[s, 0, 0]) for s in range(6)] == [1, 1, 1, 2, 2, 2]  # slice 2: nearer to 1; 3: nearer to 4
    labels[2] = 7  # non-annotated content is replaced
    assert nearest_slice_labels(labels, [1, 4])[2, 0, 0] == 1
    assert np.array_equal(nearest_slice_labels(labels, []), labels)


def test_zero_flow_propagates_the_source_label_exactly():
    images, labels = _volume()
    est = propagate_direct(ConstantFlow(), images, labels, [0, 5], [3], num_classes=3, ignore_index=3, radius=2.0, device=CPU)
    probs, covered = est.probabilities()
    assert covered.all()
    expected = torch.nn.functional.one_hot(torch.from_numpy(labels[3]), 4)[..., :3].permute(2, 0, 1).float()
    assert torch.equal(probs[0], expected) and torch.equal(probs[1], expected)
    assert [s.to_json() for s in est.sources[0]] == [{"slice": 3, "distance": 3, "weight": round(math.exp(-1.5), 6)}]
    assert est.confidence(1) == pytest.approx(math.exp(-1.0))


def test_a_one_pixel_field_moves_the_label_by_one_pixel():
    images, labels = _volume()
    est = propagate_direct(ConstantFlow((1.0, 0.0)), images, labels, [4], [3], num_classes=3, ignore_index=3, device=CPU)
    label = est.probabilities()[0][0].argmax(0)
    # pull warping: warped(p) = source(p + (1, 0)), so the square at rows 2-3 appears at rows 1-2
    assert label[1:3, 2:4].eq(1).all() and label[3, 2:4].eq(0).all()


def test_two_sources_are_averaged_by_distance():
    images, labels = _volume(annotated=(1, 4))
    labels[4, 2:4, 2:4] = 2  # the upper source says class 2 where the lower says class 1
    est = propagate_direct(ConstantFlow(), images, labels, [2], [1, 4], num_classes=3, ignore_index=3, radius=1.0, device=CPU)
    probs = est.probabilities()[0][0]
    w1, w4 = math.exp(-1.0), math.exp(-2.0)
    assert probs[1, 2, 2].item() == pytest.approx(w1 / (w1 + w4))
    assert probs[2, 2, 2].item() == pytest.approx(w4 / (w1 + w4))
    assert [s.slice for s in est.sources[0]] == [1, 4]


def test_unknown_source_pixels_are_not_covered():
    images, labels = _volume()
    labels[3, :, 0] = 3  # first column of the source is unannotated
    est = propagate_direct(ConstantFlow(), images, labels, [2], [3], num_classes=3, ignore_index=3, device=CPU)
    _, covered = est.probabilities()
    assert not covered[0, :, 0].any() and covered[0, :, 1:].all()


def test_chain_composes_one_warp_per_slice():
    images, labels = _volume(num_slices=7, size=(8, 8), annotated=(0,))
    net = ConstantFlow((-1.0, 0.0))
    est = propagate_chain(net, images, labels, [1, 2, 3], [0], num_classes=3, ignore_index=3, device=CPU)
    probs, _ = est.probabilities()
    for i, t in enumerate([1, 2, 3]):
        label = probs[i].argmax(0)
        # each step pulls from one row above, so after t steps the square sits t rows lower
        assert label[2 + t:4 + t, 2:4].eq(1).all(), t
        assert label[2 + t - 1, 2:4].eq(0).all(), t
    assert net.calls == 3  # one registration per adjacent pair
    direct = propagate_direct(net, images, labels, [3], [0], num_classes=3, ignore_index=3, device=CPU)
    assert direct.probabilities()[0][0].argmax(0)[3:5, 2:4].eq(1).all()  # direct: a single one-pixel shift


def test_chain_stops_at_the_next_annotated_slice():
    images, labels = _volume(num_slices=7, annotated=(1, 4))
    est = propagate_chain(ConstantFlow(), images, labels, [0, 2, 3, 5, 6], [1, 4], num_classes=3, ignore_index=3, device=CPU)
    assert [[(s.slice, s.distance) for s in sources] for sources in est.sources] == [
        [(1, 1)], [(1, 1), (4, 2)], [(4, 1), (1, 2)], [(4, 1)], [(4, 2)],
    ]


def test_foreground_agreement():
    a = torch.zeros(3, 4, 4)
    a[0] = 1
    assert foreground_agreement(a, a) == 1.0  # both empty
    b = a.clone()
    b[0, :2], b[1, :2] = 0, 1
    assert foreground_agreement(b, b) == pytest.approx(1.0)
    assert foreground_agreement(a, b) == 0.0
    c = a.clone()
    c[0, :1], c[1, :1] = 0, 1
    assert foreground_agreement(b, c) == pytest.approx(2 * 4 / (8 + 4))


def _estimate(registered, known, sources):
    return RegistrationEstimate(list(range(registered.shape[0])), registered * known.unsqueeze(1), known, sources)


def test_fuse_modes_follow_the_documented_formulas():
    k, shape = 2, (1, 2, 2)
    registered = torch.zeros(1, k, 2, 2)
    registered[0, 1] = 1.0  # registration: all foreground
    registered[0, 0] = 0.0
    segmentor = torch.zeros(1, k, 2, 2)
    segmentor[0, 0] = 1.0  # segmentor: all background
    known = torch.ones(shape)
    known[0, 0, 0] = 0.0  # one pixel without a source
    est = _estimate(registered, known, [[Source(3, 1, 0.8)]])

    seg_only, info = fuse("segmentor", est, segmentor, num_classes=k)
    assert torch.equal(seg_only, segmentor) and info[0].method == "segmentor"

    reg, info = fuse("registration", est, segmentor, num_classes=k)
    assert torch.equal(reg[0, :, 0, 0], segmentor[0, :, 0, 0])  # uncovered pixel: segmentor
    assert torch.equal(reg[0, :, 1, 1], registered[0, :, 1, 1])
    assert info[0].uncovered_fraction == 0.25

    fused, info = fuse("fusion", est, segmentor, num_classes=k)
    # agreement: disjoint foregrounds -> a = 0, so lambda = 0.8 * (1 + 0) / 2 = 0.4
    assert info[0].agreement == 0.0 and info[0].registration_weight == pytest.approx(0.4)
    assert fused[0, 1, 1, 1].item() == pytest.approx(0.4)
    assert fused[0, 0, 1, 1].item() == pytest.approx(0.6)
    assert torch.equal(fused[0, :, 0, 0], segmentor[0, :, 0, 0])
    assert fused.sum(1).allclose(torch.ones(1, 2, 2))


def test_fusion_trusts_an_agreeing_nearby_registration_more():
    k = 2
    registered = torch.zeros(1, k, 2, 2)
    registered[0, 1] = 1.0
    segmentor = registered.clone()
    est = _estimate(registered, torch.ones(1, 2, 2), [[Source(3, 1, 0.9)]])
    _, info = fuse("fusion", est, segmentor, num_classes=k)
    assert info[0].agreement == pytest.approx(1.0) and info[0].registration_weight == pytest.approx(0.9)


def test_fuse_without_sources_or_segmentor():
    k = 2
    est = _estimate(torch.zeros(1, k, 2, 2), torch.zeros(1, 2, 2), [[]])
    background, info = fuse("registration", est, None, num_classes=k)
    assert background[0, 0].eq(1).all() and info[0].method == "background"
    with pytest.raises(ValueError, match="needs the segmentor"):
        fuse("fusion", est, None, num_classes=k)
    with pytest.raises(ValueError, match="unknown mode"):
        fuse("vote", est, None, num_classes=k)


def _shrinking_organ(num_slices=6, size=12):
    """An organ (intensity 1.0) on background (0.2) whose square shrinks by one pixel per side per
    slice and ends at slice 4; slice 5 holds organ-like tissue inside the organ's old footprint.
    Slice 0 is annotated. Returns images, sparse labels (ignore = 2) and the true labels."""
    images = np.full((num_slices, size, size), 0.2, np.float32)
    truth = np.zeros((num_slices, size, size), np.int64)
    for s, half in enumerate((4, 3, 2, 1, 0, 0)):
        if half > 0:
            lo, hi = 6 - half - (half == 1), 6 + half  # sides 8, 6, 4, then 3 (a 3 × 3 square survives the opening)
            truth[s, lo:hi, lo:hi] = 1
    images[truth == 1] = 1.0
    images[5, 2:6, 2:6] = 1.0  # not the organ: the organ ended on slice 4
    labels = np.full(truth.shape, 2, np.int64)
    labels[0] = truth[0]
    return images, labels, truth


def test_the_step_gate_lets_a_chain_shrink_and_end_with_the_organ():
    from jointreg.inference.verify import gate_by_appearance

    images, labels, truth = _shrinking_organ()
    targets = [1, 2, 3, 4, 5]
    common = dict(num_classes=2, ignore_index=2, device=CPU)
    plain = propagate_chain(ConstantFlow(), images, labels, targets, [0], **common).probabilities()[0].argmax(1).numpy()
    gated = propagate_chain(ConstantFlow(), images, labels, targets, [0], step_gate=1.0, **common)
    gated = gated.probabilities()[0].argmax(1).numpy()
    # A zero field keeps the organ's area: every slice gets the annotated 8 × 8 square.
    assert all(np.array_equal(plain[i], truth[0]) for i in range(len(targets)))
    # Gated at every step, the label follows the organ down to its end and does not come back.
    assert np.array_equal(gated, truth[targets])
    # Gating after the chain instead keeps the organ-like tissue inside the old footprint.
    stack = np.concatenate([labels[:1], plain])
    after = gate_by_appearance(stack, images, [0], [1], propagated=np.arange(6)[:, None, None] > 0, percentile=1.0)
    assert np.array_equal(after[5] == 1, images[5] == 1.0) and after[5].sum() == 16
    # Probabilities still sum to one where the step gate moved a class to background.
    probs, covered = propagate_chain(ConstantFlow(), images, labels, targets, [0], step_gate=1.0, **common).probabilities()
    assert covered.all() and torch.allclose(probs.sum(1), torch.ones(probs.shape[0], 12, 12))


def test_the_step_gate_changes_nothing_where_every_pixel_looks_annotated():
    images = np.full((4, 10, 10), 0.5, np.float32)  # one intensity everywhere: every pixel is within range
    labels = np.full((4, 10, 10), 2, np.int64)
    labels[0] = 0
    labels[0, 2:6, 2:6] = 1
    common = dict(num_classes=2, ignore_index=2, device=CPU)
    plain = propagate_chain(ConstantFlow((-1.0, 0.0)), images, labels, [1, 2, 3], [0], **common)
    gated = propagate_chain(ConstantFlow((-1.0, 0.0)), images, labels, [1, 2, 3], [0], step_gate=5.0, **common)
    assert torch.equal(plain.numerator, gated.numerator) and torch.equal(plain.known, gated.known)
    assert gated.probabilities()[0][2].argmax(0)[5:9, 2:6].eq(1).all()  # moved three rows, whole
