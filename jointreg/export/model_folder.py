"""Self-describing model folders: ``config.json`` + ``model.safetensors``.

A model folder holds everything needed to rebuild and use a trained network without the run
that made it and without unpickling anything::

    MODEL/
      config.json         format, version, kind, architecture + constructor arguments,
                          preprocessing (slicing axis, size, normalisation), labels, modality
      model.safetensors   the weights

``config.json`` example::

    {"format": "jointreg-model", "format_version": 1, "kind": "segmentor",
     "architecture": "unet", "arguments": {"encoder_name": "resnet18", "in_channels": 1,
     "classes": 5}, "spatial_dims": 2, "preprocessing": {...}, "labels": {"background": 0, ...},
     "modality": "CT"}

The network is rebuilt by name from the registry of its kind and the weights are
checked against it key by key, so a config that does not match its weights is a clear error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.errors import InputError
from jointreg.utils.atomic import atomic_dir, write_json
from jointreg.utils.tensor_files import save_tensors
from jointreg.utils.yaml_io import load_json_file
from jointreg.version import __version__

FORMAT = "jointreg-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KINDS = ("registration", "segmentor")
# A real config.json is a few kB; anything near this bound is not one.
MAX_CONFIG_BYTES = 1 << 20


@dataclass
class LoadedModel:
    """A network rebuilt from a model folder, with what it needs to be used correctly.

    Attributes:
        model: the ``nn.Module`` in eval mode, on the requested device.
        kind: ``registration`` or ``segmentor``.
        architecture: registry name.
        config: the whole ``config.json``.
        path: the folder.
    """

    model: Any
    kind: str
    architecture: str
    config: dict[str, Any]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.config.get("preprocessing", {}))

    @property
    def labels(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.config.get("labels", {}).items()}

    @property
    def modality(self) -> str:
        return str(self.config.get("modality", ""))

    @property
    def spatial_dims(self) -> int:
        return int(self.config.get("spatial_dims", 2))


def _builder(kind: str):
    if kind == "registration":
        from jointreg.nets.registration import create_registration_net

        return create_registration_net
    if kind == "segmentor":
        from jointreg.nets.segmentation import create_segmentor

        return create_segmentor
    raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def model_config(
    model: Any,
    *,
    kind: str,
    architecture: str,
    preprocessing: dict[str, Any] | None = None,
    labels: dict[str, int] | None = None,
    modality: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content describing ``model``."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    arguments = getattr(model, "config", None)
    if not isinstance(arguments, dict):
        raise TypeError(f"{type(model).__name__} has no `config` dict of constructor arguments")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jointreg_version": __version__,
        "kind": kind,
        "architecture": architecture,
        "arguments": json.loads(json.dumps(arguments)),
        "spatial_dims": int(getattr(model, "spatial_dims", 2)),
        "preprocessing": dict(preprocessing or {}),
        "labels": {str(k): int(v) for k, v in (labels or {}).items()},
        "modality": modality,
        "extra": dict(extra or {}),
    }


def save_model_folder(
    folder: str | PathLike[str],
    model: Any,
    *,
    kind: str,
    architecture: str,
    preprocessing: dict[str, Any] | None = None,
    labels: dict[str, int] | None = None,
    modality: str = "",
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``model`` as a model folder (atomically: the folder appears complete or not at all)."""
    folder = Path(folder)
    config = model_config(
        model, kind=kind, architecture=architecture, preprocessing=preprocessing,
        labels=labels, modality=modality, extra=extra,
    )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        save_tensors(tmp / WEIGHTS_NAME, state, metadata={"format": FORMAT, "kind": kind})
        write_json(tmp / CONFIG_NAME, config)
    return folder


def read_model_config(folder: str | PathLike[str]) -> dict[str, Any]:
    """Read and check ``config.json`` of a model folder.

    Raises:
        InputError: not a folder, missing files, invalid JSON, another format or version.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "model folder not found")
    if not folder.is_dir():
        raise InputError(folder, "expected a model folder (config.json + model.safetensors)")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise InputError(folder, f"not a jointreg model folder: {CONFIG_NAME} is missing")
    if not (folder / WEIGHTS_NAME).is_file():
        raise InputError(folder, f"{WEIGHTS_NAME} is missing")
    config = load_json_file(config_path, MAX_CONFIG_BYTES, what="model config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise InputError(config_path, f"not a jointreg model config (format is not {FORMAT!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            config_path,
            f"model format version {version!r} is not supported by jointreg {__version__} "
            f"(expected {FORMAT_VERSION}); re-export the model with a matching jointreg",
        )
    if config.get("kind") not in KINDS:
        raise InputError(config_path, f"unknown model kind {config.get('kind')!r}")
    for key in ("architecture", "arguments"):
        if key not in config:
            raise InputError(config_path, f"missing key '{key}'")
    if not isinstance(config["architecture"], str):
        raise InputError(config_path, f"'architecture' must be a name, found {config['architecture']!r:.60}")
    if not isinstance(config["arguments"], dict):
        raise InputError(config_path, "'arguments' must be an object of constructor arguments")
    return config


def load_model_folder(
    folder: str | PathLike[str], *, device: Any = "cpu", kind: str | None = None
) -> LoadedModel:
    """Rebuild the network of a model folder and load its weights (no unpickling).

    Args:
        folder: the model folder.
        device: where to put the model.
        kind: require this kind (``registration`` or ``segmentor``).

    Raises:
        InputError: a bad folder, a config that does not match its weights, a wrong kind,
            arguments that would build an oversized network (checked before anything is
            allocated, :func:`jointreg.nets.arguments.build_bounded`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from jointreg.errors import ConfigError

    folder = Path(folder)
    config = read_model_config(folder)
    if kind is not None and config["kind"] != kind:
        raise InputError(folder, f"is a {config['kind']} model, expected a {kind} model")
    try:
        model = _builder(config["kind"])(config["architecture"], **config["arguments"])
    except ConfigError as exc:
        raise InputError(folder / CONFIG_NAME, str(exc)) from None
    except TypeError as exc:
        raise InputError(folder / CONFIG_NAME, f"arguments do not fit architecture '{config['architecture']}' ({exc})") from None
    with open(folder / WEIGHTS_NAME, "rb"):
        pass  # safetensors reports an unreadable file as "No such file or directory"; open() says why
    try:
        state = load_file(str(folder / WEIGHTS_NAME), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(folder / WEIGHTS_NAME, f"unreadable weights ({exc})") from None
    _check_state(folder, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return LoadedModel(model, config["kind"], config["architecture"], config, folder)


def _check_state(folder: Path, expected: dict[str, Any], found: dict[str, Any]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} shape mismatch(es) (e.g. {k}: weights {tuple(found[k].shape)}, "
            f"config {tuple(expected[k].shape)})"
        )
    if problems:
        raise InputError(folder, "config.json does not match model.safetensors: " + "; ".join(problems))
