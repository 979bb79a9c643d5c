"""The `ipae` command. Bad input is one line on stderr and exit code 2; nothing is written then."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ipae import __version__
from ipae.models import RATES
from ipae.train import PRECISIONS

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


def _pairs(text: str) -> int | None:
    return None if text == "all" else _number(text, int, lambda v: v >= 1, "an integer >= 1 or 'all'")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ipae", description="Information Potential Auto-Encoders.")
    parser.add_argument("--version", action="version", version=f"ipae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    toy = commands.add_parser("toy", help="train one model on the paper's 25-Gaussian toy task")
    toy.add_argument("--model", choices=("ipae", "vae"), default="ipae")
    toy.add_argument("--beta", type=_non_negative_float, default=0.01, help="weight of the rate term (default 0.01)")
    toy.add_argument("--rate", choices=tuple(RATES), help="the bound on I(x; z) to train with (default: ip for ipae, vae for vae)")
    toy.add_argument("--n-pairs", type=_pairs, default=1, help="IPAE partners per sample N_j, or 'all' (default 1)")
    toy.add_argument("--steps", type=_positive_int, default=5000)
    toy.add_argument("--batch-size", type=_positive_int, default=512)
    toy.add_argument("--lr", type=_positive_float, default=1e-3)
    toy.add_argument("--seed", type=int, default=0)
    _add_output_options(toy)

    mnist = commands.add_parser("mnist", help="the paper's MNIST experiment for one configuration (digits 1, 3, 4; linear-SVM error)")
    mnist.add_argument("--model", choices=("ipae", "vae"), default="ipae")
    mnist.add_argument("--beta", type=_non_negative_float, default=1e-5, help="weight of the rate term (default 1e-5)")
    mnist.add_argument("--rate", choices=tuple(RATES), help="the bound on I(x; z) to train with (default: ip for ipae, vae for vae)")
    mnist.add_argument("--n-pairs", type=_pairs, default=1, help="IPAE partners per sample N_j, or 'all' (default 1)")
    mnist.add_argument("--steps", type=_positive_int, default=5000)
    mnist.add_argument("--repeats", type=_positive_int, default=10, help="new weights and training subset each (default 10)")
    mnist.add_argument("--seed", type=int, default=0)
    mnist.add_argument("--data-dir", type=Path, help="a directory with the four MNIST files (default: the cache, downloading)")
    mnist.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="repeats in parallel, one thread each")
    _add_output_options(mnist)

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
    info.add_argument("model_dir", type=Path, help="a model or run directory holding model.json and model.pt")
    info.add_argument("data", type=Path, help="a .npy array (samples, features)")
    info.add_argument("--samples", type=_positive_int, default=16, help="Monte Carlo draws per data point (default 16)")
    info.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")

    encode = commands.add_parser("encode", help="encode a .npy array with a trained model")
    encode.add_argument("model_dir", type=Path, help="a run directory holding model.json and model.pt")
    encode.add_argument("data", type=Path, help="a .npy array (samples, features)")
    encode.add_argument("--out", type=Path, required=True, help="the .npy file of codes to write")
    encode.add_argument("--sampled", action="store_true", help="sample z ~ N(mu, sigma^2) instead of the mean")
    encode.add_argument("--seed", type=int, default=0, help="noise seed for --sampled")
    encode.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument(
        "--precision", choices=tuple(PRECISIONS), default="fp32", help="bf16: layers in bfloat16, about twice as fast (default fp32)"
    )


def _toy(args: argparse.Namespace) -> int:
    from ipae.experiments.toy import ToyRun, run_toy
    from ipae.results import staged_directory
    from ipae.train import resolve_device

    run = ToyRun(
        model=args.model,
        beta=args.beta,
        n_pairs=args.n_pairs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        precision=args.precision,
        rate=args.rate,
    )
    device = resolve_device(args.device)
    with staged_directory(args.out, overwrite=args.overwrite) as stage:
        metrics = run_toy(run, stage, device=device, progress=False if args.quiet else None).metrics
    if metrics["status"] != "ok":
        print(f"ipae: {metrics['error']}; recorded in {args.out / 'metrics.json'}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"E = {metrics['E']:.4f}  E_sampled = {metrics['E_sampled']:.4f}  E_identity = {metrics['E_identity']:.4f}  "
        f"train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0


def _mnist(args: argparse.Namespace) -> int:
    from ipae.data.mnist import mnist_directory
    from ipae.experiments.mnist import MnistRun, run_mnist
    from ipae.results import staged_directory
    from ipae.train import resolve_device

    run = MnistRun(
        model=args.model, beta=args.beta, n_pairs=args.n_pairs, steps=args.steps, seed=args.seed, precision=args.precision, rate=args.rate
    )
    device = resolve_device(args.device)
    data_dir = mnist_directory(args.data_dir)  # found, checked or downloaded before anything is written
    with staged_directory(args.out, overwrite=args.overwrite) as stage:
        metrics = run_mnist(
            run, stage, repeats=args.repeats, data_dir=data_dir, jobs=args.jobs, device=str(device), progress=False if args.quiet else None
        )
    if metrics["svm_error"] is None:
        print(f"ipae: all {args.repeats} repeats diverged; recorded in {args.out / 'metrics.json'}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"linear-SVM test error {metrics['svm_error']:.2f} +- {metrics['svm_error_std']:.2f} % over {len(metrics['svm_errors'])} repeats "
        f"({metrics['failed_repeats']} failed), train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from ipae.experiments import figure1, rate_distortion
    from ipae.results import staged_directory
    from ipae.train import resolve_device

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
    from ipae.data.arrays import load_array
    from ipae.mixture import mutual_information
    from ipae.results import load_model

    model = load_model(args.model_dir).double()
    x = torch.from_numpy(load_array(args.data, n_features=model.config.n_inputs)).double()
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


def _encode(args: argparse.Namespace) -> int:
    from ipae.data.arrays import load_array
    from ipae.results import load_model, write_atomic

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    if args.out.suffix != ".npy":
        raise ValueError(f"--out must end in .npy, got {args.out}")
    model = load_model(args.model_dir)
    x = torch.from_numpy(load_array(args.data, n_features=model.config.n_inputs))
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


COMMANDS = {"toy": _toy, "mnist": _mnist, "reproduce": _reproduce, "info": _info, "encode": _encode}


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as error:  # bad input, missing or damaged files, failed downloads
        print(f"ipae: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ipae: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
