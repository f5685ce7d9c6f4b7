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


def test_a_temporary_name_never_exceeds_what_the_final_name_may_be(tmp_path):
    import os

    from jointreg.utils.atomic import NAME_MAX, temporary_sibling

    final = tmp_path / ("é" * 120 + ".nii.gz")  # 247 bytes: legal, but 265 with the prefix
    tmp = temporary_sibling(final)
    assert len(os.fsencode(tmp.name)) == NAME_MAX and tmp.name.endswith(".nii.gz") and tmp.name.startswith(".tmp-")
    with atomic_path(final) as path:
        path.write_text("x")
    assert final.read_text() == "x"
    assert temporary_sibling(tmp_path / "short.json").name.endswith("-short.json")


def test_describe_os_error_names_the_path_and_the_problem(tmp_path):
    import errno

    from jointreg.utils.atomic import describe_os_error

    (tmp_path / "afile").write_text("x")
    below_file = tmp_path / "afile" / "out"
    assert describe_os_error(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(below_file))) == (
        f"{below_file}: cannot be created: {tmp_path / 'afile'} is a file, not a folder")
    new = tmp_path / "new"
    assert describe_os_error(PermissionError(errno.EACCES, "Permission denied", str(new))) == (
        f"{new}: permission denied (cannot create anything in {tmp_path})")
    # a temporary sibling is reported under its final name; a rename names its target
    tmp = tmp_path / ".tmp-0123456789ab-case.nii.gz"
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device", str(tmp))) == (
        f"{tmp_path / 'case.nii.gz'}: no space left on the device")
    assert describe_os_error(OSError(errno.EROFS, "Read-only file system", str(tmp), None, str(tmp_path / "x.json"))) == (
        f"{tmp_path / 'x.json'}: read-only file system (cannot create anything in {tmp_path})")
    long = tmp_path / ("y" * 300) / "inside.pt"
    message = describe_os_error(OSError(errno.ENAMETOOLONG, "File name too long", str(long)))
    assert message.startswith(f"{tmp_path / ('y' * 300)}: name too long: ") and "has 300 bytes, the file system allows 255" in message
    assert describe_os_error(FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "afile"))) == (
        f"{tmp_path / 'afile'}: exists and is not a folder")
    # not the environment's: programming errors keep their tracebacks
    assert describe_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", str(new))) is None
    assert describe_os_error(OSError(errno.EACCES, "Permission denied")) is None  # names no path
    assert describe_os_error(ValueError("x")) is None


def test_check_writable_output_refuses_before_any_work(tmp_path):
    from jointreg.errors import InputError
    from jointreg.utils.atomic import check_writable_output

    (tmp_path / "afile").write_text("x")
    check_writable_output(tmp_path / "new" / "deeper")  # missing folders are fine
    check_writable_output(tmp_path)
    with pytest.raises(InputError, match=r"afile/out/x: cannot be created: .*/afile is a file, not a folder$"):
        check_writable_output(tmp_path / "afile" / "out" / "x")
    with pytest.raises(InputError, match=r"afile: exists and is not a folder$"):
        check_writable_output(tmp_path / "afile")
    with pytest.raises(InputError, match=r"name too long: 'z{20}\.\.\.z{12}' has 256 bytes, the file system allows 255$"):
        check_writable_output(tmp_path / ("z" * 256) / "out")
    assert list(tmp_path.iterdir()) == [tmp_path / "afile"]  # nothing was created


def test_check_writable_output_sees_a_read_only_file_system(tmp_path, monkeypatch):
    import os

    from jointreg.errors import InputError
    from jointreg.utils.atomic import check_writable_output

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(InputError, match=r"out: read-only file system \(cannot create anything in .*\)$"):
        check_writable_output(tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match=r"exists: read-only file system$"):
        check_writable_output(tmp_path / "exists")
