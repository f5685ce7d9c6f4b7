"""The console script: help for every command without loading the heavy libraries."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jointreg.cli.main import main

# What `jointreg --help` and `jointreg COMMAND --help` must not import: the numerical stack loads
# only when a command runs. (Checked directly, not with a wall-clock limit, which flakes on a
# loaded machine.)
HEAVY = (
    "torch", "numpy", "scipy", "nibabel", "monai", "segmentation_models_pytorch", "albumentations", "cv2",
    "matplotlib", "tensorboard", "safetensors", "pydicom", "PIL", "onnx", "onnxruntime",
)
COMMANDS = ("prepare", "validate", "sparsify", "train", "register", "segment", "pseudolabel", "evaluate", "export", "study", "demo")

HELP_EVERYWHERE = """
import contextlib, io, json, sys
from jointreg.cli.main import build_parser, main

parser = build_parser()
commands = sorted(next(a for a in parser._actions if a.dest == "command").choices)
texts = {}
for argv in [["--help"]] + [[name, "--help"] for name in commands]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    texts[" ".join(argv)] = buffer.getvalue()
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"commands": commands, "texts": texts, "heavy": loaded}))
"""


def test_help_of_every_command_loads_no_heavy_module():
    done = subprocess.run([sys.executable, "-c", HELP_EVERYWHERE, *HEAVY], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert set(COMMANDS) <= set(result["commands"])
    top = result["texts"]["--help"]
    assert top.startswith("usage: jointreg") and all(name in top for name in COMMANDS)
    for name in result["commands"]:
        assert result["texts"][f"{name} --help"].startswith(f"usage: jointreg {name}"), name


def _console_script() -> str:
    found = shutil.which("jointreg") or str(Path(sys.executable).with_name("jointreg"))
    assert Path(found).exists(), "the jointreg console script is not installed"
    return found


def test_console_script_help_imports_no_heavy_module():
    # PYTHONPROFILEIMPORTTIME makes the interpreter report every module it imports on stderr.
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([_console_script(), "--help"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "commands" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "jointreg" in imported  # the report is there...
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))  # ...and names none of them


def test_version_flag_prints_the_package_version(capsys):
    from jointreg.version import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"jointreg {__version__}"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: jointreg" in capsys.readouterr().out


def _raising(exc):
    def run(args):
        raise exc

    return run


def test_an_os_error_on_a_path_is_one_line_with_exit_code_2(monkeypatch, tmp_path, capsys):
    import errno

    import jointreg.cli.validate as command

    (tmp_path / "read_only").mkdir()
    target = tmp_path / "read_only" / "report.json"
    monkeypatch.setattr(command, "run", _raising(PermissionError(errno.EACCES, "Permission denied", str(target))))
    assert main(["validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"jointreg validate: error: {target}: permission denied (cannot create anything in {tmp_path / 'read_only'})\n")


@pytest.mark.parametrize("exc", [
    FileNotFoundError(2, "No such file or directory", "gone.json"),  # a missing file that got this far is a bug
    OSError(13, "Permission denied"),                                 # names no path
])
def test_other_os_errors_keep_their_traceback(monkeypatch, tmp_path, exc):
    import jointreg.cli.validate as command

    monkeypatch.setattr(command, "run", _raising(exc))
    with pytest.raises(type(exc)):
        main(["validate", str(tmp_path)])
