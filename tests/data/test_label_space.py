"""The networks' label space and the one dataset-id → network-id lookup."""

from pathlib import Path

import pytest

from jointreg.data.label_space import label_lookup, network_labels
from jointreg.errors import ConfigError, InputError

CLASSES = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3}


def test_network_labels_keep_the_dataset_order_and_background_name():
    assert network_labels(CLASSES, (), Path("d.json")) == CLASSES
    assert network_labels(CLASSES, ("spleen", "liver"), Path("d.json")) == {"background": 0, "liver": 1, "spleen": 2}
    assert network_labels({"bg": 0, "lv": 1}, (), Path("d.json")) == {"bg": 0, "lv": 1}
    with pytest.raises(ConfigError, match="'lungs' is not a foreground class of d.json \\(classes: liver, kidney, spleen\\)"):
        network_labels(CLASSES, ("lungs",), Path("d.json"))
    with pytest.raises(ConfigError, match="'background' is not a foreground class"):
        network_labels(CLASSES, ("background",), Path("d.json"))


def test_label_lookup_maps_by_name():
    lut = label_lookup({"background": 0, "liver": 1, "kidney": 2}, 3, {"background": 0, "liver": 1}, Path("d.json"))
    assert lut.tolist() == [0, 1, 0, 2]  # kidney -> background, ignore -> the networks' ignore (2)
    subset = network_labels(CLASSES, ("spleen",), Path("d.json"))
    assert label_lookup(CLASSES, 4, subset, Path("d.json")).tolist() == [0, 0, 0, 1, 2]
    with pytest.raises(InputError, match="has no class 'spleen'"):
        label_lookup({"background": 0, "liver": 1}, None, {"background": 0, "spleen": 1}, Path("d.json"))
