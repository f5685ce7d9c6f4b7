"""Checkpoints: every tensor and value comes back exactly, key by key (values, dtype, shape)."""

import json

import pytest
import torch

from jointreg.errors import InputError
from jointreg.training.checkpoint import (
    PREVIOUS, STATE, TENSORS, join_tensors, load_checkpoint, read_state, recover_checkpoint, save_checkpoint, split_tensors,
)


def assert_same(saved, restored, where="state"):
    """Recursively: the same containers, the same keys (and key types), equal tensors and values.

    A state_dict's ``OrderedDict`` comes back as a plain ``dict`` (same keys, same order).
    """
    kind = dict if isinstance(saved, dict) else type(saved)
    assert isinstance(restored, kind) and (kind is dict or type(restored) is kind), (where, type(saved), type(restored))
    if isinstance(saved, torch.Tensor):
        assert restored.dtype == saved.dtype, (where, saved.dtype, restored.dtype)
        assert restored.shape == saved.shape, (where, saved.shape, restored.shape)
        assert torch.equal(restored, saved), where
    elif isinstance(saved, dict):
        assert list(restored) == list(saved), (where, list(saved), list(restored))
        for key in saved:
            assert_same(saved[key], restored[key], f"{where}[{key!r}]")
    elif isinstance(saved, (list, tuple)):
        assert len(restored) == len(saved), where
        for i, (a, b) in enumerate(zip(saved, restored)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert restored == saved, (where, saved, restored)


NESTED = {
    "a": torch.arange(3),
    "b": {0: torch.ones(2), 5: {"step": torch.tensor(3.0)}},
    "c": (1, "x", None),
    "d": [torch.zeros(1), 2.5],
    "mixed": {"half": torch.full((2, 3), 0.5, dtype=torch.float16), "flag": torch.tensor([True, False]),
              "ids": torch.tensor([[7, -2]], dtype=torch.int16), "scalar": torch.tensor(4, dtype=torch.int64)},
    "flags": [True, False, None],
}


def test_split_and_join_preserve_structure_and_key_types():
    tensors = {}
    skeleton = split_tensors(NESTED, "s", tensors)
    json.dumps(skeleton)  # the skeleton is plain JSON
    assert skeleton["a"] == {"__tensor__": "s.a"} and torch.equal(tensors["s.a"], torch.arange(3))
    assert skeleton["b"] == {"__items__": [[0, {"__tensor__": "s.b.0"}], [5, {"step": {"__tensor__": "s.b.5.step"}}]]}
    assert skeleton["c"] == {"__tuple__": [1, "x", None]}
    assert sorted(tensors) == ["s.a", "s.b.0", "s.b.5.step", "s.d.0", "s.mixed.flag", "s.mixed.half", "s.mixed.ids", "s.mixed.scalar"]
    assert_same(NESTED, join_tensors(skeleton, tensors))


def test_checkpoint_on_disk_restores_every_key(tmp_path):
    save_checkpoint(tmp_path / "ck", NESTED)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted([STATE, TENSORS])
    assert_same(NESTED, load_checkpoint(tmp_path / "ck"))


def test_model_and_optimizer_state_are_restored_key_by_key(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "step": 3, "history": [0.5, 0.25]}
    save_checkpoint(tmp_path / "ck", saved)
    back = load_checkpoint(tmp_path / "ck")
    assert_same(saved, back)
    assert sorted(back["model"]) == ["bias", "weight"]
    assert set(back["opt"]["state"]) == {0, 1}  # parameter ids stay integers
    assert sorted(back["opt"]["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    assert float(back["opt"]["state"][0]["step"]) == 3.0
    assert back["opt"]["param_groups"][0]["lr"] == 1e-2 and back["opt"]["param_groups"][0]["params"] == [0, 1]

    # ...and training continues identically from the restored state.
    model2 = torch.nn.Linear(4, 2)
    model2.load_state_dict(back["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(back["opt"])
    x = torch.randn(8, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight, model2.weight) and torch.equal(model.bias, model2.bias)


def test_unsupported_values_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store set at s.bad in a checkpoint"):
        split_tensors({"bad": {1, 2}}, "s", {})
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / STATE).write_text("{}")
    with pytest.raises(InputError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "half")


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_replacing_a_checkpoint_leaves_only_the_new_one(tmp_path):
    save_checkpoint(tmp_path / "last", {"step": 1, "w": torch.ones(2)})
    save_checkpoint(tmp_path / "last", {"step": 2, "w": torch.zeros(2)})
    assert _entries(tmp_path) == ["last"]  # no temporary, nothing moved aside
    back = load_checkpoint(tmp_path / "last")
    assert back["step"] == 2 and torch.equal(back["w"], torch.zeros(2))
    assert read_state(tmp_path / "last") == {"step": 2, "w": {"__tensor__": "s.w"}}


def test_a_kill_between_the_renames_is_recovered_to_the_previous_checkpoint(tmp_path):
    """The state a SIGKILL leaves after ``last`` was moved aside and before its successor was
    renamed in: the complete old checkpoint aside, the complete new one under its temporary name."""
    save_checkpoint(tmp_path / "last", {"step": 4, "w": torch.full((2,), 4.0)})
    save_checkpoint(tmp_path / "new", {"step": 8, "w": torch.full((2,), 8.0)})
    (tmp_path / "last").rename(tmp_path / f".tmp-0123456789ab-last{PREVIOUS}")
    (tmp_path / "new").rename(tmp_path / ".tmp-0123456789ab-last")
    assert recover_checkpoint(tmp_path / "last") is True
    back = load_checkpoint(tmp_path / "last")
    assert back["step"] == 4 and torch.equal(back["w"], torch.full((2,), 4.0))
    assert _entries(tmp_path) == [".tmp-0123456789ab-last", "last"]  # the leftover is the caller's to remove
    # Nothing to recover: no checkpoint, or only an incomplete folder aside.
    assert recover_checkpoint(tmp_path / "best") is False
    (tmp_path / f".tmp-aaaaaaaaaaaa-best{PREVIOUS}").mkdir()
    assert recover_checkpoint(tmp_path / "best") is False and not (tmp_path / "best").exists()
    assert recover_checkpoint(tmp_path / "nowhere" / "last") is False


def test_a_failed_rename_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    import jointreg.training.checkpoint as checkpoint

    save_checkpoint(tmp_path / "last", {"step": 4})
    real_replace, calls = checkpoint.os.replace, []

    def failing(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder onto `last`
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "last", {"step": 8})
    monkeypatch.undo()
    assert _entries(tmp_path) == ["last"] and load_checkpoint(tmp_path / "last")["step"] == 4


def test_a_checkpoint_missing_a_tensor_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "ck", {"a": torch.ones(1)})
    (tmp_path / "ck" / STATE).write_text(json.dumps({"a": {"__tensor__": "s.b"}}))
    with pytest.raises(InputError, match=r"inconsistent checkpoint \(tensor 's.b' missing"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / STATE).write_text("{not json")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        read_state(tmp_path / "ck")
