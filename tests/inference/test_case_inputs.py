"""jointreg.inference.case_inputs: files, folders and datasets expanded into named cases."""

import numpy as np
import pytest

from jointreg.data.nifti import write_volume
from jointreg.errors import InputError
from jointreg.inference.case_inputs import collect_inputs


def test_collect_inputs(tmp_path, make_dataset):
    root = make_dataset(n_cases=2, modality="T2")
    loose = tmp_path / "loose"
    loose.mkdir()
    affine = np.eye(4)
    for name in ("b_0000.nii.gz", "a.nii", "notes.txt"):
        if name.endswith(".txt"):
            (loose / name).write_text("x")
        else:
            write_volume(loose / name, np.zeros((4, 4, 2), np.float32), affine=affine)
    items = collect_inputs([root, loose])
    assert [(i.case, i.modality) for i in items] == [("case000", "T2"), ("case001", "T2"), ("a", None), ("b", None)]
    with pytest.raises(InputError, match="case name 'a' is also given by"):
        collect_inputs([loose, loose / "a.nii"])
    with pytest.raises(InputError, match="not a NIfTI file"):
        collect_inputs([loose / "notes.txt"])
    with pytest.raises(InputError, match="not found"):
        collect_inputs([tmp_path / "nothing.nii.gz"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no .nii"):
        collect_inputs([empty])
