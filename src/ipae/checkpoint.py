"""Checkpoints: a model directory that loading can never execute.

A model directory holds
- `model.json`: the format, the library version, the model (`ipae.models.ModelSpec.to_dict`:
  architecture, rate and its options, distortion, beta, log-variance bound, distortion weight) and free metadata;
- `model.safetensors`: the weights (safetensors holds tensors only, no pickled code);
and, for a run that can be continued, `training.json` and `training.safetensors`: the step, the
training settings, the optimiser's state, the noise generator's state, the history so far and the
monitor's measurements so far.
Every file is written atomically (temporary file, then rename), with the permissions of a file made
as usual: 0666 less the umask.

Loading opens these four names in the directory and nothing else: no path written in a file is
followed (the options a fit recorded, `metadata["fit"]`, name its data; `ipae.fitting.merged_options`
reads them for `ipae fit --resume`, with the rule of `ipae.fitting.read_options`). What the files
claim is checked before memory is taken for it: the shapes of model.json's architecture against the
weights in model.safetensors, whose own header safetensors checks against the file's size.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ipae._files import write_atomic, write_json
from ipae._version import __version__
from ipae.models import AutoEncoder, Mismatch, ModelSpec
from ipae.rates import Rate

__all__: list[str] = []  # users reach its public names through the package: ipae.save, ipae.TrainState

# Version 2: any encoder and decoder, the rate with its options. Version 1 (the paper's MLPs only,
# weights named body/heads) is not read.
FORMAT = {"name": "ipae-model", "version": 2}


@dataclass
class TrainState:
    """Where a run stands after `step` steps: all that `train(..., resume=state)` needs to go on
    exactly as if it had not stopped (the weights are the model's own)."""

    step: int
    settings: dict  # the settings the steps so far were trained with; a continuation must share them
    optimizer: dict  # the optimiser's state_dict
    generator: Tensor  # (bytes,) uint8: the state of the generator of noise and partners
    history: Tensor  # (step, 3) float32: loss, distortion and rate of every step so far
    monitor: list[dict] = field(default_factory=list)  # the monitor's records so far (`train(monitor=...)`), each with its step


def save_model(model: AutoEncoder, directory: str | Path, *, metadata: dict | None = None, state: TrainState | None = None) -> None:
    """Write `model` (and, when given, the training `state` to continue from) into `directory`,
    creating it if needed. `metadata`: JSON-serialisable extras stored in model.json. The files of a
    directory written twice are replaced; `ipae.save` is the public way, which refuses to."""
    directory = Path(directory)
    record = {"format": FORMAT, "ipae_version": __version__, "model": model.spec.to_dict(), "metadata": metadata or {}}  # checked first
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    _write_tensors(directory / "model.safetensors", weights)
    write_json(directory / "model.json", record)
    if state is not None:
        save_state(state, directory)


def _write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    """Write `tensors` as a safetensors file, atomically, with the permissions every file here has
    (0666 less the umask, as the temporary file was made): safetensors makes a file of its own, 0600."""

    def write(tmp: Path) -> None:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        save_file(tensors, str(tmp))
        os.chmod(tmp, mode)

    write_atomic(path, write)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError; RecursionError: nested thousands deep
        raise ValueError(f"{path}: not valid JSON ({_one_line(error)})") from None


def _read_record(directory: Path) -> dict:
    path = directory / "model.json"
    if not directory.is_dir() or not path.is_file():
        raise FileNotFoundError(f"{directory}: not a model directory (no model.json)")
    record = _read_json(path)
    format_ = record.get("format") if isinstance(record, dict) else None
    if not isinstance(format_, dict) or format_.get("name") != FORMAT["name"]:
        raise ValueError(f"{path}: not an ipae model file")
    version = format_.get("version")
    if version != FORMAT["version"]:
        older = isinstance(version, int) and not isinstance(version, bool) and version < FORMAT["version"]
        advice = "written by an older ipae; train it again" if older else "upgrade ipae"
        raise ValueError(f"{path}: model format version {_short(version)} is not {FORMAT['version']} ({advice})")
    if not isinstance(record.get("metadata", {}), dict):
        raise ValueError(f"{path}: the metadata is not a JSON object, got {_short(record['metadata'])}")
    return record


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def read_metadata(directory: str | Path) -> dict:
    """The metadata stored with `save_model`."""
    return _read_record(Path(directory)).get("metadata", {})


def load_model(
    directory: str | Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None, rate: Rate | None = None
) -> AutoEncoder:
    """The model saved in `directory`, in eval mode on the CPU; a missing or damaged file, or weights
    that do not fit the architecture in model.json (checked before memory is taken for that architecture),
    or that are not finite, is a clear error naming the file.

    A model of your own networks is loaded into the `encoder` and `decoder` you pass (built as when it
    was saved); one built from a preset or an architecture builds its own. A rate of your own (a `Rate`
    subclass, not in `ipae.rates.RATES`) is passed as `rate`, built with the options it was saved with
    (model.json records its name and options, and they must match); a built-in rate is built from the
    record. Nothing is unpickled.
    """
    directory = Path(directory)
    path = directory / "model.json"
    record = _read_record(directory)
    try:
        spec = ModelSpec.from_dict(record["model"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a valid model description ({_one_line(error)})") from None
    try:  # on the meta device, which takes no memory: model.json's shapes must first be those of the weights
        with torch.device("meta"):
            model = spec.build(encoder=encoder, decoder=decoder, rate=rate)
    except Mismatch as error:
        raise ValueError(f"{path}: {error}") from None
    except (ValueError, TypeError, OverflowError, RuntimeError) as error:  # RuntimeError: sizes torch cannot make
        raise ValueError(f"{path}: not a valid model description ({_one_line(error)})") from None
    weights = _load_tensors(directory / "model.safetensors")
    _check_weights(model, directory, weights)
    if spec.architecture is not None:
        model = spec.build(rate=rate)  # as large as the file's weights, no larger
    dtypes = {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())  # a float64 model loads as float64
    load_weights(model, weights)
    return model.eval()


_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_weights(model: AutoEncoder, directory: Path, weights: dict[str, torch.Tensor]) -> None:
    """ValueError unless `weights` are `model`'s tensors by name and shape, floating point where the
    model's are (in a dtype a model is trained in) and finite: a model of NaN weights gives NaN codes."""
    path = directory / "model.safetensors"
    own = model.state_dict()
    expected = {name: tuple(tensor.shape) for name, tensor in own.items()}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if found != expected:
        differences = sorted(set(expected.items()) ^ set(found.items()))
        raise ValueError(
            f"{path}: the weights do not fit the architecture in model.json "
            f"(first difference: {repr(differences[0][0])[1:-1]} {differences[0][1]})"  # escaped: a name may hold a newline
        )
    for name, tensor in weights.items():
        floating = own[name].is_floating_point()
        if tensor.dtype not in _WEIGHT_DTYPES if floating else tensor.dtype != own[name].dtype:
            wanted = "a floating-point dtype" if floating else own[name].dtype
            raise ValueError(f"{path}: {name!r} has dtype {tensor.dtype}, expected {wanted}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: {name!r} holds NaN or infinite values")


def load_weights(model: AutoEncoder, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (from `read_model_weights`) into `model`."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(weights[name])


def load_model_weights(model: AutoEncoder, directory: str | Path) -> None:
    """Load the weights saved in `directory` into `model`, which must be the same model (to continue a run)."""
    load_weights(model, read_model_weights(model, directory))


def read_model_weights(model: AutoEncoder, directory: str | Path) -> dict[str, torch.Tensor]:
    """The weights saved in `directory`, checked to fit `model` (the same model), which is left as it is:
    a caller can check the rest of its input before it changes the model."""
    directory = Path(directory)
    saved = _read_record(directory).get("model")
    own = model.spec.to_dict()
    if saved != json.loads(json.dumps(own)):  # as model.json holds it: tuples read as lists
        raise ValueError(f"{directory}: holds another model ({saved}) than the one to continue ({own})")
    weights = _load_tensors(directory / "model.safetensors")
    _check_weights(model, directory, weights)
    return weights


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path}: damaged or not a safetensors file ({_one_line(error)})") from None


def has_state(directory: str | Path) -> bool:
    return (Path(directory) / "training.json").is_file()


def save_state(state: TrainState, directory: str | Path) -> None:
    """Write `state` as training.safetensors (tensors) and training.json (the rest) into `directory`."""
    directory = Path(directory)
    tensors, structure = _flatten_optimizer(state.optimizer)
    tensors |= {"generator": state.generator.contiguous(), "history": state.history.contiguous()}
    _write_tensors(directory / "training.safetensors", tensors)
    write_json(
        directory / "training.json", {"step": state.step, "settings": state.settings, "optimizer": structure, "monitor": state.monitor}
    )


def load_state(directory: str | Path) -> TrainState:
    """The training state saved with the model in `directory`, checked to be what `TrainState` describes
    (a ValueError naming the file otherwise)."""
    directory = Path(directory)
    path = directory / "training.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: holds no training state to continue from (no training.json)")
    record = _read_json(path)
    problem = _state_problem(record)
    if problem:
        raise ValueError(f"{path}: not a valid training state ({problem})")
    tensors = _load_tensors(directory / "training.safetensors")
    step, structure = record["step"], record["optimizer"]
    names = [f"optimizer.{index}.{name}" for index, names in structure["state"].items() for name in names] + ["generator", "history"]
    missing = [name for name in names if name not in tensors]
    generator, history = tensors.get("generator"), tensors.get("history")
    problem = (
        f"no tensor {missing[0]!r}"
        if missing
        else f"the generator state is {generator.dtype} {tuple(generator.shape)}, not a vector of bytes"
        if generator.dtype != torch.uint8 or generator.ndim != 1
        else f"the history is {history.dtype} {tuple(history.shape)}, not floating point ({step}, 3) for step {step}"
        if not history.is_floating_point() or tuple(history.shape) != (step, 3)
        else None
    )
    if problem:
        raise ValueError(f"{directory / 'training.safetensors'}: does not match training.json ({problem})")
    optimizer = _unflatten_optimizer(tensors, structure)
    monitor = record.get("monitor", [])  # absent from the states of earlier versions
    return TrainState(step=step, settings=record["settings"], optimizer=optimizer, generator=generator, history=history, monitor=monitor)


def _state_problem(record: object) -> str | None:
    """What is wrong with a training.json record, or None: the step, the settings and the optimiser's structure."""
    if not isinstance(record, dict) or not {"step", "settings", "optimizer"} <= set(record):
        return "expected an object with step, settings and optimizer"
    step, structure = record["step"], record["optimizer"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step must be an integer >= 0, got {_short(step)}"
    if not isinstance(record["settings"], dict):
        return f"settings must be an object, got {_short(record['settings'])}"
    monitor = record.get("monitor", [])
    if not isinstance(monitor, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("step"), int) and not isinstance(entry["step"], bool) for entry in monitor
    ):
        return f"monitor must be a list of objects with an integer step, got {_short(monitor)}"
    if not (isinstance(structure, dict) and isinstance(structure.get("param_groups"), list) and isinstance(structure.get("state"), dict)):
        return "optimizer must be an object with a list param_groups and an object state"
    for group in structure["param_groups"]:
        params = group.get("params") if isinstance(group, dict) else None
        if not isinstance(params, list) or any(isinstance(index, bool) or not isinstance(index, int) for index in params):
            return f"each optimizer parameter group must be an object with a list of integer params, got {_short(group)}"
    for index, names in structure["state"].items():
        if not (index.isascii() and index.isdigit()) or not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return f"optimizer state {_short(index)} must be a parameter's number with a list of tensor names, got {_short(names)}"
    return None


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
