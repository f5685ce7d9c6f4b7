import json

import pytest

from jointreg.cli.main import main


def test_sparsify_command_writes_dataset_and_prints_summary(make_dataset, tmp_path, capsys):
    source = make_dataset(n_cases=2, shape=(16, 16, 6))
    out = tmp_path / "sparse"
    code = main(["sparsify", str(source), "--out", str(out), "--slices-per-volume", "2",
                 "--strategy", "even", "--seed", "4", "--classes", "organ"])
    assert code == 0
    assert f"{out}: kept 4 slice(s) in 2 case(s) (even, 2 per volume)" in capsys.readouterr().out
    manifest = json.loads((out / "sparsify.json").read_text())
    assert manifest["strategy"] == "even" and manifest["seed"] == 4 and manifest["classes"] == ["organ"]
    assert main(["validate", str(out)]) == 0


def test_existing_output_is_refused_with_one_line(make_dataset, tmp_path, capsys):
    source = make_dataset(n_cases=1, shape=(16, 16, 4))
    out = tmp_path / "taken"
    out.mkdir()
    assert main(["sparsify", str(source), "--out", str(out), "--volumes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jointreg sparsify: error: {out}: already exists (use --overwrite to replace it)"]
    assert list(out.iterdir()) == []


def test_amount_is_required(make_dataset, tmp_path):
    source = make_dataset(n_cases=1, shape=(16, 16, 4))
    with pytest.raises(SystemExit) as exit_info:
        main(["sparsify", str(source), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2


def test_extremes_strategy_keeps_the_largest_and_smallest_area(make_dataset, tmp_path, capsys):
    source = make_dataset(n_cases=1, shape=(16, 16, 6))
    out = tmp_path / "ends"
    assert main(["sparsify", str(source), "--out", str(out), "--slices-per-volume", "2",
                 "--strategy", "extremes", "--classes", "organ"]) == 0
    assert "(extremes, 2 per volume)" in capsys.readouterr().out
    entry = json.loads((out / "sparsify.json").read_text())["cases"]["case000"]
    assert len(entry["slices"]) == 2 and max(entry["areas"]) > min(entry["areas"])
