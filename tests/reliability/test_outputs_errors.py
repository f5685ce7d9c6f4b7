"""Outputs that cannot be written: every writing subcommand says so in one line, exit code 2.

For each subcommand that writes (train, segment, pseudolabel, register, evaluate, export,
sparsify, prepare, study, demo) and each way an output can be impossible (its parent is a file,
a name longer than the file system allows, a read-only parent folder) the command must print
exactly one line ``jointreg CMD: error: PATH: problem`` naming the output and the problem, exit
with code 2, print no traceback and leave nothing behind. The read-only cases run as an
unprivileged user (``_unprivileged.py``): root would write into a read-only folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]




import _unprivileged as unprivileged  # noqa: E402  (on sys.path by conftest.py)
from benchmarks import kill_bulk  # noqa: E402

COMMANDS = ("train", "segment", "pseudolabel", "register", "evaluate", "export", "sparsify", "prepare", "study", "demo")
PROBLEMS = {
    "parent_is_file": "is a file, not a folder",
    "name_too_long": "name too long",
    "read_only_parent": "permission denied",
}

TINY_RECIPE = """\
name: outputs_tiny
data: {{dataset: {dataset}, size: [32, 32]}}
pairs: {{radius: 4}}
registration: {{batch_size: 2, arguments: {{features: [4, 8, 8]}}}}
segmentation: {{architecture: fcn, batch_size: 2, arguments: {{features: [4, 8, 8, 8, 8], head_channels: 8}}}}
schedule: {{registration_warmup: 1, segmentation_warmup: 1, rounds: 1, registration_steps: 1, segmentation_steps: 1}}
logging: {{image_every: 0, log_every: 0, progress: false, tensorboard: false}}
evaluation: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def workspace():
    """A world-readable folder with a tiny dataset, run, recipe and study, and the bad places."""
    with unprivileged.shared_folder("jointreg-outputs-") as root:
        inputs = kill_bulk.build_inputs(root / "inputs", cases=2, shape=(32, 32, 8))
        recipe = root / "recipe.yaml"
        recipe.write_text(TINY_RECIPE.format(dataset=inputs["sparse"]), encoding="utf-8")
        study = root / "study.yaml"
        study.write_text(f"name: s\nbase: {recipe}\noutput: {root / 'study_out'}\nmethods: {{UNet: {{}}}}\n", encoding="utf-8")
        (root / "afile").write_text("not a folder\n", encoding="utf-8")
        unprivileged.read_only_folder(root / "read_only")
        unprivileged.give_to_user(root / "home")
        yield {"root": root, "home": root / "home", "recipe": recipe, "study": study, **inputs}


def _argv(command: str, out: Path, ws: dict) -> list[str]:
    """The command with valid inputs and ``out`` as its output folder."""
    images = ws["full"] / "imagesTr"
    first, second = sorted(images.iterdir())[:2]
    return {
        "train": ["train", str(ws["recipe"]), "--out", str(out), "--no-progress"],
        "segment": ["segment", "--model", str(ws["run"]), str(images), "--out", str(out), "--no-progress", "--device", "cpu"],
        "pseudolabel": ["pseudolabel", "--run", str(ws["run"]), "--dataset", str(ws["sparse"]), "--out", str(out),
                        "--no-progress", "--device", "cpu"],
        "register": ["register", "--model", str(ws["run"] / "export" / "registration"), str(first), str(second),
                     "--out", str(out), "--device", "cpu"],
        "evaluate": ["evaluate", "--pred", str(ws["full"] / "labelsTr"), "--gt", str(ws["full"]), "--out", str(out)],
        "export": ["export", str(ws["run"]), "--format", "torchscript", "--out", str(out)],
        "sparsify": ["sparsify", str(ws["full"]), "--out", str(out), "--slices-per-volume", "1"],
        "prepare": ["prepare", "phantom", "--cases", "1", "--test-cases", "0", "--shape", "16", "16", "4", "--out", str(out)],
        "study": ["study", str(ws["study"]), "--set", f"output={out}", "--no-progress"],
        "demo": ["demo", "--quick", "--out", str(out), "--no-progress"],
    }[command]


def _bad_output(problem: str, root: Path) -> Path:
    return {
        "parent_is_file": root / "afile" / "out",
        "name_too_long": root / ("x" * 300),
        "read_only_parent": root / "read_only" / "out",
    }[problem]


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.iterdir())


def _check(command: str, problem: str, out: Path, code: int, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (command, problem, stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, (command, problem, stderr)
    assert lines[0].startswith(f"jointreg {command}: error: {out}: "), lines[0]
    assert PROBLEMS[problem] in lines[0], lines[0]


@pytest.mark.parametrize("problem", ["parent_is_file", "name_too_long"])
@pytest.mark.parametrize("command", COMMANDS)
def test_an_impossible_output_is_one_line(command, problem, workspace, capsys, monkeypatch):
    from jointreg.cli.main import main

    root = workspace["root"]
    monkeypatch.chdir(workspace["home"])
    before = _listing(root)
    out = _bad_output(problem, root)
    code = main(_argv(command, out, workspace))
    _check(command, problem, out, code, capsys.readouterr().err)
    assert _listing(root) == before  # nothing created beside it
    assert (root / "afile").read_text(encoding="utf-8") == "not a folder\n"




# Commands that write into an existing output folder (the others build theirs beside it and
# refuse an existing one without --overwrite).
INTO_EXISTING = ("train", "segment", "pseudolabel", "export", "study", "demo")


@pytest.mark.slow
def test_a_read_only_location_is_one_line_for_every_command(workspace):
    unprivileged.require_unprivileged()
    root = workspace["root"]
    out = _bad_output("read_only_parent", root)
    argvs = {command: _argv(command, out, workspace) for command in COMMANDS}
    argvs |= {f"{command} into": _argv(command, root / "read_only", workspace) for command in INTO_EXISTING}
    results = unprivileged.run_cli_unprivileged(argvs, cwd=workspace["home"], repo=REPO)
    for command in COMMANDS:
        code, stderr = results[command]
        _check(command, "read_only_parent", out, code, stderr)
    for command in INTO_EXISTING:
        code, stderr = results[f"{command} into"]
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, (command, stderr)
        # the folder itself, or the first file the command tried to create in it
        assert lines[0].startswith(f"jointreg {command}: error: {root / 'read_only'}"), lines[0]
        assert "permission denied" in lines[0], lines[0]
    assert list((root / "read_only").iterdir()) == []
