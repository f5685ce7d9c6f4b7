import pytest

from jointreg.utils.atomic import atomic_dir, atomic_path, remove_stale_temporaries, write_json


def test_atomic_path_renames_on_success_and_cleans_on_error(tmp_path):
    with atomic_path(tmp_path / "a.nii.gz") as tmp:
        assert tmp.name.endswith("-a.nii.gz") and tmp.name.startswith(".tmp-")
        tmp.write_text("x")
    assert (tmp_path / "a.nii.gz").read_text() == "x"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_atomic_dir_only_appears_complete(tmp_path):
    with pytest.raises(KeyError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("1")
            raise KeyError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "out" / "f").read_text() == "1"


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".tmp-1-x.json").write_text("{")
    (tmp_path / ".tmp-2-dir").mkdir()
    write_json(tmp_path / "keep.json", {"a": 1})
    assert remove_stale_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]
