"""Files others can use: every output gets ``0666 & ~umask``, and an unreadable model says why.

A shared model or dataset is only shared if a colleague can read it: files must be created with
the permissions the user's umask gives (safetensors writes 0600 by itself; jointreg rewrites
it, see :mod:`jointreg.utils.tensor_files`). When a model file cannot be read all the same, the
error must say "permission denied", not "No such file or directory". Those cases run as an
unprivileged user (``_unprivileged.py``): root reads every file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
from pathlib import Path

import pytest

from jointreg.cli.main import main

REPO = Path(__file__).resolve().parents[2]
UMASK = 0o027




import _unprivileged as unprivileged  # noqa: E402  (on sys.path by conftest.py)
from benchmarks import kill_bulk  # noqa: E402


def _modes(root: Path, *, sources: list[Path] = ()) -> dict[str, int]:
    """Permission bits of everything under ``root``; hard links to ``sources`` are left out (they
    are the source files themselves, with their own modes)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and any(os.path.samefile(path, s) for s in sources if s.name == path.name):
            continue
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.stat().st_mode)
    return found


def _commands(inputs, out: Path) -> dict[str, list[str]]:
    images = sorted((inputs["full"] / "imagesTr").iterdir())
    commands = {
        "segment": ["--model", str(inputs["run"]), str(inputs["full"] / "imagesTr"), "--out", str(out / "segment"),
                    "--probabilities", "--no-progress", "--device", "cpu"],
        "pseudolabel": ["--run", str(inputs["run"]), "--dataset", str(inputs["sparse"]), "--out", str(out / "pseudolabel"),
                        "--no-progress", "--device", "cpu"],
        "register": ["--model", str(inputs["run"] / "export" / "registration"), str(images[0]), str(images[1]),
                     "--labels", str(inputs["full"] / "labelsTr" / "liver_ct_000.nii.gz"), "--out", str(out / "register"),
                     "--device", "cpu"],
        "evaluate": ["--pred", str(inputs["full"] / "labelsTr"), "--gt", str(inputs["full"]), "--out", str(out / "evaluate")],
        "sparsify": [str(inputs["full"]), "--out", str(out / "sparsify"), "--slices-per-volume", "1"],
        "prepare": ["phantom", "--cases", "1", "--test-cases", "0", "--shape", "16", "16", "4", "--out", str(out / "prepare")],
        "export torchscript": [str(inputs["run"]), "--format", "torchscript", "--out", str(out / "torchscript")],
    }
    if importlib.util.find_spec("onnx") is not None:
        commands["export onnx"] = [str(inputs["run"]), "--format", "onnx", "--out", str(out / "onnx")]
    return commands


@pytest.mark.slow
@pytest.mark.parametrize("group", ["export", "other"])
def test_every_output_follows_the_umask(group, tmp_path, capsys):
    inputs = kill_bulk.build_inputs(tmp_path / "inputs", cases=2, shape=(32, 32, 8))
    out = tmp_path / "out"
    commands = {n: a for n, a in _commands(inputs, out).items() if n.startswith("export") == (group == "export")}
    previous = os.umask(UMASK)
    try:
        for name, argv in commands.items():
            assert main([name.split()[0], *argv]) == 0, (name, capsys.readouterr().err)
    finally:
        os.umask(previous)
    # Hard links (pseudo-label images, sparsify's full labels) are the source files themselves.
    sources = [p for folder in ("imagesTr", "labelsTr") for root in (inputs["sparse"], inputs["full"])
               for p in (root / folder).iterdir()]
    modes = _modes(out, sources=sources)
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o750 if (out / p).is_dir() else 0o640)}
    assert wrong == {}
    assert {p.split("/")[0] for p in modes} == {Path(a[a.index("--out") + 1]).name for a in commands.values()}
    if group == "export":
        assert any(p.endswith(".pt") for p in modes)




@pytest.mark.slow
def test_an_unreadable_model_says_permission_denied():
    unprivileged.require_unprivileged()
    with unprivileged.shared_folder("jointreg-modes-") as root:
        inputs = kill_bulk.build_inputs(root / "inputs", cases=2, shape=(32, 32, 8))
        home = unprivileged.give_to_user(root / "home")
        runs, expected = {}, {}
        for problem, target, mode in (("weights", "model.safetensors", 0o600), ("config", "config.json", 0o600),
                                      ("folder", "", 0o700)):
            run = root / f"run_{problem}"
            shutil.copytree(inputs["run"], run)
            for kind in ("registration", "segmentor"):
                path = run / "export" / kind / target
                os.chmod(path, mode)
            runs[problem] = run
            expected[problem] = "config.json" if problem == "folder" else target
        images = sorted((inputs["full"] / "imagesTr").iterdir())
        cases = {}
        for problem, run in runs.items():
            cases[f"segment {problem}"] = ["segment", "--model", str(run), str(images[0]), "--out", str(home / f"s_{problem}"),
                                           "--no-progress", "--device", "cpu"]
            cases[f"pseudolabel {problem}"] = ["pseudolabel", "--run", str(run), "--dataset", str(inputs["sparse"]),
                                               "--out", str(home / f"p_{problem}"), "--no-progress", "--device", "cpu"]
            cases[f"register {problem}"] = ["register", "--model", str(run / "export" / "registration"), str(images[0]),
                                            str(images[1]), "--out", str(home / f"r_{problem}"), "--device", "cpu"]
            cases[f"export {problem}"] = ["export", str(run), "--format", "torchscript", "--out", str(home / f"e_{problem}")]
        results = unprivileged.run_cli_unprivileged(cases, cwd=home, repo=REPO)
        for name, (code, stderr) in results.items():
            command, problem = name.split()
            lines = stderr.strip().splitlines()
            assert code == 2 and len(lines) == 1, (name, stderr)
            assert lines[0].startswith(f"jointreg {command}: error: {runs[problem]}/export/"), (name, lines[0])
            assert f"/{expected[problem]}: " in lines[0] and "permission denied" in lines[0].lower(), (name, lines[0])
            assert "No such file" not in lines[0]
        assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == []  # no output left
