"""Registration and segmentation steps on a phantom: losses fall, ignore voxels are excluded."""

import numpy as np
import pytest
import torch

from jointreg.data.batches import labelled_batch, registration_batch
from jointreg.data.pairs import PairSampler
from jointreg.training.config import PairConfig, PropagationConfig, RegistrationConfig, SegmentationConfig
from jointreg.training.objectives import RegistrationObjective
from jointreg.training.propagation import PropagationPolicy
from jointreg.training.steps import registration_step, segmentation_step


@pytest.fixture(scope="module")
def volumes(sparse_phantom):
    from jointreg.data.dataset import Dataset
    from jointreg.data.slices import SliceSpec, load_sliced_dataset

    return load_sliced_dataset(Dataset.open(sparse_phantom), SliceSpec(size=(48, 48)), full_labels=True, progress=False)


def _nets(seed=0):
    from jointreg.nets.registration import create_registration_net
    from jointreg.nets.segmentation import create_segmentor

    torch.manual_seed(seed)
    reg = create_registration_net("fmirnet", spatial_dims=2, features=[8, 16, 16])
    seg = create_segmentor("fcn", in_channels=1, classes=5, features=[8, 8, 16, 16, 16], head_channels=16, dropout=0.0)
    return reg, seg


def test_registration_steps_lower_the_loss_and_beat_identity(volumes):
    reg, _ = _nets()
    sampler = PairSampler(volumes, radius=4)
    pairs = sampler.same_volume_pairs()
    batch = registration_batch(volumes, pairs, ignore_index=5, device=torch.device("cpu"))
    loss_fn = RegistrationObjective(RegistrationConfig(lr=3e-3, label_weight=0.0), num_classes=5, ignore_index=5)
    opt = torch.optim.Adam(reg.parameters(), lr=3e-3)
    with torch.no_grad():
        reg.eval()
        before, _ = loss_fn(reg(batch.moving, batch.fixed), batch)
    # Unsupervised: the labels are never seen in training, only scored afterwards.
    for step in range(100):
        registration_step(reg, opt, batch, loss_fn, step=step)
    reg.eval()
    with torch.no_grad():
        after, terms = loss_fn(reg(batch.moving, batch.fixed), batch)
    assert after < 0.8 * before
    # The propagated labels agree better with the (full) fixed labels than copying does.
    from jointreg.training.validation import validate_registration

    scores = validate_registration(reg, volumes, radius=4, num_classes=5, ignore_index=5)
    assert scores["label_dice"] > scores["identity_dice"] + 0.02


def test_segmentation_steps_lower_the_loss(volumes):
    _, seg = _nets()
    slots = [(v, s) for v, vol in enumerate(volumes) for s in vol.annotated_indices]
    images, labels = labelled_batch(volumes, slots, device=torch.device("cpu"))
    opt = torch.optim.Adam(seg.parameters(), lr=3e-3)
    cfg = SegmentationConfig()
    first = segmentation_step(seg, opt, cfg, ignore_index=5, real=(images, labels))["total"]
    for step in range(40):
        last = segmentation_step(seg, opt, cfg, ignore_index=5, real=(images, labels), step=step)["total"]
    assert last < 0.5 * first


def test_ignore_voxels_do_not_change_the_segmentation_loss():
    from jointreg.losses.segmentation import ce_dice_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    target[:, :, :4] = 3  # ignore the top half
    other = logits.clone()
    other[:, :, :4] = torch.randn_like(other[:, :, :4]) * 10  # change predictions under ignore only
    a = ce_dice_loss(logits, target, ignore_index=3)
    b = ce_dice_loss(other, target, ignore_index=3)
    assert torch.allclose(a, b)


def test_propagation_keeps_real_labels_and_marks_unknown(volumes):
    reg, _ = _nets()
    pairs = PairSampler(volumes, radius=3).same_volume_pairs()[:4]
    batch = registration_batch(volumes, pairs, ignore_index=5, device=torch.device("cpu"))
    out = PropagationPolicy(PropagationConfig(trust=("distance",), trust_decay=0.5), num_classes=5, ignore_index=5).label(reg, batch)
    known = batch.fixed_label != 5
    assert torch.equal(out.fixed_targets[known], batch.fixed_label[known])
    expected = torch.exp(-0.5 * batch.distance)
    assert torch.allclose(out.trust, expected)
    # A freshly initialised network is near identity: the propagated label is the moving one.
    assert (out.warped_labels == batch.moving_label).float().mean() > 0.98


def test_anatomy_term_uses_the_segmentor_without_training_it(volumes):
    reg, seg = _nets()
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    pairs = PairSampler(volumes, radius=3).same_volume_pairs()[:4]
    batch = registration_batch(volumes, pairs, ignore_index=5, device=torch.device("cpu"))
    loss_fn = RegistrationObjective(RegistrationConfig(anatomy_weight=1.0), num_classes=5, ignore_index=5)
    import copy

    from jointreg.losses.segmentation import soft_dice
    from jointreg.spatial.labels import one_hot
    from jointreg.spatial.warp import warp_onehot

    frozen = copy.deepcopy(reg).train()
    terms = registration_step(reg, torch.optim.Adam(reg.parameters()), batch, loss_fn, segmentor=seg)
    for k, v in seg.state_dict().items():
        assert torch.equal(v, before[k]), k
    # The term is 1 − soft Dice of the warped moving label against the segmentor's softmax on
    # the fixed image, over the annotated (known) pixels, foreground classes only.
    with torch.no_grad():
        seg.eval()
        anatomy = torch.softmax(seg(batch.fixed), 1)
        warped = warp_onehot(one_hot(batch.moving_label, 5, ignore_index=5), frozen(batch.moving, batch.fixed).flow)
        known = (warped[:, 5:] < 0.5).float()
        expected = 1.0 - soft_dice(warped[:, 1:5], anatomy[:, 1:], mask=known)
    assert terms["anatomy_dice"] == pytest.approx(float(expected), abs=1e-5)
    # An oracle segmentor that predicts the warped moving label makes the term vanish.
    oracle = RegistrationObjective(RegistrationConfig(anatomy_weight=1.0), num_classes=5, ignore_index=5)
    with torch.no_grad():
        out = frozen(batch.moving, batch.fixed)
        _, oracle_terms = oracle(out, batch, anatomy=warped[:, :5])
    assert oracle_terms["anatomy_dice"] < 1e-3


def test_residual_trust_ignores_pixels_that_registration_could_not_match(volumes):
    reg, _ = _nets()
    pairs = PairSampler(volumes, radius=3).same_volume_pairs()[:4]
    batch = registration_batch(volumes, pairs, ignore_index=5, device=torch.device("cpu"))
    strict = PropagationPolicy(PropagationConfig(trust=("residual",), trust_residual=0.05), num_classes=5, ignore_index=5).label(reg, batch)
    loose = PropagationPolicy(PropagationConfig(trust=("residual",), trust_residual=2.0), num_classes=5, ignore_index=5).label(reg, batch)
    unknown_fixed = batch.fixed_label == 5
    mismatch = ((strict.warped_images - batch.fixed).abs() > 0.05) & unknown_fixed
    assert mismatch.any()
    assert (strict.fixed_targets[mismatch] == 5).all()
    assert torch.equal(loose.fixed_targets[unknown_fixed], loose.warped_labels[unknown_fixed])
    assert torch.equal(strict.trust, torch.ones(4))


def test_far_slices_become_negatives_only_where_registration_finds_nothing(volumes):
    reg, _ = _nets()
    sampler = PairSampler(volumes, radius=20)
    pairs = [p for p in sampler.same_volume_pairs() if p.distance in (1, 14)][:8]
    batch = registration_batch(volumes, pairs, ignore_index=5, device=torch.device("cpu"))
    # Without the absence test, far slices that still carry the structure are ignored entirely.
    kept = PropagationPolicy(PropagationConfig(trust=(), foreground_within=2), num_classes=5, ignore_index=5).label(reg, batch)
    for i, pair in enumerate(pairs):
        if pair.distance > 2:
            assert (kept.fixed_targets[i] == 5).all()
        else:
            assert torch.equal(kept.fixed_targets[i], kept.warped_labels[i])
    # With a threshold of 0 every structure is "absent": far slices become all-background negatives.
    negatives = PropagationPolicy(PropagationConfig(trust=(), foreground_within=2, absent_residual=0.0), num_classes=5, ignore_index=5).label(reg, batch)
    for i, pair in enumerate(pairs):
        if pair.distance > 2:
            assert (negatives.fixed_targets[i] == 0).all()
        else:  # near slices are never declared empty: a poor match there is a poor warp
            assert torch.equal(negatives.fixed_targets[i], negatives.warped_labels[i])
    # Without foreground_within, absence applies at any distance.
    anywhere = PropagationPolicy(PropagationConfig(trust=(), absent_residual=0.0), num_classes=5, ignore_index=5).label(reg, batch)
    assert (anywhere.fixed_targets[anywhere.warped_labels != 5] == 0).all()
    # A huge threshold never declares absence.
    same = PropagationPolicy(PropagationConfig(trust=(), absent_residual=1e9), num_classes=5, ignore_index=5).label(reg, batch)
    assert torch.equal(same.fixed_targets, same.warped_labels)


def test_background_beyond_the_propagated_structure():
    from jointreg.training.propagation import background_beyond as _background_beyond

    propagated = torch.zeros(2, 1, 12, 12, dtype=torch.int64)
    propagated[:, :, 4:7, 4:7] = 1
    propagated[:, :, 0, :] = 3  # outside the moving slice's field of view
    distance = torch.tensor([1.0, 5.0])
    out = _background_beyond(propagated, distance, margin=2, ignore_index=3, foreground_within=2)
    structure = torch.zeros(12, 12, dtype=torch.bool)
    structure[4:7, 4:7] = True
    zone = torch.zeros(12, 12, dtype=torch.bool)
    zone[2:9, 2:9] = True
    for i in range(2):
        labels = out[i, 0]
        assert (labels[0] == 3).all()
        assert (labels[1:][~zone[1:]] == 0).all()  # far from the structure: background
        assert (labels[zone & ~structure] == 3).all()  # the band is ignored
    assert (out[0, 0][structure] == 1).all()  # near slice: the propagated structure is kept
    assert (out[1, 0][structure] == 3).all()  # far slice: not claimed
    everywhere = _background_beyond(propagated, distance, margin=0, ignore_index=3, foreground_within=None)
    assert torch.equal(everywhere, propagated)


def test_zone_pixels_unlike_the_structure_become_background():
    from jointreg.training.propagation import background_beyond as _background_beyond, intensity_ranges as _intensity_ranges

    moving = torch.full((1, 1, 12, 12), 0.1)
    moving_label = torch.zeros(1, 1, 12, 12, dtype=torch.int64)
    moving_label[..., 4:7, 4:7] = 1
    moving[..., 4:7, 4:7] = torch.linspace(0.4, 0.6, 9).view(3, 3)
    ranges = _intensity_ranges(moving, moving_label, 2, (0.0, 100.0))
    assert torch.allclose(ranges[0, 1], torch.tensor([0.4, 0.6]))
    assert torch.isnan(ranges[0, 0]).all()  # background has no range
    fixed = torch.full((1, 1, 12, 12), 0.5)
    fixed[..., :, 6:] = 0.9  # the right part of the fixed slice looks nothing like the structure
    out = _background_beyond(moving_label, torch.tensor([4.0]), margin=1, ignore_index=2,
                             foreground_within=0, fixed=fixed, ranges=ranges)
    zone = torch.zeros(12, 12, dtype=torch.bool)
    zone[3:8, 3:8] = True
    labels = out[0, 0]
    assert (labels[zone & (fixed[0, 0] > 0.8)] == 0).all()  # in the zone but unlike: background
    assert (labels[zone & (fixed[0, 0] < 0.8)] == 2).all()  # in the zone and alike: unknown
    assert (labels[~zone] == 0).all()


class _Identity(torch.nn.Module):
    """A 'registration network' that leaves the moving image where it is."""

    def forward(self, moving, fixed):
        from jointreg.nets.registration.output import RegistrationOutput

        flow = torch.zeros(moving.shape[0], 2, *moving.shape[2:])
        return RegistrationOutput(warped=moving, flow=flow)


def test_propagated_negatives_through_propagate():
    from jointreg.data.batches import RegistrationBatch

    moving = torch.full((2, 1, 12, 12), 0.2)
    moving_label = torch.zeros(2, 1, 12, 12, dtype=torch.int64)
    moving_label[..., 4:7, 4:7] = 1
    moving[..., 4:7, 4:7] = 0.5
    fixed = torch.full((2, 1, 12, 12), 0.5)
    fixed_label = torch.full((2, 1, 12, 12), 2, dtype=torch.int64)
    fixed_label[1, :, 11, :] = 1  # a fixed slice's own labels win
    batch = RegistrationBatch(moving, fixed, moving_label, fixed_label, torch.tensor([1.0, 6.0]), [None, None])
    out = PropagationPolicy(PropagationConfig(trust=(), foreground_within=3, background_margin=1, appearance_percentiles=(0.0, 100.0)), num_classes=2, ignore_index=2).label(_Identity(), batch)
    structure = moving_label[0, 0] == 1
    zone = torch.zeros(12, 12, dtype=torch.bool)
    zone[3:8, 3:8] = True
    near, far = out.fixed_targets[0, 0], out.fixed_targets[1, 0]
    assert (near[structure] == 1).all() and (far[structure] == 2).all()
    assert (near[zone & ~structure] == 2).all() and (far[zone & ~structure] == 2).all()
    assert (near[~zone] == 0).all()
    assert (far[:11][~zone[:11]] == 0).all() and (far[11] == 1).all()
    assert torch.equal(out.trust, torch.ones(2))


def test_chain_propagation_in_training_follows_the_registration(volumes):
    """Chain mode labels each fixed slice with the chain-propagated label of the nearest annotated
    slices: with the identity that is the annotated label itself (= direct mode); with a field
    that shifts every slice onto the next, the label moves one pixel per slice."""
    from jointreg.nets.registration import create_registration_net
    from jointreg.training.propagation import SegmentationGroups

    def groups(method):
        return SegmentationGroups(volumes, pairs=PairConfig(radius=3), propagation=PropagationConfig(method=method, trust=()),
                                  warped_weight=0.0, propagated_weight=1.0, num_classes=5, ignore_index=5,
                                  device=torch.device("cpu"))

    identity = create_registration_net("identity")
    direct, chain = groups("direct"), groups("chain")
    chain.refresh(identity, version=0)
    _, a = direct.draw(identity, 4, np.random.default_rng(0))
    _, b = chain.draw(identity, 4, np.random.default_rng(0))
    assert torch.equal(a.fixed_targets, b.fixed_targets)

    class Shift(torch.nn.Module):  # moves content one pixel along axis 1 per registration
        def forward(self, moving, fixed):
            from jointreg.nets.registration import RegistrationOutput

            flow = torch.zeros(moving.shape[0], 2, *moving.shape[2:])
            flow[:, 1] = -1.0
            return RegistrationOutput(moving, flow)

    chain.refresh(Shift(), version=1)
    v = 0
    annotated = volumes[v].annotated_indices[0]
    label = torch.from_numpy(volumes[v].labels[annotated].astype(np.int64))
    step = 1 if annotated + 3 < volumes[v].num_slices else -1  # towards the side with room
    for t, expected_shift in ((annotated + step, 1), (annotated + 3 * step, 3)):
        got = chain._chain_labels[(v, t)]
        inner = slice(8, -8)
        assert torch.equal(got[inner, inner], torch.roll(label, expected_shift, dims=1)[inner, inner])
        assert chain._chain_distance[(v, t)] == expected_shift  # distance to the annotated slice
    cached = chain._chain_labels
    chain.refresh(Shift(), version=1)  # same registration: nothing recomputed
    assert chain._chain_labels is cached


def test_verified_chain_labels_stop_where_the_structure_stops_looking_like_itself(volumes):
    """With the identity, chain labels are the annotated label on every slice; verification keeps
    it only on the slices around the annotated one whose pixels under it still look like liver."""
    from jointreg.nets.registration import create_registration_net
    from jointreg.training.propagation import SegmentationGroups

    def groups(verify):
        return SegmentationGroups(volumes, pairs=PairConfig(radius=3),
                                  propagation=PropagationConfig(method="chain", verify=verify, trust=()),
                                  warped_weight=0.0, propagated_weight=1.0, num_classes=5, ignore_index=5,
                                  device=torch.device("cpu"))

    plain, verified = groups(None), groups(0.6)
    for g in (plain, verified):
        g.refresh(create_registration_net("identity"), version=0)
    v = 0
    annotated = volumes[v].annotated_indices[0]
    kept = [t for t in range(volumes[v].num_slices) if t != annotated and (verified._chain_labels[(v, t)] == 1).any()]
    everywhere = [t for t in range(volumes[v].num_slices) if t != annotated and (plain._chain_labels[(v, t)] == 1).any()]
    assert len(everywhere) == volumes[v].num_slices - 1  # copying puts the liver on every slice
    assert 0 < len(kept) < len(everywhere)
    span = sorted({*kept, annotated})  # one run of slices through the annotated one
    assert span == list(range(span[0], span[-1] + 1))
    truth = volumes[v].full_labels == 1
    # The kept slices are mostly slices that do have liver.
    assert np.mean([truth[t].any() for t in kept]) > 0.8
    with pytest.raises(Exception, match="needs propagation.method: chain"):
        PropagationConfig(verify=0.6)


def test_gated_chain_labels_lose_only_foreground_pixels_and_come_closer_to_the_truth(volumes):
    """With the identity, chain labels copy the annotated organs onto every slice; the appearance
    gate removes the copied pixels whose intensity the annotated organ never has."""
    from jointreg.metrics.overlap import dice
    from jointreg.nets.registration import create_registration_net
    from jointreg.training.propagation import SegmentationGroups

    def groups(gate):
        return SegmentationGroups(volumes, pairs=PairConfig(radius=3),
                                  propagation=PropagationConfig(method="chain", gate=gate, trust=()),
                                  warped_weight=0.0, propagated_weight=1.0, num_classes=5, ignore_index=5,
                                  device=torch.device("cpu"))

    plain, gated = groups(0.0), groups(1.0)
    for g in (plain, gated):
        g.refresh(create_registration_net("identity"), version=0)
    v = 0
    keys = sorted(k for k in plain._chain_labels if k[0] == v)
    before = torch.stack([plain._chain_labels[k] for k in keys]).numpy()
    after = torch.stack([gated._chain_labels[k] for k in keys]).numpy()
    changed = before != after
    assert changed.any() and (before[changed] > 0).all() and (after[changed] == 0).all()  # foreground → background only
    truth = volumes[v].full_labels[[t for _, t in keys]] == 1
    assert dice(after == 1, truth) > dice(before == 1, truth) + 0.2  # 0.49 → 0.87
    for bad in (50.0, -1.0):
        with pytest.raises(Exception, match="propagation.gate"):
            PropagationConfig(method="chain", gate=bad)
    with pytest.raises(Exception, match="needs propagation.method: chain"):
        PropagationConfig(gate=1.0)


def test_step_gated_chain_labels_come_closer_to_the_truth_than_gating_after_the_chain(volumes):
    """With the identity, a chain gated after every step loses the copied organ where the organ
    has shrunk or ended, and does not carry what it removed to the next slice."""
    from jointreg.metrics.overlap import dice
    from jointreg.nets.registration import create_registration_net
    from jointreg.training.propagation import SegmentationGroups

    def labels(**rules):
        groups = SegmentationGroups(volumes, pairs=PairConfig(radius=3),
                                    propagation=PropagationConfig(method="chain", trust=(), **rules),
                                    warped_weight=0.0, propagated_weight=1.0, num_classes=5, ignore_index=5,
                                    device=torch.device("cpu"))
        groups.refresh(create_registration_net("identity"), version=0)
        keys = sorted(k for k in groups._chain_labels if k[0] == 0)
        return torch.stack([groups._chain_labels[k] for k in keys]).numpy(), [t for _, t in keys]

    after, targets = labels(gate=1.0)
    stepped, _ = labels(step_gate=1.0)
    truth = volumes[0].full_labels[targets] == 1
    assert dice(stepped == 1, truth) > dice(after == 1, truth) + 0.02  # 0.87 → 0.90
    for bad in (50.0, -1.0):
        with pytest.raises(Exception, match="propagation.step_gate"):
            PropagationConfig(method="chain", step_gate=bad)
    with pytest.raises(Exception, match="needs propagation.method: chain"):
        PropagationConfig(step_gate=1.0)


def test_the_chain_refinement_uses_the_recipes_smoothness(volumes, monkeypatch):
    import jointreg.inference.refine as refine
    from jointreg.nets.registration import create_registration_net
    from jointreg.training.propagation import SegmentationGroups

    seen = []
    monkeypatch.setattr(refine, "refine_flow", lambda moving, fixed, flow, refinement, **_: seen.append(refinement) or flow)
    groups = SegmentationGroups(volumes, pairs=PairConfig(radius=3),
                                propagation=PropagationConfig(method="chain", trust=(), refine=7, refine_smoothness=0.02),
                                warped_weight=0.0, propagated_weight=1.0, num_classes=5, ignore_index=5,
                                device=torch.device("cpu"))
    groups.refresh(create_registration_net("identity"), version=0)
    assert seen and {(r.steps, r.smoothness) for r in seen} == {(7, 0.02)}
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(Exception, match="propagation.refine_smoothness"):
            PropagationConfig(method="chain", refine=1, refine_smoothness=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_weights_finite_finds_one_bad_weight_anywhere(bad):
    from jointreg.training.steps import weights_finite

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 1))
    assert weights_finite(net)
    with torch.no_grad():
        net[1].weight[1, 2, 0, 0] = bad
    assert not weights_finite(net)


def test_weights_finite_is_not_fooled_by_a_norm_that_overflows():
    from jointreg.training.steps import weights_finite

    net = torch.nn.Linear(64, 64)
    with torch.no_grad():
        net.weight.fill_(1e30)  # finite, but the sum of squares overflows float32
    assert not torch.isfinite(torch.linalg.vector_norm(net.weight))
    assert weights_finite(net)
    assert weights_finite(torch.nn.ReLU())  # no weights at all


def test_chain_labelled_group_is_not_registered_again(volumes):
    """With chain labels and no residual rule the propagated group's targets need no registration:
    the network is not called for it, and the targets equal those of a registered draw."""
    from jointreg.nets.registration import create_registration_net
    from jointreg.training.propagation import SegmentationGroups

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.calls = create_registration_net("fmirnet", spatial_dims=2, features=[8, 16, 16]), 0

        def forward(self, moving, fixed):
            self.calls += 1
            return self.net(moving, fixed)

    def groups(trust=()):
        return SegmentationGroups(volumes, pairs=PairConfig(radius=2),
                                  propagation=PropagationConfig(method="chain", radius=4, trust=trust, background_margin=2),
                                  warped_weight=1.0, propagated_weight=1.0, num_classes=5, ignore_index=5,
                                  device=torch.device("cpu"))

    torch.manual_seed(0)
    net, g = Counting(), groups()
    g.refresh(net, version=0)
    net.calls = 0
    warped, propagated = g.draw(net, 4, np.random.default_rng(0))
    assert net.calls == 1  # the warped group only (the two groups draw different pairs)
    assert warped.warped_images is not None and propagated.warped_images is None
    # The same pairs labelled with the registration: the same targets.
    rng = np.random.default_rng(0)
    g._batch(g.warp_sampler, 4, rng, None)
    batch = g._batch(g.propagation_sampler, 4, rng, None)
    registered = g.policy.label(net, batch, warp=True, **g._chained(batch))
    assert torch.equal(registered.fixed_targets, propagated.fixed_targets)
    # A residual rule needs the warped images: then the pairs are registered.
    net.calls = 0
    residual = groups(trust=("residual",))
    residual.refresh(net, version=0)
    net.calls = 0
    residual.draw(net, 4, np.random.default_rng(0))
    assert net.calls == 2
