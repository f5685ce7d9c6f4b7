import hashlib
import os
import stat

import torch
from safetensors.torch import load_file, safe_open

from jointreg.utils.tensor_files import canonical_safetensors, save_tensors


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(3, 4, generator=g) for i in range(12)} | {
        "count": torch.arange(5, dtype=torch.int64)
    }


def test_identical_tensors_give_identical_bytes(tmp_path):
    metadata = {f"key{i}": str(i) for i in range(20)}
    reversed_metadata = dict(reversed(list(metadata.items())))
    save_tensors(tmp_path / "a.safetensors", _tensors(), metadata)
    save_tensors(tmp_path / "b.safetensors", dict(reversed(list(_tensors().items()))), reversed_metadata)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.safetensors", "b.safetensors")]
    assert digest[0] == digest[1]


def test_round_trip_values_and_metadata(tmp_path):
    save_tensors(tmp_path / "w.safetensors", _tensors(), {"format": "jointreg-model", "kind": "segmentor"})
    loaded = load_file(str(tmp_path / "w.safetensors"))
    for name, value in _tensors().items():
        assert torch.equal(loaded[name], value)
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "jointreg-model", "kind": "segmentor"}


def test_header_is_sorted_and_aligned():
    from safetensors.torch import save

    blob = canonical_safetensors(save(_tensors(), metadata={"z": "1", "a": "2"}))
    length = int.from_bytes(blob[:8], "little")
    assert length % 8 == 0
    header = blob[8 : 8 + length].decode().rstrip()
    assert header.index('"__metadata__"') < header.index('"count"') < header.index('"layer0.weight"')


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_tensors(tmp_path / "w.safetensors", _tensors())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "w.safetensors").st_mode) == 0o644
