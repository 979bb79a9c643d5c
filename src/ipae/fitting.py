"""Fitting a model to your own data: the one function behind `ipae fit` and the estimators' `fit`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ipae._files import write_atomic, write_json
from ipae._validation import check_positive_int
from ipae.checkpoint import read_metadata, save_model
from ipae.data.arrays import value_range
from ipae.data.sources import TrainData
from ipae.models import AutoEncoder, ModelSpec
from ipae.networks import ARCHITECTURES, MLP, Conv
from ipae.rates import create
from ipae.rates import spec as rate_spec
from ipae.training import TrainConfig, TrainResult, train

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__: list[str] = []  # internal


def architecture_of(
    arch: str, n_components: int, hidden: tuple[int, ...], activation: str, sample_shape: tuple[int, ...] | None = None
) -> MLP | Conv:
    """The networks that the options of a fit (and an estimator's parameters) name, for samples of
    `sample_shape` (None: the architecture's default, until the data says): "mlp", the paper's fully
    connected pair (`hidden`, `activation`); "conv", Burgess et al.'s for images (which takes neither)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    check_positive_int("n_components", n_components)
    shape = ARCHITECTURES[arch].input_shape if sample_shape is None else sample_shape
    if arch == "conv":
        return Conv(shape, n_components)
    return MLP(shape, hidden, n_components, activation)


def build_model(spec: ModelSpec, sample_shape: tuple[int, ...], *, seed: int = 0) -> AutoEncoder:
    """The model `spec` describes, for samples of `sample_shape` (its architecture's input_shape is
    replaced by it), its weights drawn from `seed`."""
    if spec.architecture is None:
        raise ValueError("a fit builds its networks: the model description needs an architecture (ipae.networks.MLP or Conv)")
    return replace(spec, architecture=replace(spec.architecture, input_shape=sample_shape)).build(seed=seed)


def fit(
    data: TrainData,
    spec: ModelSpec,
    config: TrainConfig,
    *,
    seed: int = 0,
    resume: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    metadata: dict | None = None,
    on_log: Callable[[dict], None] | None = None,
    monitor: Tensor | np.ndarray | None = None,
) -> tuple[AutoEncoder, TrainResult]:
    """Build the model of `spec` (weights from `seed`) and train it on `data` (N, ...), an array, a
    tensor or a `RowReader` of a file (what `load_array(..., mmap=True)` gives for a large .npy: read
    batch by batch).

    `resume`: a model directory with a training state (a checkpoint, or a finished fit) to continue from.
    `checkpoint_dir`, `metadata`, `on_log` and `monitor` (held-out points whose I(x; z) is measured
    every `config.monitor_every` steps) are `train`'s.
    """
    if data.ndim < 2 or len(data) == 0:
        raise ValueError(f"data must be a non-empty array (N, ...) of samples, got shape {tuple(data.shape)}")
    if spec.distortion == "bernoulli":  # a RowReader too, a chunk at a time
        low, high = value_range(data.numpy() if isinstance(data, torch.Tensor) else data)
        if low < 0 or high > 1:
            raise ValueError(f"the bernoulli distortion needs data in [0, 1]; got values in [{low:g}, {high:g}]")
    model = build_model(spec, tuple(data.shape[1:]), seed=seed)
    if config.device is not None:
        model.to(torch.device(config.device))
    result = train(model, data, config, resume=resume, checkpoint_dir=checkpoint_dir, metadata=metadata, on_log=on_log, monitor=monitor)
    return model, result


# The options of a fit, as `ipae fit` takes them and its config.toml records them: where each goes.
SPEC_OPTIONS = ("arch", "n_components", "hidden", "activation", "distortion", "rate", "beta")
RATE_OPTIONS = {"n_partners": "n_partners", "mc_samples": "n_samples"}  # option -> the rate's own keyword
TRAIN_OPTIONS = (
    "steps",
    "batch_size",
    "lr",
    "seed",
    "precision",
    "compile",
    "log_every",
    "checkpoint_every",
    "monitor_every",
    "monitor_samples",
)
DATA_OPTIONS = ("data", "key", "monitor", "monitor_key")  # monitor: a file of held-out points, as data is
OPTIONS = (*DATA_OPTIONS, *SPEC_OPTIONS, *RATE_OPTIONS, *TRAIN_OPTIONS)


def from_options(options: dict) -> tuple[ModelSpec, TrainConfig]:
    """The model spec and training config that flat `options` (see OPTIONS) name; the rest default.
    `n_partners` may be "all" (all pairs). ValueError, naming the option, for anything invalid."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)}")
    rate_options = {RATE_OPTIONS[name]: options[name] for name in RATE_OPTIONS if name in options}
    if rate_options.get("n_partners") == "all":
        rate_options["n_partners"] = None
    hidden = tuple(options.get("hidden", MLP.hidden))
    networks = (options.get("arch", "mlp"), options.get("n_components", 16), hidden, options.get("activation", MLP.activation))
    spec = ModelSpec(
        architecture_of(*networks),  # for samples of the architecture's default shape: `fit` sets the data's
        rate=options.get("rate", "ip"),
        rate_options=rate_options,
        distortion=options.get("distortion", "mse"),
        beta=options.get("beta"),
    )
    config = TrainConfig(**{name: options[name] for name in TRAIN_OPTIONS if name in options})
    return spec, config


def spec_options(spec: ModelSpec) -> dict:
    """The options of a fit (SPEC_OPTIONS) that describe `spec`, a model of ipae's networks."""
    networks = spec.architecture
    values = {"arch": "conv" if isinstance(networks, Conv) else "mlp", "n_components": networks.n_latent}
    if isinstance(networks, MLP):
        values |= {"hidden": networks.hidden, "activation": networks.activation}
    return values | {"distortion": spec.distortion, "rate": spec.rate, "beta": spec.beta}


def completed_options(options: dict) -> dict:
    """`options` (see OPTIONS) with the value of every option the run uses, defaults included: the
    model's, the rate's (beta resolved to the rate's own default) and the training's, so that a
    config.toml of them names the run whatever the defaults become. Left out: what the run does not use
    (another rate's options, an mlp's layers for conv, the monitor's settings without a monitor, no
    checkpoints)."""
    spec, config = from_options(options)
    rate = create(spec.rate, **spec.rate_options)
    taken = rate_spec(rate)  # the rate's options by its own keywords, defaults included
    values = spec_options(spec)
    values |= {option: taken[keyword] for option, keyword in RATE_OPTIONS.items() if keyword in taken}
    values |= {name: getattr(config, name) for name in TRAIN_OPTIONS}
    if "n_partners" in values and values["n_partners"] is None:  # all pairs, as the options name it
        values["n_partners"] = "all"
    unused = {"hidden", "activation"} if values["arch"] != "mlp" else set()
    unused |= {"monitor_every", "monitor_samples"} if "monitor" not in options else set()
    merged = options | {name: value for name, value in values.items() if name not in unused}
    return {name: merged[name] for name in OPTIONS if merged.get(name) is not None}


def read_options(path: str | Path) -> dict:
    """The options of a TOML config file (names with - or _), checked against OPTIONS and their types.

    A relative `data` path is relative to the config file's directory, and may not leave it (by `..` or
    a symbolic link): a config that comes with its data cannot name files elsewhere by accident or by
    design. An absolute path is taken as written (the config.toml that `ipae fit` writes names the data
    so), as a path on the command line is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: arrays nested thousands deep
        raise ValueError(f"{path}: not valid TOML ({' '.join(str(error).split()) or 'nested too deeply'})") from None
    return _checked_options(values, path, "is not an option a config file can set")


# The types an option takes in a config file or a run's recorded options (TOML and JSON types; a bool is no integer here).
_OPTION_TYPES = {
    **dict.fromkeys(
        ("data", "key", "monitor", "monitor_key", "arch", "activation", "distortion", "rate", "precision"), ((str,), "a string")
    ),
    **dict.fromkeys(
        ("n_components", "mc_samples", "steps", "batch_size", "seed", "log_every", "checkpoint_every", "monitor_every", "monitor_samples"),
        ((int,), "an integer"),
    ),
    "hidden": ((list, tuple), "a list of integers"),
    "beta": ((int, float), "a number"),
    "lr": ((int, float), "a number"),
    "n_partners": ((int, str), 'an integer or "all"'),
    "compile": ((bool,), "true or false"),
}


def _checked_options(values: dict, source: Path, unknown_means: str) -> dict:
    """`values` read from the file `source`, as options: known names and types; `data` under the file's directory."""
    options = {name.replace("-", "_"): value for name, value in values.items()}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{source}: {', '.join(map(repr, unknown))[:300]} {unknown_means}")
    for name, value in options.items():
        types, kind = _OPTION_TYPES[name]
        wrong = isinstance(value, bool) and bool not in types or not isinstance(value, types)
        if wrong or name == "hidden" and any(isinstance(size, bool) or not isinstance(size, int) for size in value):
            raise ValueError(f"{source}: {name} must be {kind}, got {_short_repr(value)}")
        if kind == "a number" and isinstance(value, int) and abs(value) > sys.float_info.max:  # no float: OverflowError later
            raise ValueError(f"{source}: {name} must be a finite number, got {_short_repr(value)}")
        try:  # the values that are valid or not whatever the other options are
            if name in TRAIN_OPTIONS:
                TrainConfig(**{name: value})
            elif name in ("arch", "rate", "beta"):
                from_options({name: value})
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    if isinstance(options.get("hidden"), list):
        options["hidden"] = tuple(options["hidden"])
    for name in ("data", "monitor"):
        if name in options:
            options[name] = str(_within(source.parent, options[name], source, name))
    return options


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _within(directory: Path, name: str, source: Path, option: str = "data") -> Path:
    """The file `name` that `source` names: as written when absolute, else under `directory`, which it may not leave."""
    if Path(name).is_absolute():
        return Path(name)
    try:
        base = directory.resolve()
        target = (base / name).resolve()  # symbolic links followed: a link out of the directory leaves it
    except (OSError, ValueError, RuntimeError) as error:  # a NUL byte, a loop of links
        raise ValueError(f"{source}: {option} {_short_repr(name)} is not a usable path ({error})") from None
    if not target.is_relative_to(base):
        raise ValueError(
            f"{source}: {option} {_short_repr(name)} leads outside {directory}; a relative path must stay in the file's directory"
        )
    return target


def options_toml(options: dict) -> str:
    """`options` as a flat TOML document (JSON writes strings, numbers, booleans and lists as TOML does)."""
    values = {name: list(value) if isinstance(value, tuple) else value for name, value in options.items() if value is not None}
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items())


def merged_options(given: dict, *, resume: str | Path | None = None, config: str | Path | None = None) -> dict:
    """The options of a fit: those the run in `resume` ran with, then the TOML file `config`, then
    `given` (the command line), each overriding the one before; `data` and `monitor` made absolute (a
    relative one in `config` or in the run's record is under that file's directory, see `read_options`).
    A source that changes the rate drops the beta and the rate options of the sources before it: they
    were the other rate's (a recorded config.toml holds them all, see `completed_options`)."""
    layers = []
    if resume is not None:
        metadata = read_metadata(resume)
        if "fit" not in metadata:
            kind = "a saved estimator" if "estimator" in metadata else "a model saved otherwise (by `ipae toy`, `ipae.save`, ...)"
            raise ValueError(f"--resume {resume}: not a run of `ipae fit` but {kind}; --resume continues a fit or its OUT.checkpoint")
        recorded = metadata["fit"]
        if not isinstance(recorded, dict):
            raise ValueError(f"{Path(resume) / 'model.json'}: the recorded fit options are not a table, got {_short_repr(recorded)}")
        layers.append(_checked_options(recorded, Path(resume) / "model.json", "is not an option of a fit"))
    if config is not None:
        layers.append(read_options(config))
    options: dict = {}
    for layer in [*layers, given]:
        before = options.get("rate", ModelSpec.rate)
        if layer.get("rate", before) != before:
            options = {name: value for name, value in options.items() if name not in ("beta", *RATE_OPTIONS)}
        options |= layer
    if "data" not in options:
        raise ValueError('no data: give DATA, or `data = "..."` in the --config file')
    paths = {name: str(Path(options[name]).absolute()) for name in ("data", "monitor") if name in options}
    return options | paths


def save_fit(directory: Path, model: AutoEncoder, result: TrainResult, options: dict) -> None:
    """A fit's model directory: the model with its training state and options, config.toml, metrics.json
    (the final loss, distortion and rate; with a monitor, its last measurement: I(x; z) of the monitor
    points by `ipae.diagnostics.information`'s keys and their heldout_distortion)."""
    save_model(model, directory, state=result.state, metadata={"fit": options})
    write_atomic(directory / "config.toml", lambda tmp: tmp.write_text(options_toml(options)))
    final = {"loss": result.loss[-1], "distortion": result.distortion[-1], "rate": result.rate[-1], "train_seconds": result.seconds}
    measured = result.monitor[-1] if result.monitor and result.monitor[-1]["step"] == len(result.loss) else {}
    heldout = {key: value for key, value in measured.items() if key not in ("step", "monitor_seconds")}
    write_json(directory / "metrics.json", {"steps": len(result.loss), **{key: float(value) for key, value in final.items()}, **heldout})
