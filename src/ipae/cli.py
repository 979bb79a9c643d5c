"""The `ipae` command: parses options, calls the library, prints. Bad input is one line on stderr and
exit code 2, and nothing is written then; a run that fails (a non-finite loss) exits with 1."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ipae._version import __version__
from ipae.distributed import init_from_environment, is_main_process, launched
from ipae.fitting import OPTIONS as FIT_OPTIONS
from ipae.layers import ACTIVATIONS
from ipae.models import DISTORTIONS
from ipae.networks import ARCHITECTURES
from ipae.rates import RATES
from ipae.train import PRECISIONS, CompileFailed, TrainConfig, TrainingDiverged, keep_freed_memory, resolve_device

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1
THREADS_HELP = (
    "Training uses torch's threads, one per core: with another job on the machine they wait for each other, "
    "and a step can take many times as long (up to 7x measured); pass --threads 1 (or set OMP_NUM_THREADS=1) then."
)
# --beta's default, from the one place it is set: each rate's `default_beta` (ipae.rates)
BETA_DEFAULTS = ", ".join(f"{name} {cls.default_beta:g}" for name, cls in RATES.items())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints the whole usage; one line is enough
        self.exit(EXIT_BAD_INPUT, f"ipae: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: type, accept, requirement: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    return parse


_beta = _number(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
_positive_float = _number(float, lambda v: 0 < v < math.inf, "a finite number > 0")
_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip().isdigit())
    if len(sizes) != len(text.split(",")) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be layer sizes >= 1 separated by commas, such as 512,256; got {text!r}")
    return sizes


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _partners(text: str) -> int | str:
    return "all" if text == "all" else _number(int, lambda v: v >= 1, "an integer >= 1 or 'all'")(text)


def _options(parser, default=argparse.SUPPRESS, *, training: bool = True) -> None:
    """The rate and training options; SUPPRESS: absent unless given (`fit` merges config files under them)."""
    add = partial(parser.add_argument, default=default)
    add("--rate", choices=tuple(RATES), help="the bound on I(x; z): ip (IPAE, eq. 10), vae (KL to the prior, eq. 5), ... (default ip)")
    add("--beta", type=_beta, help=f"weight of the rate term (default: the rate's own, {BETA_DEFAULTS})")
    add("--n-partners", type=_partners, help="ip: partners per sample N_j, or 'all' (default 1)")
    add("--mc-samples", type=_positive_int, help="mc: draws per sample (default 1)")
    if training:
        add("--steps", type=_positive_int, help="training steps (default 5000, the paper's)")
        add("--batch-size", type=_positive_int, help="samples per step, per process under torchrun (default 512)")
        add("--lr", type=_positive_float, help="Adam's learning rate (default 1e-3)")
    add("--seed", type=int, help="seed of the data, weights, batches and noise (default 0)")
    add(
        "--precision",
        choices=PRECISIONS,
        help="bf16: layers in bfloat16, faster only with native bf16 (AVX512-BF16, AMX, GPUs); auto picks",
    )
    parser.add_argument(
        "--compile", action="store_true", default=default, help="torch.compile the objective: seconds to compile, then faster steps"
    )


def _monitor_options(parser, default) -> None:
    add = partial(parser.add_argument, type=_positive_int, default=default)
    add("--monitor-every", help="steps between measurements of I(x; z) on the held-out points, a multiple of --log-every (default 500)")
    add("--monitor-samples", help="Monte Carlo draws per held-out point in each measurement (default 1)")


def _paper_exact(parser) -> None:
    parser.add_argument(
        "--paper-exact",
        action="store_true",
        help="the model as printed: no log-variance bound, the toy's mean squared error, eq. 11's weight 1/2 on IPAE's distortion",
    )


def _output(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument(
        "--threads", type=_positive_int, help="torch threads of this process (default: one per core; worker processes of --jobs use one)"
    )


def _model_and_data(parser, name: str) -> None:
    parser.add_argument("model_dir", type=Path, help="a model directory (model.json and model.safetensors)")
    parser.add_argument(name, type=Path, help=f"{name} as .npy, .npz or .csv")
    parser.add_argument("--key", help="the array's name in a .npz archive")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ipae", description="Information Potential Auto-Encoders.", epilog=THREADS_HELP)
    parser.add_argument("--version", action="version", version=f"ipae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    toy = commands.add_parser("toy", help="one model on the paper's 25-Gaussian toy task", epilog=THREADS_HELP)
    _options(toy, None)
    toy.add_argument("--monitor", action="store_true", help="log I(x; z) and the distortion of the 5000 held-out points while training")
    _monitor_options(toy, None)
    _paper_exact(toy)
    _output(toy)
    mnist = commands.add_parser("mnist", help="the paper's MNIST experiment for one configuration (digits 1, 3, 4)", epilog=THREADS_HELP)
    _options(mnist, None, training=False)
    _paper_exact(mnist)
    mnist.add_argument("--steps", type=_positive_int)
    mnist.add_argument("--repeats", type=_positive_int, default=10, help="new weights and training subset each (default 10)")
    mnist.add_argument("--data-dir", type=Path, help="a directory with the four MNIST files (default: the cache, downloading)")
    mnist.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="repeats in parallel, one thread each")
    _output(mnist)
    fit = commands.add_parser("fit", help="train a model on your own data (.npy, .npz or .csv)", epilog=THREADS_HELP)
    fit.add_argument("data", type=Path, nargs="?", help="samples x ...; or `data` in --config")
    fit.add_argument("--config", type=Path, help="a TOML file of these options (names with - or _); the command line wins")
    fit.add_argument("--resume", type=Path, help="continue the run in this model directory (a fit, or OUT.checkpoint), with its options")
    fit.add_argument("--key", default=argparse.SUPPRESS, help="the array's name in a .npz archive")
    fit.add_argument(
        "--arch", choices=tuple(ARCHITECTURES), default=argparse.SUPPRESS, help="mlp (default) or conv: images (N, H, W) or (N, C, H, W)"
    )
    fit.add_argument("--n-components", type=_positive_int, default=argparse.SUPPRESS, help="size of the code z (default 16)")
    fit.add_argument("--hidden", type=_sizes, default=argparse.SUPPRESS, help="mlp: hidden layer sizes, comma-separated (default 2048)")
    fit.add_argument("--activation", choices=tuple(ACTIVATIONS), default=argparse.SUPPRESS, help="mlp: default relu")
    fit.add_argument(
        "--distortion", choices=tuple(DISTORTIONS), default=argparse.SUPPRESS, help="bernoulli: data in [0, 1], such as pixels"
    )
    _options(fit)
    fit.add_argument("--log-every", type=_positive_int, default=argparse.SUPPRESS, help="steps per line of the log (default 100)")
    fit.add_argument(
        "--checkpoint-every", type=_positive_int, default=argparse.SUPPRESS, help="save the run so far to OUT.checkpoint every N steps"
    )
    fit.add_argument(
        "--monitor",
        type=Path,
        default=argparse.SUPPRESS,
        help="held-out samples (.npy, .npz or .csv) whose I(x; z) and distortion are logged every --monitor-every steps",
    )
    fit.add_argument("--monitor-key", default=argparse.SUPPRESS, help="the --monitor array's name in a .npz archive")
    _monitor_options(fit, argparse.SUPPRESS)
    fit.add_argument("--log", type=Path, help="also write the JSON-lines log here while training")
    fit.add_argument("--tensorboard", type=Path, help="a TensorBoard log directory (needs the tensorboard package)")
    _output(fit)
    for name, what in (("encode", "codes (the means; --sampled: z ~ N(mu, sigma^2))"), ("decode", "reconstructions of codes")):
        command = commands.add_parser(name, help=f"{what} of a trained model, as .npy")
        _model_and_data(command, "data" if name == "encode" else "codes")
        command.add_argument("--out", type=Path, required=True, help="the .npy file to write")
        command.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        if name == "encode":
            command.add_argument("--sampled", action="store_true", help="sample z ~ N(mu, sigma^2) instead of the mean")
            command.add_argument("--seed", type=int, default=0, help="noise seed for --sampled")
    plot = commands.add_parser("plot", help="draw runs: the information plane and the loss curves, from their training logs")
    plot.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="a run directory (ipae fit, ipae toy), a training log (.jsonl), or a sweep's cell directory (repeat-R.jsonl); "
        "the runs of one repeat of a rate-matched sweep (SWEEP/runs/*/repeat-R) are drawn one colour per model",
    )
    plot.add_argument("--out", type=Path, required=True, help="the .png file to write")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    info = commands.add_parser("info", help="bounds and a Monte Carlo estimate of I(x; z) for a trained model on data")
    _model_and_data(info, "data")
    info.add_argument("--samples", type=_positive_int, default=16, help="Monte Carlo draws per data point (default 16)")
    info.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")
    reproduce = commands.add_parser("reproduce", help="reproduce an experiment", epilog=THREADS_HELP)
    reproduce.add_argument("figure", choices=("figure1", "figure2", "rate-distortion", "conv-mnist", "rate-matched"))
    reproduce.add_argument("--steps", type=_positive_int, default=5000, help="training steps per run (paper: 5000)")
    reproduce.add_argument("--seed", type=int, default=0)
    reproduce.add_argument("--precision", choices=PRECISIONS, default="fp32")
    reproduce.add_argument("--compile", action="store_true", help="torch.compile the objective")
    reproduce.add_argument("--jobs", type=_positive_int, help="runs in parallel here, one thread each (default: one per core)")
    reproduce.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786) instead; this process writes the results "
        "(needs ipae[cluster]; docs/cluster.md)",
    )
    reproduce.add_argument(
        "--repeats",
        type=_positive_int,
        help="figure2: repeats per cell (default 10); conv-mnist: seeds (3); rate-matched: repeats (6, pilot 1)",
    )
    reproduce.add_argument("--data-dir", type=Path, help="figure2, conv-mnist, rate-matched: a directory with the four MNIST files")
    reproduce.add_argument("--resume", action="store_true", help="figure2, conv-mnist, rate-matched: continue the sweep in --out")
    _paper_exact(reproduce)
    reproduce.add_argument("--rates", type=_names, help="figure2: only the cells of these rates, comma-separated (vae, ip)")
    reproduce.add_argument("--cells", type=_names, help="figure2: only these cells, comma-separated (e.g. ip-n_partners8-beta1e-05)")
    reproduce.add_argument("--dataset", choices=("toy", "mnist134", "mnist10"), help="rate-matched: the data (required)")
    reproduce.add_argument("--pilot", action="store_true", help="rate-matched: the pilot's wide grids, one repeat")
    _output(reproduce)
    return parser


def _run(args):
    """The run of `toy` and `mnist`: the rate, its beta and the training config, from their options."""
    from ipae.experiments.runs import Run
    from ipae.fitting import from_options
    from ipae.rates import create

    names = (
        "rate",
        "beta",
        "n_partners",
        "mc_samples",
        "steps",
        "batch_size",
        "lr",
        "precision",
        "compile",
        "monitor_every",
        "monitor_samples",
    )
    spec, config = from_options({name: getattr(args, name) for name in names if getattr(args, name, None) not in (None, False)})
    rate = create(spec.rate, **spec.rate_options)
    training = TrainConfig(**{**config.to_dict(), "progress": False if args.quiet else None})
    return Run(rate, rate.default_beta if spec.beta is None else spec.beta, args.seed or 0, training, args.paper_exact)


def _toy(args) -> int:
    from ipae.experiments.toy import run_toy

    if not args.monitor and (args.monitor_every is not None or args.monitor_samples is not None):
        raise ValueError("--monitor-every and --monitor-samples apply with --monitor")
    run, device = _run(args), _training_device(args.device)
    if args.monitor:
        run.training.check_monitor()
    with _output_directory(args) as stage:
        metrics = run_toy(run, stage, device=device, progress=run.training.progress, monitor=args.monitor).metrics
    if metrics["status"] != "ok":
        raise _Failed(f"{metrics['error']}; recorded in {args.out / 'metrics.json'}")
    _report(
        f"E = {metrics['E']:.4f}  E_sampled = {metrics['E_sampled']:.4f}  E_identity = {metrics['E_identity']:.4f}  "
        f"train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0


def _mnist(args) -> int:
    from ipae.data.mnist import mnist_directory
    from ipae.distributed import world_size
    from ipae.experiments.mnist import run_mnist

    run, device = _run(args), _training_device(args.device)
    data_dir = mnist_directory(args.data_dir)  # found, checked or downloaded before anything is written
    with _output_directory(args) as stage:
        metrics = run_mnist(
            run,
            stage,
            repeats=args.repeats,
            data_dir=data_dir,
            jobs=args.jobs if world_size() == 1 else 1,
            device=str(device),
            progress=run.training.progress,
        )
    if metrics["svm_error"] is None:
        raise _Failed(f"all {args.repeats} repeats diverged; recorded in {args.out / 'metrics.json'}")
    _report(
        f"linear-SVM test error {metrics['svm_error']:.2f} +- {metrics['svm_error_std']:.2f} % over {len(metrics['svm_errors'])} "
        f"repeats ({metrics['failed_repeats']} failed), train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0


def _fit(args, given: dict) -> int:
    from ipae.checkpoint import has_state
    from ipae.data.arrays import load_array
    from ipae.distributed import world_size
    from ipae.fitting import fit, from_options, merged_options, save_fit
    from ipae.results import json_lines, remove_stale, tensorboard_writer

    if args.resume is not None and not args.resume.is_dir():
        raise FileNotFoundError(f"--resume {args.resume}: no such model directory")
    options = merged_options(given, resume=args.resume, config=args.config)
    spec, config = from_options(options)
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
    checkpoint = args.out.with_name(args.out.name + ".checkpoint")
    if has_state(checkpoint) and not (args.resume is not None and checkpoint.resolve() == args.resume.resolve()):
        raise FileExistsError(  # a new run would replace it, or remove it when it ends
            f"{checkpoint} holds a stopped run of this fit; continue it with `ipae fit --resume {checkpoint} --out {args.out}`, "
            f"or remove {checkpoint} to start again"
        )
    device = _training_device(args.device)
    x = load_array(options["data"], key=options.get("key"), max_ndim=4, mmap=True)
    monitor = None
    if "monitor" in options:
        monitor = torch.from_numpy(load_array(options["monitor"], key=options.get("monitor_key"), max_ndim=4))
        if monitor.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"--monitor {options['monitor']}: samples of shape {tuple(monitor.shape[1:])}, the data's are {tuple(x.shape[1:])}"
            )
        config.check_monitor()
    elif any(name in given for name in ("monitor_key", "monitor_every", "monitor_samples")):
        raise ValueError("--monitor-key, --monitor-every and --monitor-samples apply with --monitor")
    share, note = len(x) // world_size(), None  # the samples of each process
    if 1 <= share < config.batch_size:  # a step takes at most all of them: config.toml records the batch that runs
        what = f"the {share} samples" + (" of each process" if world_size() > 1 else "")
        note = f"ipae: note: --batch-size {config.batch_size} is more than {what}; trained on batches of {share}"
        options["batch_size"] = share
        config = replace(config, batch_size=share)
    config = TrainConfig(**{**config.to_dict(), "device": str(device), "progress": False if args.quiet else None})
    tensorboard = tensorboard_writer(args.tensorboard if is_main_process() else None)  # the last check: it creates its directory
    with _output_directory(args) as out, json_lines(out / "metrics.jsonl", args.log if is_main_process() else None) as log:

        def write_log(record: dict) -> None:
            log(record)
            if tensorboard is None:
                return
            for name in ("loss", "distortion", "rate"):
                tensorboard.add_scalar(f"train/{name}", record[name], record["step"])
            for name, tag in HELDOUT_SCALARS.items():
                if record.get(name) is not None:
                    tensorboard.add_scalar(f"heldout/{tag}", float(record[name]), record["step"])

        try:
            model, result = fit(
                x,
                spec,
                config,
                seed=config.seed,
                resume=args.resume,
                checkpoint_dir=checkpoint,
                metadata={"fit": options},
                on_log=write_log,
                monitor=monitor,
            )
        except TrainingDiverged as diverged:
            kept = f"; the run up to its last checkpoint is in {checkpoint}" if checkpoint.exists() else ""
            raise _Failed(f"{diverged}; try a larger --beta or a smaller --lr (no model was written{kept})") from None
        except KeyboardInterrupt:
            if checkpoint.exists():
                raise KeyboardInterrupt(
                    f"the run so far is in {checkpoint}; continue it with `ipae fit --resume {checkpoint} --out {args.out}`"
                ) from None
            raise
        save_fit(out, model, result, options)
        if is_main_process():
            from ipae.plotting import plot_runs

            plot_runs([out], out / "training.png", labels=[args.out.name])
    if tensorboard is not None:
        tensorboard.close()
    if is_main_process():
        shutil.rmtree(checkpoint, ignore_errors=True)
        remove_stale(checkpoint)  # the checkpoints that killed runs were staging
    if note is not None:  # after the run: bad input found later is still one line
        _report(note, file=sys.stderr)
    _report(
        f"{len(result.loss)} steps: loss {result.loss[-1]:.4g} (distortion {result.distortion[-1]:.4g}, rate {result.rate[-1]:.4g}), "
        f"{result.seconds:.1f} s -> {args.out}"
    )
    return 0


# The monitor's numbers that `ipae fit --tensorboard` shows, under heldout/<tag>
HELDOUT_SCALARS = {
    "I_mc": "I_mc",
    "I_loo": "I_loo",
    "I_lower": "I_lower",
    "I_upper": "I_upper",
    "I_log_n": "log_N",
    "I_saturated": "saturated",
    "heldout_distortion": "distortion",
}


def _plot(args) -> int:
    from ipae.experiments.rate_matched import trajectory_plot
    from ipae.plotting import plot_runs

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png, got {args.out}")
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    if args.out.is_dir():
        raise IsADirectoryError(f"{args.out} is a directory; name a .png file")
    study = trajectory_plot(args.runs)  # one repeat of a rate-matched sweep: drawn as its summary draws it
    plot_runs(**(study or {"paths": args.runs}), out=args.out)
    print(f"{len(args.runs)} run{'s' if len(args.runs) > 1 else ''} -> {args.out}")
    return 0


def _report(line: str, file=None) -> None:
    if is_main_process():  # once, under torchrun
        print(line, file=file)


class _Failed(Exception):
    """A run that failed for a reason other than bad input (exit code 1)."""


def _training_device(name: str | None) -> torch.device:
    """The device to train on; under torchrun, this process joins the others (on CUDA, its own GPU)."""
    return init_from_environment(resolve_device(name))


@contextmanager
def _output_directory(args) -> Iterator[Path]:
    """Where a command writes: a staged --out on the main process; a throwaway directory on the others."""
    from ipae.results import staged_directory

    if is_main_process():
        with staged_directory(args.out, overwrite=args.overwrite) as stage:
            yield stage
    else:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)


def _reproduce(args) -> int:
    from ipae.data.mnist import mnist_directory
    from ipae.experiments import conv_mnist, figure1, figure2, rate_distortion, rate_matched
    from ipae.experiments.parallel import on_cluster
    from ipae.experiments.runs import lock_sweep
    from ipae.results import markdown_table, remove_stale, staged_directory

    if launched():
        raise ValueError("ipae reproduce runs its grid in parallel itself (--jobs); start it without torchrun")
    sweep = args.figure in ("figure2", "conv-mnist", "rate-matched")  # these write into --out as they go, so that they can be resumed
    if not sweep and (args.repeats is not None or args.data_dir is not None or args.resume):
        raise ValueError("--repeats, --data-dir and --resume apply to figure2, conv-mnist and rate-matched only")
    if args.paper_exact and args.figure not in ("figure1", "figure2"):
        raise ValueError("--paper-exact applies to figure1 and figure2 only")
    if (args.rates is not None or args.cells is not None) and args.figure != "figure2":
        raise ValueError("--rates and --cells apply to figure2 only")
    if args.figure == "figure2":  # unknown rates or cells are refused before MNIST is looked for
        figure2.figure2_runs(TrainConfig(), rates=args.rates, cells=args.cells)
    if args.figure == "rate-matched" and args.dataset is None:
        raise ValueError("rate-matched needs --dataset: toy, mnist134 or mnist10")
    if args.figure != "rate-matched" and (args.dataset is not None or args.pilot):
        raise ValueError("--dataset and --pilot apply to rate-matched only")
    if args.resume and args.overwrite:
        raise ValueError("--resume keeps the finished runs in --out, --overwrite deletes them: choose one")
    if sweep and args.out.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{args.out} already exists; pass --resume to continue the sweep in it, or --overwrite to start again")
    if args.cluster is not None and args.jobs is not None:
        raise ValueError("--jobs sets the processes of this machine, --cluster runs on the cluster's workers: choose one")
    if args.cluster is not None and importlib.util.find_spec("distributed") is None:
        raise ValueError("--cluster needs dask.distributed: pip install 'ipae[cluster]'")
    common = {"jobs": args.jobs or os.cpu_count() or 1, "progress": False if args.quiet else None}
    training = TrainConfig(steps=args.steps, precision=args.precision, compile=args.compile, progress=False)
    device = resolve_device(args.device)
    experiments = {
        "figure1": (figure1, partial(figure1.reproduce_figure1, seed=args.seed, paper_exact=args.paper_exact, device=device)),
        "rate-distortion": (rate_distortion, partial(rate_distortion.reproduce_rate_distortion, seed=args.seed, device=device)),
        "figure2": (
            figure2,
            partial(
                figure2.reproduce_figure2,
                seed=args.seed,
                repeats=args.repeats or 10,
                paper_exact=args.paper_exact,
                rates=args.rates,
                cells=args.cells,
                device=device,
            ),
        ),
        "conv-mnist": (conv_mnist, partial(conv_mnist.reproduce_conv_mnist, seeds=args.repeats or 3)),
        "rate-matched": (
            rate_matched,
            partial(rate_matched.reproduce_rate_matched, dataset=args.dataset, pilot=args.pilot, repeats=args.repeats, seed=args.seed),
        ),
    }
    module, experiment = experiments[args.figure]

    def reproduce(directory: Path, *options, **keywords):
        """The experiment into `directory`; with --cluster, its runs on the cluster's workers, their files written here."""
        with nullcontext() if args.cluster is None else on_cluster(args.cluster, directory):
            return experiment(directory, *options, **keywords)

    if sweep:
        # MNIST is found, checked or downloaded before anything is written
        data_dir = None if args.dataset == "toy" else mnist_directory(args.data_dir)
        remove_stale(args.out)  # what killed --overwrite runs were staging
        if args.overwrite and args.out.exists():  # a new sweep beside the old one, which it replaces only when it is done
            if (args.out / "sweep.json").is_file():
                lock_sweep(args.out)  # not while another process resumes it
            with staged_directory(args.out, overwrite=True) as stage:
                try:
                    rows = reproduce(stage, training, data_dir=data_dir, **common)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(f"{args.out} was left as it was") from None
        else:
            try:
                rows = reproduce(args.out, training, data_dir=data_dir, **common)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(f"the finished runs are kept in {args.out}: add --resume to continue") from None
    else:
        with staged_directory(args.out, overwrite=args.overwrite) as stage:
            rows = reproduce(stage, training, **common)
    print(module.report(rows) if module is rate_matched else markdown_table(rows, module.COLUMNS) + module.summary(rows))
    print(f"-> {args.out}")
    return 0


def _load(args, name: str):
    """The model in model_dir (float64 for `info`) and the array `name` checked against what it takes."""
    from ipae.checkpoint import load_model
    from ipae.data.arrays import load_array

    if getattr(args, "out", None) is not None:
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
        if args.out.suffix != ".npy":
            raise ValueError(f"--out must end in .npy, got {args.out}")
    model = load_model(args.model_dir)
    array = load_array(getattr(args, name), key=args.key, max_ndim=4)
    if name == "codes" and array.shape[1:] != (model.architecture.n_latent,):
        raise ValueError(f"{args.codes}: expected codes of dimension {model.architecture.n_latent}, got shape {array.shape}")
    if name == "data":
        model.architecture.check_input(array.shape[1:])
    return model, torch.from_numpy(array)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with path.open("wb") as file:  # a file object: np.save would append ".npy" to a temporary name
        np.save(file, array, allow_pickle=False)


@torch.no_grad()
def _transform(args) -> int:
    """`encode` (the means, or sampled codes) and `decode` (the decoded means), into a .npy file."""
    from ipae.information import reparameterise
    from ipae.results import write_atomic

    model, array = _load(args, "data" if args.command == "encode" else "codes")
    if args.command == "decode":
        result, what = model.decode(array), "reconstructions"
    else:
        mu, logvar = model.encode(array)
        noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(args.seed))
        result, what = (reparameterise(mu, logvar, noise) if args.sampled else mu), "codes"
    write_atomic(args.out, partial(_save_npy, result.numpy()))
    print(f"{result.shape[0]} {what} of shape {tuple(result.shape[1:])} -> {args.out}")
    return 0


@torch.no_grad()
def _info(args) -> int:
    from ipae.diagnostics import SATURATION_GAP
    from ipae.mixture import DRAWING, REPORTED, estimates

    model, x = _load(args, "data")
    mu, logvar = model.double().encode(x.double())
    found = estimates(mu, logvar, generator=torch.Generator().manual_seed(args.seed), n_samples=args.samples)
    print(f"I(x; z) in nats of {args.model_dir} on {mu.shape[0]} points of {args.data} (codes of dimension {mu.shape[1]}):")
    for method, label in REPORTED.items():
        print(f"  {label + (f' ({args.samples} draws per point)' if method in DRAWING else ''):<64}{found[method]:.4f}")
    print(f"  log N, the most a mixture of N components can carry: {math.log(mu.shape[0]):.4f}")
    if found["loo"] - found["mc"] > SATURATION_GAP:
        print(
            f"  saturated: the two Monte Carlo estimates differ by more than {SATURATION_GAP} nats; I(x; z) is at least {found['mc']:.4f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command; the process is ours, so glibc keeps freed memory for speed (`ipae.train.keep_freed_memory`)."""
    try:
        args = _build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        keep_freed_memory()
        if getattr(args, "threads", None) is not None:
            torch.set_num_threads(args.threads)
        if args.command == "fit":
            given = {k: v for k, v in vars(args).items() if k in FIT_OPTIONS and v is not None}  # the options given
            return _fit(args, given)
        commands = {"toy": _toy, "mnist": _mnist, "reproduce": _reproduce, "info": _info, "plot": _plot}
        return {**commands, "encode": _transform, "decode": _transform}[args.command](args)
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
