import numpy as np
import pytest

from jointreg.data.pairs import PairSampler, labelled_slices
from jointreg.data.slices import PlaneGeometry, SlicedVolume, SliceStatus


def _volume(statuses: str, case: str = "c") -> SlicedVolume:
    """A fake sliced volume: 'A' annotated, 'E' empty-annotated, '.' unannotated."""
    kinds = {"A": SliceStatus.ANNOTATED, "E": SliceStatus.EMPTY, ".": SliceStatus.UNANNOTATED}
    n = len(statuses)
    return SlicedVolume(
        case=case, axis=2, images=np.zeros((n, 4, 4), np.float32), labels=np.zeros((n, 4, 4), np.int16),
        status=tuple(kinds[c] for c in statuses), geometry=PlaneGeometry((4, 4), (1.0, 1.0), (4, 4)),
        reference=None, source_shape=(4, 4, n),
    )


def test_labelled_slices_include_empty_annotated():
    assert labelled_slices(_volume("..A.E..")) == [2, 4]


def test_same_volume_pairs_respect_the_radius():
    sampler = PairSampler([_volume("....A....")], radius=2)
    pairs = sampler.same_volume_pairs()
    assert [(p.fixed[1], p.distance) for p in pairs] == [(2, 2), (3, 1), (5, 1), (6, 2)]
    assert all(p.moving == (0, 4) and p.same_volume for p in pairs)


def test_sampling_is_deterministic_and_stays_in_radius():
    sampler = PairSampler([_volume("A........"), _volume("....A....")], radius=3)
    a = sampler.sample(50, np.random.default_rng(1))
    b = sampler.sample(50, np.random.default_rng(1))
    assert a == b
    for p in a:
        assert p.same_volume and 1 <= p.distance <= 3
        assert p.moving in ((0, 0), (1, 4))


def test_cross_volume_pairs_match_relative_position():
    sampler = PairSampler([_volume("A" + "." * 9), _volume("." * 20)], radius=1, cross_volume=1.0)
    for p in sampler.sample(30, np.random.default_rng(0)):
        assert p.fixed[0] == 1 and p.moving == (0, 0)
        assert p.fixed[1] <= 1  # relative position 0 ± radius


def test_unannotated_moving_draws_any_slice():
    sampler = PairSampler([_volume("A....")], radius=1, unannotated_moving=1.0)
    movers = {p.moving[1] for p in sampler.sample(200, np.random.default_rng(0))}
    assert movers == {0, 1, 2, 3, 4}


def test_no_usable_annotation_is_an_error():
    with pytest.raises(ValueError, match="no annotated slice"):
        PairSampler([_volume("....."), _volume("A")], radius=2)


def test_annotated_fixed_pairs_join_annotated_slices_of_other_volumes():
    sampler = PairSampler([_volume("..A.."), _volume(".A..."), _volume("....E")], radius=1, annotated_fixed=1.0)
    for p in sampler.sample(40, np.random.default_rng(0)):
        assert p.moving[0] != p.fixed[0]
        assert p.moving in ((0, 2), (1, 1), (2, 4)) and p.fixed in ((0, 2), (1, 1), (2, 4))
