"""Case montages and their galleries: contours, colours, slice choice, worst-first pages whose
links resolve."""

import re

import numpy as np
import pytest
from PIL import Image

from jointreg.data.nifti import write_volume
from jointreg.metrics.gallery import (
    GALLERY_MD,
    MethodPredictions,
    case_scores,
    combined_scores,
    write_gallery,
    write_method_gallery,
)
from jointreg.metrics.montage import (
    CLASS_COLOURS,
    TRUTH_COLOUR,
    MontageColumn,
    choose_slices,
    contour,
    draw_contours,
    render_montage,
    through_plane_axis,
    write_png,
)
from jointreg.metrics.segmentation import ClassMetrics

RED, GREEN = CLASS_COLOURS[1], CLASS_COLOURS[2]


def _square(shape=(10, 12), rows=slice(2, 6), cols=slice(3, 8)):
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def _ring(shape=(10, 12)):
    """The border pixels of ``_square()``, written out by hand."""
    ring = np.zeros(shape, bool)
    ring[2, 3:8] = ring[5, 3:8] = True
    ring[2:6, 3] = ring[2:6, 7] = True
    return ring


def test_contour_of_a_square_is_exactly_its_border_pixels():
    assert np.array_equal(contour(_square()), _ring())
    # A mask reaching the image border is closed there; a one-pixel line is all contour.
    full = np.ones((3, 4), bool)
    assert np.array_equal(contour(full), ~np.pad(np.ones((1, 2), bool), 1, constant_values=False))
    line = np.zeros((5, 5), bool)
    line[2, 1:4] = True
    assert np.array_equal(contour(line), line)
    assert not contour(np.zeros((4, 4), bool)).any()


def test_draw_contours_colours_the_border_in_the_class_colour_only():
    labels = np.where(_square(), 1, 0)
    labels[8, 10] = 9  # e.g. ignore: not drawn
    grey = np.full((10, 12, 3), 100, np.uint8)
    out = draw_contours(grey, labels, [1, 2])
    assert np.array_equal(out[_ring()], np.tile(RED, (_ring().sum(), 1)))
    assert (out[~_ring()] == 100).all()  # inside, outside and the ignore pixel are untouched
    white = draw_contours(grey, labels, [1], colour=TRUTH_COLOUR)
    assert (white[_ring()] == 255).all() and (grey == 100).all()  # the input is not modified


def _red_pixels(picture, colour=RED):
    return np.all(picture == colour, axis=-1)


def test_montage_draws_truth_and_prediction_contours_in_place():
    truth = np.where(_square(), 1, 0)
    prediction = np.where(_square(rows=slice(4, 8)), 1, 0)  # shifted down by 2 rows
    column = MontageColumn(None, truth, (prediction,), caption="slice 0")
    picture = render_montage([column], {"liver": 1}, rows=("prediction",), tile=12, title="case")
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    red = _red_pixels(picture)
    red[-20:] = False  # the legend's swatch
    rows, cols = np.nonzero(red)
    top, left = rows.min() - 2, cols.min() - 3  # where the truth tile starts (its ring begins at (2, 3))
    truth_tile = red[top:top + 10, left:left + 12]
    assert np.array_equal(truth_tile, _ring())
    # The prediction row below: its own ring in red, the truth's ring in white where they differ.
    below = np.nonzero(red[top + 10:].any(axis=1))[0][0] + top + 10 - 4
    assert np.array_equal(red[below:below + 10, left:left + 12], contour(prediction == 1))
    white = _red_pixels(picture, TRUTH_COLOUR)[below:below + 10, left:left + 12]
    assert np.array_equal(white, _ring() & ~contour(prediction == 1))
    assert red.sum() == _ring().sum() + contour(prediction == 1).sum()  # nothing drawn elsewhere


def test_montage_keeps_the_physical_aspect_of_pixels():
    column = MontageColumn(np.zeros((10, 10)), None, (np.zeros((10, 10), int),), aspect=2.0)
    picture = render_montage([column], {"liver": 1}, tile=40)
    dark = np.all(picture == 0, axis=-1)  # the black image tile
    rows, cols = np.nonzero(dark)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (40, 20)


def test_slices_are_the_worst_then_spread_through_the_labelled_extent():
    truth = np.zeros((12, 6, 6), int)
    truth[2:9, 1:5, 1:5] = 1
    prediction = truth.copy()
    prediction[5] = 1  # most wrong
    prediction[7, 2, 2] = 0  # a little wrong
    assert choose_slices(truth, [prediction], 4) == [3, 5, 6, 7]
    assert choose_slices(truth, [truth], 4) == [3, 4, 6, 7]  # no disagreement: evenly through 2..8
    assert choose_slices(np.zeros((5, 2, 2), int), [], 2) == [1, 3]  # nothing labelled: the whole volume
    ignored = truth.copy()
    ignored[5] = 9  # the disagreement lies in ignore voxels: not counted
    assert 5 not in choose_slices(ignored, [prediction], 1, ignore_label=9)
    assert through_plane_axis((1.0, 1.0, 3.0)) == 2 and through_plane_axis((2.0, 1.0, 1.0)) == 0
    assert through_plane_axis((1.0, 1.0, 1.0)) == 2


def test_write_png_round_trips_and_leaves_no_temporary(tmp_path):
    picture = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = write_png(tmp_path / "a" / "m.png", picture)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), picture)
    assert [p.name for p in path.parent.iterdir()] == ["m.png"]


def _links(text):
    return re.findall(r"\]\(([^)]+)\)", text)


def test_gallery_is_worst_first_and_its_links_resolve(tmp_path):
    rows = [
        ClassMetrics("good", "liver", 1, 0.9, 1.0, 1.0, 0.5),
        ClassMetrics("bad", "liver", 1, 0.0, np.nan, np.nan, np.nan, missed=True),
        ClassMetrics("middle", "liver", 1, 0.6, 3.0, 2.0, 1.0),
        ClassMetrics.missing("absent", "liver", 1),
    ]
    scores = case_scores(rows)
    assert scores["bad"] == (0.0, "liver 0.000 (missed)") and scores["absent"] == (None, "no prediction")
    picture = np.zeros((4, 4, 3), np.uint8)
    entries = write_gallery(tmp_path, {c: picture for c in ("good", "bad", "middle")}, scores, title="t")
    assert [e.case for e in entries] == ["bad", "middle", "good"]
    page = (tmp_path / GALLERY_MD).read_text()
    assert page.index("| bad |") < page.index("| middle |") < page.index("| good |")
    links = _links(page)
    assert links and all((tmp_path / link).is_file() for link in links)


def test_combined_scores_order_the_hardest_case_first():
    a = [ClassMetrics("c1", "liver", 1, 0.9, 1, 1, 1), ClassMetrics("c2", "liver", 1, 0.5, 1, 1, 1)]
    b = [ClassMetrics("c1", "liver", 1, 0.7, 1, 1, 1), ClassMetrics("c2", "liver", 1, 0.1, 1, 1, 1)]
    scores = combined_scores({"UNet": a, "RUNet": b})
    assert scores["c2"][0] == pytest.approx(0.3) and scores["c1"][0] == pytest.approx(0.8)
    assert scores["c2"][1] == "UNet 0.500, RUNet 0.100"


def test_method_gallery_matches_prediction_ids_by_name(tmp_path):
    """Two methods' predictions of one case; one of them writes liver as id 1 while the dataset
    calls it 2: the montage draws both in the liver's colour, and the page links the picture."""
    import json

    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    root = tmp_path / "ds"
    (root / "labelsTs").mkdir(parents=True)
    labels = {"background": 0, "spleen": 1, "liver": 2}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": 0, "file_ending": ".nii.gz"}))
    truth = np.zeros((16, 16, 5), np.int16)
    truth[4:12, 4:12, 1:4] = 2
    write_volume(root / "labelsTs" / "c1.nii.gz", truth, affine=affine, is_label=True)
    own_ids = tmp_path / "a"
    write_volume(own_ids / "c1.nii.gz", (truth == 2).astype(np.int16), affine=affine, is_label=True)
    (own_ids / "segmentation.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    same_ids = tmp_path / "b"
    write_volume(same_ids / "c1.nii.gz", truth, affine=affine, is_label=True)
    methods = [MethodPredictions("A", ((own_ids, root / "labelsTs"),)),
               MethodPredictions("B", ((same_ids, root / "labelsTs"),))]
    entries = write_method_gallery(tmp_path / "out", methods, {"c1": (0.5, "A 1.000, B 1.000")}, ["liver"], title="s")
    assert [e.case for e in entries] == ["c1"]
    picture = np.asarray(Image.open(tmp_path / "out" / "montages" / "c1.png").convert("RGB"))
    liver = np.all(picture == CLASS_COLOURS[2], axis=-1)
    spleen = np.all(picture == CLASS_COLOURS[1], axis=-1)
    # Three rows (truth, A, B) × the 3 labelled slices each draw the same liver ring (the 8×8
    # square at 10 display pixels per voxel: 80×80), in the liver's colour; nothing in spleen's.
    ring = contour(np.ones((80, 80), bool)).sum()
    assert liver[:-20].sum() == 9 * ring and not spleen[:-20].any()
    assert all((tmp_path / "out" / link).is_file() for link in _links((tmp_path / "out" / GALLERY_MD).read_text()))
