import json

import numpy as np

from jointreg.data.dataset import Dataset, write_spec
from jointreg.data.validate import validate_dataset


def test_clean_dataset_has_no_problems_and_a_known_summary(make_dataset):
    root = make_dataset(n_cases=3, shape=(32, 24, 8), spacing=(1.5, 1.5, 4.0))
    report = validate_dataset(root)
    assert report.ok, report.problems
    assert report.warnings == []
    s = report.summary
    assert s["cases"] == {"Tr": {"images": 3, "labels": 3}}
    assert sum(s["voxels_per_class"]["Tr"].values()) == 3 * 32 * 24 * 8
    assert set(s["voxels_per_class"]["Tr"]) == {"background", "organ", "other"}
    # Slices cut along z (4 mm): 3 volumes x 8 slices, no ignore label.
    assert s["through_plane_axes"] == {"2": 3}
    assert sum(s["slices_per_status"]["Tr"].values()) == 24
    assert s["slices_per_status"]["Tr"]["unannotated"] == 0
    assert s["spacing_mm"] == {"min": [1.5, 1.5, 4.0], "max": [1.5, 1.5, 4.0]}
    assert s["shape"] == {"min": [32, 24, 8], "max": [32, 24, 8]}
    json.dumps(report.to_dict())


def test_all_problems_are_collected_not_just_the_first(make_dataset):
    root = make_dataset(n_cases=3, shape=(16, 16, 4))
    ds = Dataset.open(root)
    ds.image_path("case000").write_bytes(b"not a nifti at all")
    label = ds.read_label("case001")
    ds.write_label("case001", np.full(label.shape, 5, np.int16), reference=label)
    (ds.labels_dir() / "case002.nii.gz").unlink()
    report = validate_dataset(root)
    paths = sorted(p.split("/")[-1] for p, _ in report.problems)
    assert paths == ["case000_0000.nii.gz", "case001.nii.gz", "case002_0000.nii.gz"], report.problems
    assert not report.ok


def test_num_training_mismatch_is_a_problem(make_dataset):
    root = make_dataset(n_cases=2, shape=(16, 16, 4))
    ds = Dataset.open(root)
    write_spec(root, ds.spec.replace(num_training=5))
    report = validate_dataset(root)
    assert report.problems == [(str(root / "dataset.json"),
                                "numTraining is 5 but imagesTr holds 2 case(s) (nnU-Net refuses such datasets: "
                                "set numTraining to 2)")]


def test_sparse_dataset_statuses_and_all_ignore_case_is_a_warning(make_dataset):
    root = make_dataset(n_cases=2, shape=(16, 16, 6), ignore=True)
    ds = Dataset.open(root)
    full = ds.read_label("case000")
    sparse = np.full(full.shape, 3, np.int16)
    sparse[..., 3] = full.array[..., 3]
    ds.write_label("case000", sparse, reference=full)
    ds.write_label("case000", full.array, reference=full, full=True)
    ds.write_label("case001", np.full(full.shape, 3, np.int16), reference=full)
    report = validate_dataset(root)
    assert report.ok, report.problems
    assert [p.split("/")[-1] for p, _ in report.warnings] == ["case001.nii.gz"]
    status = report.summary["slices_per_status"]["Tr"]
    assert status == {"annotated": 1, "empty-annotated": 0, "unannotated": 11}
    # A full label that contradicts the sparse one is a problem.
    wrong = full.array.copy()
    wrong[..., 3] = 0
    ds.write_label("case000", wrong, reference=full, full=True)
    problems = validate_dataset(root).problems
    assert len(problems) == 1 and "disagree with the full label" in problems[0][1]


def test_test_split_pairing_and_extra_channel(make_dataset):
    root = make_dataset(n_cases=2, shape=(16, 16, 4))
    ds = Dataset.open(root)
    image, label = ds.read_image("case000"), ds.read_label("case000")
    ds.write_image("test0", image.array, reference=image, split="Ts")
    ds.write_image("test1", image.array, reference=image, split="Ts")
    ds.write_label("test0", label.array, reference=label, split="Ts")
    (ds.images_dir() / "case000_0001.nii.gz").write_bytes(ds.image_path("case000").read_bytes())
    report = validate_dataset(root)
    found = {p.split("/")[-1]: m for p, m in report.problems}
    assert set(found) == {"test1_0000.nii.gz", "case000_0001.nii.gz"}
    assert "no label file" in found["test1_0000.nii.gz"]
    assert "single-channel" in found["case000_0001.nii.gz"]
    assert report.summary["cases"]["Ts"] == {"images": 2, "labels": 1}


def test_missing_folder():
    report = validate_dataset("/nonexistent/jointreg-dataset")
    assert report.problems == [("/nonexistent/jointreg-dataset", "dataset folder not found")]


def test_unusual_nifti_content_is_reported_per_file(make_dataset):
    import gzip
    import struct

    import nibabel as nib

    root = make_dataset(n_cases=4, shape=(16, 16, 4))
    ds = Dataset.open(root)
    affine = nib.load(ds.image_path("case000")).affine
    rgb = np.zeros((16, 16, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, affine), ds.image_path("case000"))
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4), np.complex64), affine), ds.image_path("case001"))
    scaled = nib.Nifti1Image(ds.read_label("case002").array, affine)
    scaled.header.set_slope_inter(2.0, 0.0)
    nib.save(scaled, ds.label_path("case002"))
    # case003: pixdim[3] = 0 in a header whose affine comes from the qform
    path = ds.image_path("case003")
    block = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", block, 88, 0.0)
    struct.pack_into("<hh", block, 252, 1, 0)
    path.write_bytes(gzip.compress(bytes(block)))

    report = validate_dataset(root)
    found = {p.split("/")[-1]: m.split(":")[0] for p, m in report.problems}
    assert found == {
        "case000_0000.nii.gz": "colour data (RGB, datatype 128) is not supported",
        "case001_0000.nii.gz": "complex-valued data (complex64, datatype 32) is not supported",
        "case002.nii.gz": "label map has an intensity scaling (scl_slope 2, scl_inter 0) that would change its label values on reading; store labels unscaled (scl_slope 1, scl_inter 0)",
        "case003_0000.nii.gz": "voxel spacing along axis 2 is 0 (pixdim[3])",
    }, report.problems


def test_scaled_images_are_a_warning_stating_the_conversion(make_dataset):
    import nibabel as nib

    root = make_dataset(n_cases=2, shape=(16, 16, 4))
    ds = Dataset.open(root)
    source = nib.load(ds.image_path("case001"))
    img = nib.Nifti1Image(np.rint(np.asanyarray(source.dataobj)).astype(np.int16), source.affine)
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, ds.image_path("case001"))
    report = validate_dataset(root)
    assert report.ok, report.problems
    assert report.warnings == [(
        str(ds.image_path("case001")),
        "intensities are scaled on reading: value = 0.5 x stored + -1024 (scl_slope, scl_inter; applied as "
        "nibabel, ITK and nnU-Net apply it)",
    )]
