"""The `ipae` command. Bad input is one line on stderr and exit code 2; nothing is written then."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ipae import __version__
from ipae.distributed import is_main_process, world_size
from ipae.layers import ACTIVATIONS
from ipae.models import DISTORTIONS, RATES
from ipae.train import PRECISIONS, CompileFailed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints the whole usage; one line is enough
        self.exit(EXIT_BAD_INPUT, f"ipae: error: {message} (see `{self.prog} --help`)\n")


def _number(text: str, kind: type, accept, requirement: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < math.inf, "a finite number >= 0")


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < math.inf, "a finite number > 0")


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be layer sizes >= 1 separated by commas, such as 512,256; got {text!r}")
    return sizes


def _pairs(text: str) -> int | None:
    return None if text == "all" else _number(text, int, lambda v: v >= 1, "an integer >= 1 or 'all'")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ipae", description="Information Potential Auto-Encoders.")
    parser.add_argument("--version", action="version", version=f"ipae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    toy = commands.add_parser("toy", help="train one model on the paper's 25-Gaussian toy task")
    _add_model_options(toy, beta=0.01, beta_help="weight of the rate term (default 0.01)")
    toy.add_argument("--steps", type=_positive_int, default=5000)
    toy.add_argument("--batch-size", type=_positive_int, default=512)
    toy.add_argument("--lr", type=_positive_float, default=1e-3)
    toy.add_argument("--seed", type=int, default=0)
    _add_output_options(toy)

    mnist = commands.add_parser("mnist", help="the paper's MNIST experiment for one configuration (digits 1, 3, 4; linear-SVM error)")
    _add_model_options(mnist, beta=1e-5, beta_help="weight of the rate term (default 1e-5)")
    mnist.add_argument("--steps", type=_positive_int, default=5000)
    mnist.add_argument("--repeats", type=_positive_int, default=10, help="new weights and training subset each (default 10)")
    mnist.add_argument("--seed", type=int, default=0)
    mnist.add_argument("--data-dir", type=Path, help="a directory with the four MNIST files (default: the cache, downloading)")
    mnist.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="repeats in parallel, one thread each")
    _add_output_options(mnist)

    fit = commands.add_parser("fit", help="train a model on your own data (.npy, .npz or .csv)")
    fit.add_argument("data", type=Path, nargs="?", help="samples x features; may instead be `data` in --config")
    fit.add_argument("--config", type=Path, help="a TOML file of these options (names with - or _); the command line wins")
    fit.add_argument("--resume", type=Path, help="continue the run saved in this model directory, with its config.toml")
    fit.add_argument("--key", help="the array's name in a .npz archive")
    _add_model_options(fit, beta=None, beta_help="weight of the rate term (default 0.01 for ipae, 1 for vae)")
    fit.add_argument("--n-components", type=_positive_int, default=16, help="size of the code z (default 16)")
    fit.add_argument("--hidden", type=_sizes, default=(2048,), help="hidden layer sizes, comma-separated (default 2048)")
    fit.add_argument("--activation", choices=tuple(ACTIVATIONS), default="relu")
    fit.add_argument("--distortion", choices=tuple(DISTORTIONS), default="mse", help="bernoulli: data in [0, 1], such as pixels")
    fit.add_argument("--steps", type=_positive_int, default=5000)
    fit.add_argument("--batch-size", type=_positive_int, default=512, help="per process under torchrun")
    fit.add_argument("--lr", type=_positive_float, default=1e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--log", type=Path, help="also write the JSON-lines log here while training (OUT/metrics.jsonl has it at the end)")
    fit.add_argument("--log-every", type=_positive_int, default=100, help="steps per line of the log (default 100)")
    fit.add_argument("--tensorboard", type=Path, help="a TensorBoard log directory (needs the tensorboard package)")
    fit.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        help="every N steps, save the run so far to OUT.checkpoint (removed at the end); continue a killed run with --resume",
    )
    _add_output_options(fit)
    parser.fit_parser = fit  # for reading its options from config files

    decode = commands.add_parser("decode", help="decode codes (samples x n_components) with a trained model")
    _add_model_and_data(decode, "codes", "codes (samples x n_components)")
    decode.add_argument("--out", type=Path, required=True, help="the .npy file of reconstructions to write")
    decode.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    reproduce = commands.add_parser("reproduce", help="reproduce one of the paper's figures")
    reproduce.add_argument(
        "figure",
        choices=("figure1", "figure2", "rate-distortion"),
        help="figure1: the paper's toy study; figure2: its MNIST study; rate-distortion: tighter rate terms on the toy task",
    )
    reproduce.add_argument("--steps", type=_positive_int, default=5000, help="training steps per run (paper: 5000)")
    reproduce.add_argument("--seed", type=int, default=0)
    reproduce.add_argument(
        "--jobs", type=_positive_int, default=os.cpu_count() or 1, help="runs in parallel, one thread each (default: one per core)"
    )
    reproduce.add_argument("--repeats", type=_positive_int, help="figure2: repeats per cell (default 10, the paper's)")
    reproduce.add_argument("--data-dir", type=Path, help="figure2: a directory with the four MNIST files (default: the cache)")
    reproduce.add_argument("--resume", action="store_true", help="figure2: continue the sweep in --out, keeping its finished repeats")
    _add_output_options(reproduce)

    info = commands.add_parser("info", help="bounds and a Monte Carlo estimate of I(x; z) for a trained model on data")
    _add_model_and_data(info, "data", "samples x features")
    info.add_argument("--samples", type=_positive_int, default=16, help="Monte Carlo draws per data point (default 16)")
    info.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")

    encode = commands.add_parser("encode", help="encode data with a trained model")
    _add_model_and_data(encode, "data", "samples x features")
    encode.add_argument("--out", type=Path, required=True, help="the .npy file of codes to write")
    encode.add_argument("--sampled", action="store_true", help="sample z ~ N(mu, sigma^2) instead of the mean")
    encode.add_argument("--seed", type=int, default=0, help="noise seed for --sampled")
    encode.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser


def _add_model_options(parser: argparse.ArgumentParser, *, beta: float | None, beta_help: str) -> None:
    parser.add_argument("--model", choices=("ipae", "vae"), default="ipae")
    parser.add_argument("--beta", type=_non_negative_float, default=beta, help=beta_help)
    parser.add_argument("--rate", choices=tuple(RATES), help="the bound on I(x; z) to train with (default: ip for ipae, vae for vae)")
    parser.add_argument("--n-pairs", type=_pairs, default=1, help="IPAE partners per sample N_j, or 'all' (default 1)")


def _add_model_and_data(parser: argparse.ArgumentParser, name: str, what: str) -> None:
    parser.add_argument("model_dir", type=Path, help="a model directory holding model.json and model.safetensors")
    parser.add_argument(name, type=Path, help=f"{what} as .npy, .npz or .csv")
    parser.add_argument("--key", help="the array's name in a .npz archive")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument(
        "--precision", choices=tuple(PRECISIONS), default="fp32", help="bf16: layers in bfloat16, about twice as fast (default fp32)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the objective: seconds to compile, then faster steps, mostly with bf16"
    )


def _toy(args: argparse.Namespace) -> int:
    from ipae.experiments.toy import ToyRun, run_toy

    run = ToyRun(
        model=args.model,
        beta=args.beta,
        n_pairs=args.n_pairs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
        rate=args.rate,
    )
    device = _training_device(args.device)
    with _output_directory(args) as stage:
        metrics = run_toy(run, stage, device=device, progress=False if args.quiet else None).metrics
    if metrics["status"] != "ok":
        print(f"ipae: {metrics['error']}; recorded in {args.out / 'metrics.json'}", file=sys.stderr)
        return EXIT_FAILED
    _report(
        f"E = {metrics['E']:.4f}  E_sampled = {metrics['E_sampled']:.4f}  E_identity = {metrics['E_identity']:.4f}  "
        f"train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0


def _mnist(args: argparse.Namespace) -> int:
    from ipae.data.mnist import mnist_directory
    from ipae.experiments.mnist import MnistRun, run_mnist

    run = MnistRun(
        model=args.model,
        beta=args.beta,
        n_pairs=args.n_pairs,
        steps=args.steps,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
        rate=args.rate,
    )
    device = _training_device(args.device)
    data_dir = mnist_directory(args.data_dir)  # found, checked or downloaded before anything is written
    jobs = args.jobs if world_size() == 1 else 1  # under torchrun the processes share each repeat
    with _output_directory(args) as stage:
        metrics = run_mnist(
            run, stage, repeats=args.repeats, data_dir=data_dir, jobs=jobs, device=str(device), progress=False if args.quiet else None
        )
    if metrics["svm_error"] is None:
        print(f"ipae: all {args.repeats} repeats diverged; recorded in {args.out / 'metrics.json'}", file=sys.stderr)
        return EXIT_FAILED
    _report(
        f"linear-SVM test error {metrics['svm_error']:.2f} +- {metrics['svm_error_std']:.2f} % over {len(metrics['svm_errors'])} repeats "
        f"({metrics['failed_repeats']} failed), train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0


def _fit(args: argparse.Namespace) -> int:
    from ipae.checkpoint import load_model, load_state
    from ipae.data.arrays import load_array
    from ipae.experiments.toy import MODELS
    from ipae.models import AutoEncoder, ModelConfig
    from ipae.results import json_lines, write_json

    if args.data is None:
        raise ValueError('no data: give DATA, or `data = "..."` in the --config file')
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
    device = _training_device(args.device)
    x = load_array(args.data, key=args.key)
    if args.distortion == "bernoulli" and not ((x >= 0) & (x <= 1)).all():
        raise ValueError(f"{args.data}: the bernoulli distortion needs values in [0, 1]; scale the data or use --distortion mse")
    beta = args.beta if args.beta is not None else {"ipae": 0.01, "vae": 1.0}[args.model]
    config = ModelConfig(
        n_inputs=x.shape[1],
        hidden=args.hidden,
        n_latent=args.n_components,
        activation=args.activation,
        distortion=args.distortion,
        rate=args.rate or MODELS[args.model],
        beta=beta,
    )
    state = None
    if args.resume:
        model, state = load_model(args.resume), load_state(args.resume)
        if model.config != config:
            raise ValueError(f"--resume {args.resume}: its model is {model.config}, the options ask for {config}")
    else:
        model = AutoEncoder(config, seed=args.seed)
    used = _fit_config(args, beta)
    tensorboard = _tensorboard_writer(args.tensorboard)  # the last check: it creates its directory
    live_log = args.log if is_main_process() else None
    with _output_directory(args) as out, json_lines(out / "metrics.jsonl", live_log) as log:

        def write_log(record: dict) -> None:
            log(record)
            if tensorboard is not None:
                for name in ("loss", "distortion", "rate"):
                    tensorboard.add_scalar(f"train/{name}", record[name], record["step"])

        result = _train_in_pieces(model.to(device), torch.from_numpy(x), args, state, write_log, used)
        _save_fit(model, out, result.state, used)
        summary = {"loss": result.loss[-1], "distortion": result.distortion[-1], "rate": result.rate[-1], "train_seconds": result.seconds}
        write_json(out / "metrics.json", {"steps": len(result.loss), **{key: float(value) for key, value in summary.items()}})
    if tensorboard is not None:
        tensorboard.close()
    if is_main_process():
        shutil.rmtree(_checkpoint_directory(args), ignore_errors=True)
    _report(
        f"{len(result.loss)} steps: loss {result.loss[-1]:.4g} (distortion {result.distortion[-1]:.4g}, rate {result.rate[-1]:.4g}), "
        f"{result.seconds:.1f} s -> {args.out}"
    )
    return 0


def _checkpoint_directory(args: argparse.Namespace) -> Path:
    return args.out.with_name(args.out.name + ".checkpoint")


def _train_in_pieces(model, x: torch.Tensor, args: argparse.Namespace, state, on_log, used: dict):
    """Train as `args` say, from `state` (None: from the start); with --checkpoint-every N, in pieces
    that end at multiples of N, saving the run so far to OUT.checkpoint after each. Returns the result."""
    from ipae.results import staged_directory
    from ipae.train import TrainingDiverged, train

    checkpoint, piece = _checkpoint_directory(args), args.checkpoint_every or args.steps
    first, seconds = (0 if state is None else state.step), 0.0
    try:
        for stop_at in [*range(first - first % piece + piece, args.steps, piece), args.steps]:
            result = train(
                model,
                x,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                n_pairs=args.n_pairs,
                seed=args.seed,
                precision=args.precision,
                compile=args.compile,
                progress=False if args.quiet else None,
                log_every=args.log_every,
                on_log=on_log,
                resume=state,
                stop_at=stop_at,
            )
            state, seconds = result.state, seconds + result.seconds
            if stop_at < args.steps and is_main_process():
                with staged_directory(checkpoint, overwrite=True) as stage:
                    _save_fit(model, stage, state, used)
    except TrainingDiverged as diverged:
        kept = f"; the run up to step {state.step} is in {checkpoint}" if args.checkpoint_every and checkpoint.exists() else ""
        raise _Failed(f"{diverged}; try a larger --beta or a smaller --lr (no model was written{kept})") from None
    except KeyboardInterrupt:
        if args.checkpoint_every and checkpoint.exists():
            raise KeyboardInterrupt(
                f"the run so far is in {checkpoint}; continue it with `ipae fit --resume {checkpoint} --out {args.out}`"
            ) from None
        raise
    return replace(result, seconds=seconds)  # the training time of all pieces


def _save_fit(model, directory: Path, state, used: dict) -> None:
    """A fit's model directory: the model with its training state, and the config it ran with."""
    from ipae.checkpoint import save_model
    from ipae.results import write_atomic

    save_model(model, directory, state=state, metadata={"fit": used})
    write_atomic(directory / "config.toml", lambda tmp: tmp.write_text(_toml(used)))


def _report(line: str) -> None:
    """Print the command's result, once: on the main process."""
    if is_main_process():
        print(line)


class _Failed(Exception):
    """A run that failed for a reason other than bad input (exit code 1)."""


def _fit_config(args: argparse.Namespace, beta: float) -> dict:
    """The options a fit ran with, as a --config file would give them."""
    used = {"data": str(args.data.absolute()), "model": args.model, "beta": beta, "rate": args.rate}
    used |= {"n_pairs": "all" if args.n_pairs is None else args.n_pairs, "n_components": args.n_components, "hidden": list(args.hidden)}
    used |= {
        name: getattr(args, name)
        for name in ("key", "activation", "distortion", "steps", "batch_size", "lr", "seed", "precision", "compile")
    }
    return {name: value for name, value in used.items() if value is not None}


def _toml(values: dict) -> str:
    """A flat TOML document of strings, numbers, booleans and lists of numbers (JSON writes those as TOML does)."""
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in values.items())


# Options a --config file may not set: where the run goes, and the files that configure it.
_NOT_IN_CONFIG = {"config", "resume", "out", "overwrite"}


def _config_arguments(parser: argparse.ArgumentParser, path: Path) -> tuple[list[str], str | None]:
    """The command-line arguments that the TOML file `path` stands for, and its `data` entry."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None
    options = {action.dest: action for action in parser.fit_parser._actions if action.option_strings}
    data = values.pop("data", None)
    arguments = []
    for name, value in values.items():
        dest = name.replace("-", "_")
        if dest not in options or dest in _NOT_IN_CONFIG:
            raise ValueError(f"{path}: {name!r} is not an option a config file can set")
        if isinstance(value, bool):
            if value and options[dest].nargs == 0:
                arguments.append(options[dest].option_strings[-1])
            elif options[dest].nargs != 0:
                raise ValueError(f"{path}: {name} must not be true or false")
            continue
        text = ",".join(str(item) for item in value) if isinstance(value, list) else str(value)
        arguments += [options[dest].option_strings[-1], text]
    return arguments, data


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; for `fit`, options from --resume's config.toml and --config come first,
    so that the command line overrides them."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command != "fit" or not (args.config or args.resume):
        return args
    extra, data = [], None
    for path in (args.resume / "config.toml" if args.resume else None, args.config):
        if path is not None:
            arguments, data = _config_arguments(parser, path)
            extra += arguments
    args = parser.parse_args(["fit", *extra, *argv[argv.index("fit") + 1 :]])
    if args.data is None and data is not None:
        args.data = Path(data)
    return args


def _tensorboard_writer(directory: Path | None):
    """A TensorBoard SummaryWriter on the main process, when asked for; a clear error without tensorboard."""
    if directory is None or not is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(directory))


def _training_device(device_name: str | None) -> torch.device:
    """The device to train on; under torchrun, this process joins the others (on CUDA, its own GPU)."""
    from ipae.distributed import init_from_environment
    from ipae.train import resolve_device

    device = resolve_device(device_name)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    init_from_environment(device)
    return device


@contextmanager
def _output_directory(args: argparse.Namespace) -> Iterator[Path]:
    """Where a command writes: a staged --out on the main process; a throwaway directory on the others."""
    from ipae.results import staged_directory

    if is_main_process():
        with staged_directory(args.out, overwrite=args.overwrite) as stage:
            yield stage
    else:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)


def _reproduce(args: argparse.Namespace) -> int:
    from ipae.experiments import figure1, rate_distortion
    from ipae.results import staged_directory
    from ipae.train import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("ipae reproduce runs its grid in parallel itself (--jobs); start it without torchrun")
    if args.figure == "figure2":
        return _reproduce_figure2(args)
    if args.repeats is not None or args.data_dir is not None or args.resume:
        raise ValueError("--repeats, --data-dir and --resume apply to figure2 only")
    experiments = {
        "figure1": (figure1, figure1.reproduce_figure1),
        "rate-distortion": (rate_distortion, rate_distortion.reproduce_rate_distortion),
    }
    module, reproduce = experiments[args.figure]
    device = resolve_device(args.device)
    with staged_directory(args.out, overwrite=args.overwrite) as stage:
        rows = reproduce(
            stage,
            steps=args.steps,
            seed=args.seed,
            precision=args.precision,
            compile=args.compile,
            jobs=args.jobs,
            device=device,
            progress=False if args.quiet else None,
        )
    _print_table(rows, module)
    print(f"-> {args.out}")
    return 0


def _reproduce_figure2(args: argparse.Namespace) -> int:
    """Unlike the toy figures, the sweep writes into --out as it goes, so that it can be resumed."""
    from ipae.data.mnist import mnist_directory
    from ipae.experiments import figure2
    from ipae.train import resolve_device

    if args.resume and args.overwrite:
        raise ValueError("--resume keeps the finished repeats in --out, --overwrite deletes them: choose one")
    if args.out.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{args.out} already exists; pass --resume to continue the sweep in it, or --overwrite to start again")
    device = resolve_device(args.device)
    data_dir = mnist_directory(args.data_dir)  # found, checked or downloaded before anything is written
    if args.overwrite and args.out.exists():
        shutil.rmtree(args.out)
    try:
        rows = figure2.reproduce_figure2(
            args.out,
            steps=args.steps,
            seed=args.seed,
            precision=args.precision,
            compile=args.compile,
            repeats=args.repeats or 10,
            data_dir=data_dir,
            jobs=args.jobs,
            device=device,
            progress=False if args.quiet else None,
        )
    except KeyboardInterrupt:
        print(f"ipae: interrupted; the finished repeats are kept in {args.out}: add --resume to continue", file=sys.stderr)
        return 130
    _print_table(rows, figure2)
    print(f"-> {args.out}")
    return 0


def _print_table(rows: list[dict], module) -> None:
    from ipae.results import markdown_table

    print(markdown_table(rows, module.COLUMNS), end="")
    print(module.summary(rows))


def _info(args: argparse.Namespace) -> int:
    from ipae.checkpoint import load_model
    from ipae.data.arrays import load_array
    from ipae.mixture import mutual_information

    model = load_model(args.model_dir).double()
    x = torch.from_numpy(load_array(args.data, n_features=model.config.n_inputs, key=args.key)).double()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        generator = torch.Generator().manual_seed(args.seed)
        estimates = {
            method: float(mutual_information(mu, logvar, method=method, generator=generator, n_samples=args.samples))
            for method in ("bhattacharyya", "mc", "pairwise-kl", "jensen")
        }
    n, d = mu.shape
    print(f"I(x; z) in nats of {args.model_dir} on {n} points of {args.data} (codes of dimension {d}):")
    print(f"  lower bound (Bhattacharyya)      {estimates['bhattacharyya']:.4f}")
    print(f"  Monte Carlo ({args.samples} draws per point)  {estimates['mc']:.4f}")
    print(f"  upper bound (pairwise KL)        {estimates['pairwise-kl']:.4f}")
    print(f"  Jensen bound (eq. 10 - D/2)      {estimates['jensen']:.4f}")
    print(f"  log N, the most a mixture of N components can carry: {math.log(n):.4f}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from ipae.checkpoint import load_model
    from ipae.data.arrays import load_array
    from ipae.results import write_atomic

    _check_npy_out(args)
    model = load_model(args.model_dir)
    z = torch.from_numpy(load_array(args.codes, n_features=model.config.n_latent, key=args.key))
    with torch.no_grad():
        x = model.decode(z)
    write_atomic(args.out, partial(_save_npy, x.numpy()))
    print(f"{x.shape[0]} reconstructions of dimension {x.shape[1]} -> {args.out}")
    return 0


def _check_npy_out(args: argparse.Namespace) -> None:
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    if args.out.suffix != ".npy":
        raise ValueError(f"--out must end in .npy, got {args.out}")


def _encode(args: argparse.Namespace) -> int:
    from ipae.checkpoint import load_model
    from ipae.data.arrays import load_array
    from ipae.results import write_atomic

    _check_npy_out(args)
    model = load_model(args.model_dir)
    x = torch.from_numpy(load_array(args.data, n_features=model.config.n_inputs, key=args.key))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        codes = mu
        if args.sampled:
            codes = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=torch.Generator().manual_seed(args.seed))
    write_atomic(args.out, partial(_save_npy, codes.numpy()))
    print(f"{codes.shape[0]} codes of dimension {codes.shape[1]} -> {args.out}")
    return 0


def _save_npy(array: np.ndarray, path: Path) -> None:
    with path.open("wb") as file:  # a file object: np.save would append ".npy" to a temporary name
        np.save(file, array, allow_pickle=False)


COMMANDS = {"toy": _toy, "mnist": _mnist, "fit": _fit, "reproduce": _reproduce, "info": _info, "encode": _encode, "decode": _decode}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(list(sys.argv[1:] if argv is None else argv))
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as error:  # bad input, missing or damaged files, failed downloads
        print(f"ipae: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (_Failed, CompileFailed) as failure:
        print(f"ipae: {failure}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as interrupt:
        print(f"ipae: interrupted; {interrupt or 'nothing was written'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
