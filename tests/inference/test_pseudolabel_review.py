"""The picture page of a pseudo-label output: worst case first, links that resolve."""

import json
import re
import shutil

from jointreg.data.dataset import Dataset
from jointreg.data.nifti import read_label, write_volume
from jointreg.inference.pseudolabel_review import write_pseudolabel_review

LABELS = {"background": 0, "organ": 1, "other": 2}
LUT = (0, 1, 2, 3)  # dataset id -> output id; ignore (3) -> len(LABELS)


def _output(make_dataset, tmp_path, *, full: bool):
    """A source dataset and a pseudo-label output: case000 exact, case001 without the organ."""
    source = Dataset.open(make_dataset(n_cases=2, ignore=True))
    out = tmp_path / "pseudo"
    for case in source.cases("Tr"):
        truth = read_label(source.label_path(case))
        if full:
            write_volume(source.label_path(case, full=True), truth.array, reference=truth, is_label=True)
        pseudo = truth.array.copy()
        if case == "case001":
            pseudo[pseudo == 1] = 0
        write_volume(out / "labelsTr" / f"{case}.nii.gz", pseudo, reference=truth, is_label=True)
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(source.image_path(case), out / "imagesTr" / source.image_path(case).name)
    return source, out


def _page_order(page):
    return re.findall(r"^\| \d+ \| (\S+) \|", page, flags=re.M)


def test_with_complete_labels_the_lowest_dice_comes_first(make_dataset, tmp_path):
    source, out = _output(make_dataset, tmp_path, full=True)
    page = write_pseudolabel_review(out, source, LABELS, LUT, progress=False)
    text = page.read_text()
    assert _page_order(text) == ["case001", "case000"]
    assert "organ 0.000, other 1.000 (vs labelsTr_full)" in text and "organ 1.000, other 1.000" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) == 4 and all((out / link).is_file() for link in links)
    assert sorted(p.name for p in (out / "montages").iterdir()) == ["case000.png", "case001.png"]


def test_without_complete_labels_fusion_agreement_orders_the_cases(make_dataset, tmp_path):
    source, out = _output(make_dataset, tmp_path, full=False)
    (out / "provenance").mkdir()
    for case, agreement in (("case000", 0.4), ("case001", 0.9)):
        slices = [{"index": 0, "annotation": "none", "agreement": agreement}, {"index": 1, "annotation": "complete"}]
        (out / "provenance" / f"{case}.json").write_text(json.dumps({"case": case, "slices": slices}))
    text = write_pseudolabel_review(out, source, LABELS, LUT, progress=False).read_text()
    assert _page_order(text) == ["case000", "case001"] and "agreement 0.400" in text
    # No signal at all: the cases keep their order, and the page says why.
    shutil.rmtree(out / "provenance")
    text = write_pseudolabel_review(out, source, LABELS, LUT, progress=False).read_text()
    assert _page_order(text) == ["case000", "case001"] and "No quality signal" in text
