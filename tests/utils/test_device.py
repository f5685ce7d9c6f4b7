"""Devices, threads and seeds."""

import os
import random

import numpy as np
import pytest
import torch

from jointreg.errors import ConfigError
from jointreg.utils.device import resolve_device, seed_everything, set_threads


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("name", ["auto", "AUTO", None, ""])
def test_auto_without_cuda_is_the_cpu(no_cuda, name):
    assert resolve_device(name) == torch.device("cpu")


def test_auto_with_cuda_is_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cpu_and_devices_pass_through(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    given = torch.device("cuda", 1)
    assert resolve_device(given) is given  # a torch.device is taken as it is


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_clear_error(no_cuda, name):
    with pytest.raises(ConfigError, match=f"device '{name}' requested but CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu0"])
def test_bad_names_are_rejected(name):
    with pytest.raises(ConfigError, match=rf"device '{name}' is not valid \(use auto, cpu, cuda or cuda:N\)"):
        resolve_device(name)


def test_unsupported_device_types_are_rejected():
    with pytest.raises(ConfigError, match="device type 'meta' is not supported"):
        resolve_device("meta")


def test_set_threads():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)  # leaves it as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2):
        with pytest.raises(ConfigError, match=f"threads must be >= 1, got {bad}"):
            set_threads(bad)
    assert torch.get_num_threads() == before


def _draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_seed_everything_repeats_python_numpy_and_torch_draws(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    assert _draws() != first
    assert os.environ["PYTHONHASHSEED"] == "123"  # set once, by the first seed
    seed_everything(2**32 + 5)  # seeds beyond NumPy's 32 bits are folded, not refused
    assert np.random.rand() == np.random.RandomState(5).rand()


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(four_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # a named GPU is kept
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ConfigError, match="LOCAL_RANK 4 but this machine has 4 CUDA device"):
        resolve_device("auto")


def test_a_single_process_keeps_plain_cuda(four_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda")
