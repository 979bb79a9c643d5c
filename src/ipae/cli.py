"""The `ipae` command line: the parser of every command and option, and `main`, which runs the command
(`ipae.commands`). Bad input is one line on stderr and exit code 2, and nothing is written then; a run
that fails (a non-finite loss) exits with 1, an interrupted one with 130.

`main` changes nothing process-wide (--threads holds while the command runs); `run`, the console
script, owns its process and tunes the allocator first."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from ipae._version import __version__
from ipae.commands import Failed
from ipae.commands.experiment import mnist, toy
from ipae.commands.fit import fit
from ipae.commands.model import info, transform
from ipae.commands.plot import plot
from ipae.commands.reproduce import EXPERIMENTS, reproduce
from ipae.fitting import spec_options
from ipae.layers import ACTIVATIONS
from ipae.models import DISTORTIONS, ModelSpec
from ipae.networks import ARCHITECTURES
from ipae.rates import RATES, create
from ipae.runtime import PRECISIONS
from ipae.training import CompileFailed, TrainConfig

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
THREADS_HELP = (
    "Training uses torch's threads, one per core: with another job on the machine they wait for each other, "
    "and a step can take many times as long (up to 7x measured); pass --threads 1 (or set OMP_NUM_THREADS=1) then."
)
SPEC, TRAINING = spec_options(ModelSpec()), TrainConfig()  # the defaults that the help shows, from where they are set
# --beta's default, from the one place it is set: each rate's `default_beta` (ipae.rates)
BETA_DEFAULTS = ", ".join(f"{name} {cls.default_beta:g}" for name, cls in RATES.items())
ONE_PER_CORE = "(default: one per core)"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Ends each option's help with its default, unless the help says it (a default that depends on other things)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "(default" in action.help or action.required or any(action.default is value for value in (None, False, argparse.SUPPRESS)):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{"formatter_class": _Help, **kwargs})

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


def _options(parser, default, *, batches: bool = True) -> None:
    """The rate and training options of toy, mnist and fit; default None or SUPPRESS: the library's defaults apply."""
    add = partial(parser.add_argument, default=default)
    add("--rate", choices=tuple(RATES), help=f"the bound on I(x; z): ip (IPAE, eq. 10), vae (eq. 5), ... (default: {SPEC['rate']})")
    add("--beta", type=_beta, help=f"weight of the rate term (default: the rate's own, {BETA_DEFAULTS})")
    add("--n-partners", type=_partners, help=f"ip: partners per sample N_j, or 'all' (default: {create('ip').n_partners})")
    add("--mc-samples", type=_positive_int, help=f"mc: draws per sample (default: {create('mc').n_samples})")
    add("--steps", type=_positive_int, help=f"training steps (default: {TRAINING.steps}, the paper's)")
    if batches:
        add("--batch-size", type=_positive_int, help=f"samples per step, per process under torchrun (default: {TRAINING.batch_size})")
        add("--lr", type=_positive_float, help=f"Adam's learning rate (default: {TRAINING.lr:g})")
    add("--seed", type=int, help=f"seed of the data, weights, batches and noise (default: {TRAINING.seed})")
    _precision(parser, default)


def _precision(parser, default) -> None:
    help = "bf16: layers in bfloat16, faster only with native bf16 (AVX512-BF16, AMX, GPUs); auto picks"
    parser.add_argument("--precision", choices=PRECISIONS, default=default, help=f"{help} (default: {TRAINING.precision})")
    off = argparse.SUPPRESS if default is argparse.SUPPRESS else False
    parser.add_argument(
        "--compile", action="store_true", default=off, help="torch.compile the objective: seconds to compile, then faster steps"
    )


def _monitor_options(parser, default) -> None:
    add = partial(parser.add_argument, type=_positive_int, default=default)
    every, samples = TRAINING.monitor_every, TRAINING.monitor_samples
    add("--monitor-every", help=f"steps between measurements of the held-out points, a multiple of --log-every (default: {every})")
    add("--monitor-samples", help=f"Monte Carlo draws per held-out point in each measurement (default: {samples})")


def _output(parser, *, device: bool = True) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if device:
        parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument(
        "--threads", type=_positive_int, help="torch threads of this process; workers of --jobs use one (default: one per core)"
    )


def _paper_exact(parser) -> None:
    what = "the model as printed: no log-variance bound, the toy's mean squared error, eq. 11's weight 1/2 on IPAE's distortion"
    parser.add_argument("--paper-exact", action="store_true", help=what)


def _model_and_array(parser, name: str) -> None:
    parser.add_argument("model_dir", type=Path, help="a model directory (model.json and model.safetensors)")
    parser.add_argument(name, type=Path, help=f"{name} as .npy, .npz or .csv")
    parser.add_argument("--key", help="the array's name in a .npz archive (default: its only array)")


def _command(commands, name: str, what: str, handler, **kwargs) -> _Parser:
    parser = commands.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".", **kwargs)
    parser.set_defaults(handler=handler, parser=parser)
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ipae", description="Information Potential Auto-Encoders.", epilog=THREADS_HELP)
    parser.add_argument("--version", action="version", version=f"ipae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    command = partial(_command, commands)
    toy_parser = command("toy", "one model on the paper's 25-Gaussian toy task", toy, epilog=THREADS_HELP)
    _options(toy_parser, None)
    toy_parser.add_argument(
        "--monitor", action="store_true", help="log I(x; z) and the distortion of the 5000 held-out points as it trains"
    )
    _monitor_options(toy_parser, None)
    _paper_exact(toy_parser)
    _output(toy_parser)
    mnist_parser = command("mnist", "the paper's MNIST experiment for one configuration (digits 1, 3, 4)", mnist, epilog=THREADS_HELP)
    _options(mnist_parser, None, batches=False)
    _paper_exact(mnist_parser)
    mnist_parser.add_argument("--repeats", type=_positive_int, default=10, help="repeats, each with new weights and training subset")
    mnist_parser.add_argument("--data-dir", type=Path, help="a directory with the four MNIST files (default: the cache, downloading)")
    mnist_parser.add_argument("--jobs", type=_positive_int, help=f"repeats in parallel, one thread each {ONE_PER_CORE}")
    _output(mnist_parser)
    _fit_parser(command("fit", "train a model on your own data (.npy, .npz or .csv)", fit, epilog=THREADS_HELP))
    for name, what in (("encode", "codes (the means; --sampled: z ~ N(mu, sigma^2))"), ("decode", "reconstructions of codes")):
        transform_parser = command(name, f"{what} of a trained model, as .npy", transform)
        _model_and_array(transform_parser, "data" if name == "encode" else "codes")
        transform_parser.add_argument("--out", type=Path, required=True, help="the .npy file to write")
        transform_parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        if name == "encode":
            transform_parser.add_argument("--sampled", action="store_true", help="sample z ~ N(mu, sigma^2) instead of the mean")
            transform_parser.add_argument("--seed", type=int, default=0, help="noise seed for --sampled")
    plot_parser = command("plot", "draw runs: the information plane and the loss curves, from their training logs", plot)
    run_help = "a run directory (ipae fit, ipae toy), a training log (.jsonl), or a sweep's cell directory (repeat-R.jsonl); "
    run_help += "the runs of one repeat of a rate-matched sweep (SWEEP/runs/*/repeat-R) are drawn one colour per model"
    plot_parser.add_argument("runs", type=Path, nargs="+", metavar="RUN", help=run_help)
    plot_parser.add_argument("--out", type=Path, required=True, help="the .png file to write")
    plot_parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    info_parser = command("info", "bounds and a Monte Carlo estimate of I(x; z) for a trained model on data", info)
    _model_and_array(info_parser, "data")
    info_parser.add_argument("--samples", type=_positive_int, default=16, help="Monte Carlo draws per data point")
    info_parser.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")
    experiments = command("reproduce", "reproduce an experiment of the paper, or a study of ours", None).add_subparsers(
        dest="experiment", required=True, parser_class=_Parser, metavar="EXPERIMENT"
    )
    for name, (what, sweep) in EXPERIMENTS.items():
        _reproduce_parser(_command(experiments, name, what, reproduce, epilog=THREADS_HELP), name, sweep)
    return parser


def _fit_parser(fit_parser) -> None:
    """`ipae fit`'s options: absent unless given (SUPPRESS), since --config and --resume give the others."""
    add = partial(fit_parser.add_argument, default=argparse.SUPPRESS)
    fit_parser.add_argument("data", type=Path, nargs="?", help="samples x ...; or `data` in --config")
    config = "a TOML file of these options (names with - or _), such as a run's config.toml; the command line wins (default: none)"
    fit_parser.add_argument("--config", type=Path, help=config)
    resume = "continue the run in this model directory (a fit, or OUT.checkpoint), with its options (default: a new run)"
    fit_parser.add_argument("--resume", type=Path, help=resume)
    add("--key", help="the array's name in a .npz archive (default: its only array)")
    add("--arch", choices=tuple(ARCHITECTURES), help=f"mlp, or conv for images (N, H, W) or (N, C, H, W) (default: {SPEC['arch']})")
    add("--n-components", type=_positive_int, help=f"size of the code z (default: {SPEC['n_components']})")
    add("--hidden", type=_sizes, help=f"mlp: hidden layer sizes, comma-separated (default: {','.join(map(str, SPEC['hidden']))})")
    add("--activation", choices=tuple(ACTIVATIONS), help=f"mlp: the hidden layers' activation (default: {SPEC['activation']})")
    add("--distortion", choices=tuple(DISTORTIONS), help=f"bernoulli: data in [0, 1], such as pixels (default: {SPEC['distortion']})")
    _options(fit_parser, argparse.SUPPRESS)
    add("--log-every", type=_positive_int, help=f"steps per line of the log (default: {TRAINING.log_every})")
    add("--checkpoint-every", type=_positive_int, help="save the run so far into OUT.checkpoint every N steps (default: none)")
    add("--monitor", type=Path, help="held-out samples (.npy, .npz, .csv) whose I(x; z) and distortion are logged (default: none)")
    add("--monitor-key", help="the --monitor array's name in a .npz archive (default: its only array)")
    _monitor_options(fit_parser, argparse.SUPPRESS)
    fit_parser.add_argument("--log", type=Path, help="also write the JSON-lines log here as it trains (default: only OUT/metrics.jsonl)")
    fit_parser.add_argument("--tensorboard", type=Path, help="a TensorBoard log directory; needs tensorboard (default: none)")
    _output(fit_parser)


def _reproduce_parser(parser, name: str, sweep: bool) -> None:
    """The options of `ipae reproduce NAME`; those that only some experiments take are named as their keywords."""
    parser.add_argument("--steps", type=_positive_int, default=TRAINING.steps, help="training steps per run; the default is the paper's")
    if name != "conv-mnist":  # its seeds are its repeats
        parser.add_argument("--seed", type=int, default=TRAINING.seed, help="seed of the runs; a sweep's repeats derive theirs from it")
    _precision(parser, TRAINING.precision)
    parser.add_argument("--jobs", type=_positive_int, help=f"runs in parallel here, one thread each {ONE_PER_CORE}")
    cluster = "run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); needs ipae[cluster], see docs/cluster.md"
    parser.add_argument("--cluster", metavar="ADDRESS", help=f"{cluster} (default: none, run here)")
    if sweep:
        repeats = {"figure2": ("repeats", 10, "repeats per cell"), "conv-mnist": ("seeds", 3, "seeds per model")}
        dest, default, what = repeats.get(name, ("repeats", None, "paired repeats (default: 6, the pilot's 1)"))
        parser.add_argument("--repeats", dest=dest, metavar="N", type=_positive_int, default=default, help=what)
        parser.add_argument("--data-dir", type=Path, help="a directory with the four MNIST files (default: the cache, downloading)")
        parser.add_argument("--resume", action="store_true", help="continue the sweep in --out, keeping its finished runs")
    if name in ("figure1", "figure2"):
        _paper_exact(parser)
    if name == "figure2":
        parser.add_argument("--rates", type=_names, help="only the cells of these rates, comma-separated: vae, ip (default: all)")
        parser.add_argument("--cells", type=_names, help="only these cells, comma-separated, e.g. ip-n_partners8-beta1e-05 (default: all)")
    if name == "rate-matched":
        parser.add_argument("--dataset", choices=("toy", "mnist134", "mnist10"), required=True, help="the data")
        parser.add_argument("--pilot", action="store_true", help="the pilot: wide beta grids, one repeat")
    _output(parser, device=name in ("figure1", "figure2", "rate-distortion"))


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """The options of the command line `argv`; bad ones exit with code 2 and one line."""
    parser, argv = _build_parser(), list(argv)
    if argv[:1] == ["reproduce"] and argv[1:2] and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        parser.error(f"name the experiment before its options: `ipae reproduce EXPERIMENT [options]`, one of {', '.join(EXPERIMENTS)}")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's own parser: `ipae reproduce figure1 --help` lists what figure1 takes
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The `ipae` command with arguments `argv` (default: sys.argv[1:]); returns its exit code."""
    threads = torch.get_num_threads()  # --threads holds while the command runs
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
        if getattr(args, "threads", None) is not None:
            torch.set_num_threads(args.threads)
        return args.handler(args)
    except (ValueError, OSError) as error:  # bad input, missing or damaged files, failed downloads
        print(f"ipae: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Failed, CompileFailed) as failure:
        print(f"ipae: {failure}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as interrupt:
        print(f"ipae: interrupted; {interrupt or 'nothing was written'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)


def run() -> None:
    """The console script `ipae`: the process is the command's, so glibc keeps freed memory for speed
    (`ipae.runtime.keep_freed_memory`, process-wide), then `main`."""
    from ipae.runtime import keep_freed_memory

    keep_freed_memory()
    sys.exit(main())


if __name__ == "__main__":
    run()
