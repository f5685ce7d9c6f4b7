"""Largest-connected-component post-processing: known answers, the decision rule, and that the
exported segmentor carries the decision to `segment`."""

import numpy as np
import pytest
import torch

from jointreg.inference.postprocess import choose_largest_component, keep_largest_component, largest_component_classes


def _two_blobs():
    labels = np.zeros((6, 10, 10), np.int16)
    labels[1:4, 1:5, 1:5] = 1      # 48 voxels: the organ
    labels[4:6, 8:10, 8:10] = 1    # 8 voxels, elsewhere: a false positive
    labels[0, 7:9, 0:2] = 2        # another class, two pieces
    labels[5, 0, 0] = 2
    return labels


def test_only_the_largest_piece_of_a_class_is_kept():
    labels = _two_blobs()
    cleaned = keep_largest_component(labels, [1])
    assert (cleaned == 1).sum() == 48 and (cleaned[4:6, 8:10, 8:10] == 0).all()
    assert np.array_equal(cleaned == 2, labels == 2)  # class 2 not asked for
    both = keep_largest_component(labels, [1, 2])
    assert (both == 2).sum() == 4 and both[5, 0, 0] == 0
    # Pieces touching only along an edge are separate (face connectivity).
    diagonal = np.zeros((1, 3, 3), np.int16)
    diagonal[0, 0, 0] = diagonal[0, 1, 1] = 1
    assert (keep_largest_component(diagonal, [1]) == 1).sum() == 1
    assert keep_largest_component(np.zeros((2, 2), np.int16), [1]).sum() == 0


def test_the_rule_is_applied_when_it_does_not_lower_the_dice():
    prediction = _two_blobs()
    truth = np.zeros_like(prediction)
    truth[1:4, 1:5, 1:5] = 1
    truth[0, 7:9, 0:2] = 2
    truth[5, 0, 0] = 2  # class 2 really has two pieces: cleaning it loses one voxel
    decision = choose_largest_component([(prediction, truth)], [1, 2])
    assert decision["largest_component"] == [1]
    assert decision["dice"]["1"]["raw"] == pytest.approx(2 * 48 / (56 + 48))
    assert decision["dice"]["1"]["largest_component"] == 1.0
    assert decision["dice"]["2"]["largest_component"] < decision["dice"]["2"]["raw"] == 1.0
    # Voxels whose truth is unknown are not scored: an ignored false positive is a tie -> applied.
    sparse = np.full_like(truth, 9)
    sparse[1:4] = truth[1:4]
    assert choose_largest_component([(prediction, sparse)], [1], ignore_label=9)["largest_component"] == [1]


def test_model_configs_without_a_decision_clean_nothing():
    assert largest_component_classes({}) == []
    assert largest_component_classes({"extra": {"postprocessing": {"largest_component": [1, 3]}}}) == [1, 3]


class TwoBlobs(torch.nn.Module):
    """A stand-in segmentor: class 1 in two separate squares of every slice, whatever the input."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 0] = 1.0
        logits[:, 1, 2:10, 2:10] = 5.0
        logits[:, 1, 14:16, 14:16] = 5.0
        return logits


@pytest.mark.parametrize("classes", [[], [1]])
def test_segment_applies_the_rule_the_model_folder_carries(classes):
    from jointreg.data.nifti import Volume
    from jointreg.export.model_folder import LoadedModel
    from jointreg.inference.segment import segment_volume

    config = {"preprocessing": {"axis": 2, "size": [20, 20], "normalization": "none"}, "modality": "CT",
              "labels": {"background": 0, "organ": 1}, "extra": {"postprocessing": {"largest_component": classes}}}
    model = LoadedModel(TwoBlobs(), "segmentor", "stub", config)
    image = Volume(np.zeros((20, 20, 3), np.float32), np.eye(4))
    labels = segment_volume(model, image).labels
    assert (labels[2:10, 2:10] == 1).all()
    assert (labels[14:16, 14:16] == (0 if classes else 1)).all()
