"""Checkpoints: a model directory that loading can never execute.

A model directory holds
- `model.json`: the format, the library version, the architecture (`ModelConfig`) and free metadata;
- `model.safetensors`: the weights (safetensors holds tensors only, no pickled code);
and, for a run that can be continued, `training.json` and `training.safetensors`: the step, the
training settings, the optimiser's state, the noise generator's state and the history so far.
Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ipae import __version__
from ipae.models import AutoEncoder, ModelConfig
from ipae.results import write_atomic, write_json
from ipae.train import TrainState

__all__ = ["FORMAT", "load", "save_model", "load_model", "read_metadata", "save_state", "load_state", "has_state"]

FORMAT = {"name": "ipae-model", "version": 1}


def save_model(model: AutoEncoder, directory: str | Path, *, metadata: dict | None = None, state: TrainState | None = None) -> None:
    """Write `model` (and, when given, the training `state` to continue from) into `directory`,
    creating it if needed. `metadata`: JSON-serialisable extras stored in model.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    write_atomic(directory / "model.safetensors", lambda tmp: save_file(weights, str(tmp)))
    record = {"format": FORMAT, "ipae_version": __version__, "config": model.config.to_dict(), "metadata": metadata or {}}
    write_json(directory / "model.json", record)
    if state is not None:
        save_state(state, directory)


def _read_record(directory: Path) -> dict:
    path = directory / "model.json"
    if not directory.is_dir() or not path.is_file():
        raise FileNotFoundError(f"{directory}: not a model directory (no model.json)")
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or record.get("format", {}).get("name") != FORMAT["name"]:
        raise ValueError(f"{path}: not an ipae model file")
    if record["format"].get("version") != FORMAT["version"]:
        raise ValueError(f"{path}: model format version {record['format'].get('version')} is not {FORMAT['version']}; upgrade ipae")
    return record


def read_metadata(directory: str | Path) -> dict:
    """The metadata stored with `save_model`."""
    return _read_record(Path(directory)).get("metadata", {})


def load_model(directory: str | Path) -> AutoEncoder:
    """The model saved in `directory`, in eval mode on the CPU; a missing or damaged file, or weights
    that do not fit the architecture in model.json, is a clear error naming the file."""
    directory = Path(directory)
    record = _read_record(directory)
    try:
        config = ModelConfig(**record["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{directory / 'model.json'}: not a valid model config ({error})") from None
    model = AutoEncoder(config)
    weights = _load_tensors(directory / "model.safetensors")
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if found != expected:
        differences = sorted(set(expected.items()) ^ set(found.items()))
        raise ValueError(
            f"{directory / 'model.safetensors'}: the weights do not fit the architecture in model.json "
            f"(first difference: {differences[0][0]} {differences[0][1]})"
        )
    model.load_state_dict(weights)
    return model.eval()


def load(directory: str | Path):
    """What was saved in `directory`: the fitted estimator (`IPAE`, `BetaVAE`) written by its `save`,
    else the `AutoEncoder` written by `save_model` or `model.save`."""
    if "estimator" in read_metadata(directory):
        from ipae.estimators import load_estimator  # the estimators build on this module

        return load_estimator(directory)
    return load_model(directory)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path}: damaged or not a safetensors file ({str(error).splitlines()[0]})") from None


def has_state(directory: str | Path) -> bool:
    return (Path(directory) / "training.json").is_file()


def save_state(state: TrainState, directory: str | Path) -> None:
    """Write `state` as training.safetensors (tensors) and training.json (the rest) into `directory`."""
    directory = Path(directory)
    tensors, structure = _flatten_optimizer(state.optimizer)
    tensors |= {"generator": state.generator.contiguous(), "history": state.history.contiguous()}
    write_atomic(directory / "training.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    write_json(directory / "training.json", {"step": state.step, "settings": state.settings, "optimizer": structure})


def load_state(directory: str | Path) -> TrainState:
    """The training state saved with the model in `directory`."""
    directory = Path(directory)
    path = directory / "training.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: holds no training state to continue from (no training.json)")
    try:
        record = json.loads(path.read_text())
        step, settings, structure = record["step"], record["settings"], record["optimizer"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid training state ({error})") from None
    tensors = _load_tensors(directory / "training.safetensors")
    try:
        optimizer = _unflatten_optimizer(tensors, structure)
        return TrainState(step=step, settings=settings, optimizer=optimizer, generator=tensors["generator"], history=tensors["history"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{directory / 'training.safetensors'}: does not match training.json ({error})") from None


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimiser state_dict as named tensors and a JSON structure (hyperparameters, names)."""
    tensors, per_parameter = {}, {}
    for index, values in state_dict["state"].items():
        per_parameter[str(index)] = sorted(values)
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": state_dict["param_groups"], "state": per_parameter}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    state = {int(index): {name: tensors[f"optimizer.{index}.{name}"] for name in names} for index, names in structure["state"].items()}
    return {"state": state, "param_groups": structure["param_groups"]}
