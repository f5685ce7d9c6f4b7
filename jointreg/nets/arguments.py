"""Checks on a network's constructor arguments, before the network is built.

The arguments come from files a user may have received: a recipe's ``registration.arguments``
and ``segmentation.arguments``, a model folder's ``config.json``. They are checked like any
other input:

* names against the constructor's signature (:func:`check_names`): the recipe's promise that an
  unknown key is an error holds inside these free-form mappings too, where a typo would
  otherwise be dropped without a word (smp models pass unknown keyword arguments on to their
  encoder, which ignores them);
* values for form (:func:`check_values`): finite numbers, integers and lists of a size a network
  could use, so that nothing absurd reaches the constructor;
* the size of the network (:func:`build_bounded`): it is first built on PyTorch's ``meta``
  device, which allocates no memory, and its parameters are counted; a config asking for 10^11
  parameters is refused in milliseconds instead of exhausting the machine's memory.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from jointreg.errors import ConfigError

# 500 M parameters are 2 GB of float32 weights (three times as much while Adam trains them):
# six times the largest smp encoder + decoder in common use; jointreg's own networks have < 2 M.
MAX_PARAMETERS = 500_000_000
# Far above any channel count or step number, and small enough that shapes built from such
# values stay far from int64 overflow on the meta device.
MAX_INTEGER = 1 << 24
MAX_LIST_LENGTH = 64
MAX_NESTING = 4


def named_parameters(target: Callable[..., Any], exclude: Iterable[str] = ()) -> list[str]:
    """The keyword-passable parameter names of a class's constructor (or a function), in order;
    ``self``, ``*args`` and ``**kwargs`` excluded."""
    skip = set(exclude)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        name for name, p in inspect.signature(target).parameters.items()
        if p.kind in kinds and name != "self" and name not in skip
    ]


def check_names(arguments: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise when ``arguments`` holds a name outside ``valid``.

    Raises:
        ConfigError: naming the unknown argument(s) and listing the valid ones.
    """
    allowed = list(dict.fromkeys(valid))
    unknown = sorted(str(k) for k in arguments if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown argument(s) {', '.join(unknown)}; valid: {', '.join(allowed)}")


def check_values(arguments: Mapping[str, Any], where: str) -> None:
    """Raise when a value could not be a real setting: NaN or infinite numbers, integers beyond
    :data:`MAX_INTEGER`, lists longer than :data:`MAX_LIST_LENGTH`, deep nesting.

    Raises:
        ConfigError: naming the argument (``where.key[index]``) and the problem.
    """
    for key, value in arguments.items():
        _check_value(value, f"{where}.{key}", 1)


def _check_value(value: Any, where: str, depth: int) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_INTEGER:
            raise ConfigError(f"{where}: {value} is too large for a network setting (at most {MAX_INTEGER:,})")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        if abs(value) > MAX_INTEGER:
            raise ConfigError(f"{where}: {value:g} is too large for a network setting (at most {MAX_INTEGER:,})")
        return
    if depth > MAX_NESTING:
        raise ConfigError(f"{where}: nested too deeply for a network setting")
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_LIST_LENGTH:
            raise ConfigError(f"{where}: {len(value)} entries, more than a network setting takes (at most {MAX_LIST_LENGTH})")
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_value(item, f"{where}.{key}", depth + 1)
        return
    raise ConfigError(f"{where}: {type(value).__name__} values are not network settings")


def build_bounded(build: Callable[[], nn.Module], arguments: Mapping[str, Any], where: str) -> nn.Module:
    """``build()``, after checking on the meta device that it has at most :data:`MAX_PARAMETERS`.

    The probe runs with the random number generators forked, so the real build draws exactly
    the initial weights it would draw alone (seeded runs stay reproducible).

    Raises:
        ConfigError: too many parameters (naming the argument with the largest value); whatever
            ``build`` raises propagates.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            probe = build()
    except NotImplementedError:
        return build()  # an operation without a meta implementation: build without the estimate
    count = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    del probe
    if count > MAX_PARAMETERS:
        culprit = _largest_argument(arguments)
        hint = f"; the largest value is in {culprit[0]} ({culprit[1]:,})" if culprit else ""
        raise ConfigError(
            f"{where}: these arguments build a network of {count:.3g} parameters "
            f"({count * 4 / 1e9:,.1f} GB as float32), more than the {MAX_PARAMETERS:.3g} jointreg "
            f"builds{hint}"
        )
    return build()


def _largest_argument(arguments: Mapping[str, Any]) -> tuple[str, int] | None:
    """The argument holding the largest integer (where a huge channel count usually is)."""

    def largest(value: Any) -> int:
        if isinstance(value, bool):
            return 0
        if isinstance(value, int):
            return abs(value)
        if isinstance(value, (list, tuple)):
            return max((largest(v) for v in value), default=0)
        if isinstance(value, Mapping):
            return max((largest(v) for v in value.values()), default=0)
        return 0

    scored = [(largest(v), str(k)) for k, v in arguments.items()]
    top = max(scored, default=(0, ""))
    return (top[1], top[0]) if top[0] > 0 else None
