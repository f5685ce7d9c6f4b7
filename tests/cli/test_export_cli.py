"""`jointreg export`: files and metadata, bad input (exit 2, one line, nothing overwritten)."""

import json
import shutil

from jointreg.cli.main import main


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_export_onnx(trained_run, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(trained_run["run"]), "--format", "onnx", "--out", str(out), "--size", "40", "48"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'registration.onnx'} (+ registration.json)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["registration.json", "registration.onnx", "segmentor.json", "segmentor.onnx"]
    assert json.loads((out / "segmentor.json").read_text())["inputs"][0]["shape"] == ["batch", 1, 40, 48]


def test_existing_files_are_kept(trained_run, tmp_path, capsys):
    out = tmp_path / "ts"
    out.mkdir()
    (out / "segmentor.pt").write_bytes(b"mine")
    assert main(["export", str(trained_run["run"] / "export" / "segmentor"), "--format", "torchscript", "--out", str(out)]) == 2
    assert _error_line(capsys) == f"jointreg export: error: {out / 'segmentor.pt'}: already exists (pass --overwrite to replace it)"
    assert (out / "segmentor.pt").read_bytes() == b"mine"


def test_run_without_exports_and_other_versions(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: run\n")
    assert main(["export", str(run), "--format", "onnx"]) == 2
    assert "neither a model folder nor a run folder with exports" in _error_line(capsys)
    shutil.copytree(trained_run["run"] / "export" / "segmentor", run / "export" / "segmentor")
    config = json.loads((run / "export" / "segmentor" / "config.json").read_text())
    config["format_version"] = 0
    (run / "export" / "segmentor" / "config.json").write_text(json.dumps(config))
    assert main(["export", str(run), "--format", "onnx"]) == 2
    assert "model format version 0 is not supported" in _error_line(capsys)
    assert not (run / "export" / "onnx").exists()
