"""The network-size bound (counted on the meta device before building) and its side effects."""

import pytest
import torch

from jointreg.errors import ConfigError
from jointreg.nets import arguments
from jointreg.nets.registration import create_registration_net
from jointreg.nets.segmentation import create_segmentor
from jointreg.nets.segmentation.fcn import FCN

TINY_FCN = {"in_channels": 1, "classes": 2, "features": [4, 8, 8, 8, 8], "head_channels": 8}


def _elements(net):
    return sum(t.numel() for t in (*net.parameters(), *net.buffers()))


def test_the_bound_is_exactly_the_parameter_and_buffer_count(monkeypatch):
    count = _elements(FCN(**TINY_FCN))
    monkeypatch.setattr(arguments, "MAX_PARAMETERS", count)
    assert _elements(create_segmentor("fcn", **TINY_FCN)) == count
    monkeypatch.setattr(arguments, "MAX_PARAMETERS", count - 1)
    with pytest.raises(ConfigError) as caught:
        create_segmentor("fcn", **TINY_FCN)
    assert str(caught.value).startswith(f"segmentor fcn: these arguments build a network of {count:.3g} parameters")


@pytest.mark.parametrize("build", [
    lambda: create_segmentor("fcn", **TINY_FCN),
    lambda: create_segmentor("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[8, 8, 8]),
    lambda: create_registration_net("fmirnet", features=[4, 8, 8]),
], ids=["fcn", "unet", "fmirnet"])
def test_the_probe_leaves_seeded_initial_weights_unchanged(monkeypatch, build):
    torch.manual_seed(3)
    probed = build().state_dict()
    after_probe = torch.rand(1)
    # Without the probe: build_bounded reduced to the real build.
    monkeypatch.setattr(arguments, "build_bounded", lambda make, *_: make())
    torch.manual_seed(3)
    plain = build().state_dict()
    assert torch.rand(1) == after_probe
    assert probed.keys() == plain.keys()
    assert all(torch.equal(probed[k], plain[k]) for k in probed)


def test_the_probe_allocates_nothing_for_a_huge_request():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=r"voxelmorph: these arguments build a network of 9\.01e\+10 parameters \(360\.3 GB"):
        create_registration_net("voxelmorph", enc=[16, 32, 32, 100_000], dec=[100_000, 32, 32, 32, 32, 16, 16])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200  # the real build would need 360 GB
