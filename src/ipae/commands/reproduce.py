"""`ipae reproduce EXPERIMENT`: one of the paper's experiments (or a study of ours) end to end, its runs in
parallel. The sweeps (figure2, conv-mnist, rate-matched) write their runs into --out as they finish, so
that --resume continues them; the others are staged and appear whole."""

from __future__ import annotations

import importlib
import importlib.util
import os
from contextlib import nullcontext
from pathlib import Path

# The experiments, by subcommand: what each reproduces (`ipae reproduce --help`) and whether it is a sweep.
# Each is ipae.experiments.<name>.reproduce_<name>, with its own options (those `ipae.cli` gives it) as keywords.
EXPERIMENTS = {
    "figure1": ("the paper's Figure 1: E of the VAE and IPAE over beta on the 25-Gaussian toy task", False),
    "figure2": ("the paper's Figure 2: linear-SVM error of the MNIST codes (digits 1, 3, 4) over beta, repeated", True),
    "rate-distortion": ("rate against distortion on the toy task for every rate term, each over a beta grid", False),
    "conv-mnist": ("the conv preset (Burgess et al.) on all 10 MNIST digits, IPAE against the VAE, over seeds", True),
    "rate-matched": ("IPAE against the VAE at equal I(x; z), each over its own beta grid (docs/rate_matched.md)", True),
}
KEYWORDS = ("seed", "paper_exact", "rates", "cells", "repeats", "seeds", "dataset", "pilot")  # options the experiments take


def reproduce(args) -> int:
    from ipae._files import remove_stale, staged_directory
    from ipae.data.mnist import mnist_directory
    from ipae.distributed import launched
    from ipae.experiments import figure2
    from ipae.experiments.parallel import on_cluster
    from ipae.experiments.runs import lock_sweep
    from ipae.reporting import markdown_table
    from ipae.runtime import resolve_device
    from ipae.training import TrainConfig

    if launched():
        raise ValueError("ipae reproduce runs its grid in parallel itself (--jobs); start it without torchrun")
    sweep = EXPERIMENTS[args.experiment][1]
    if args.experiment == "figure2":  # unknown rates or cells are refused before MNIST is looked for
        figure2.figure2_runs(TrainConfig(), rates=args.rates, cells=args.cells)
    if sweep and args.resume and args.overwrite:
        raise ValueError("--resume keeps the finished runs in --out, --overwrite deletes them: choose one")
    if sweep and args.out.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{args.out} already exists; pass --resume to continue the sweep in it, or --overwrite to start again")
    if args.cluster is not None and args.jobs is not None:
        raise ValueError("--jobs sets the processes of this machine, --cluster runs on the cluster's workers: choose one")
    if args.cluster is not None and importlib.util.find_spec("distributed") is None:
        raise ValueError("--cluster needs dask.distributed: pip install 'ipae[cluster]'")
    name = args.experiment.replace("-", "_")
    module = importlib.import_module(f"ipae.experiments.{name}")
    keywords = {key: value for key, value in vars(args).items() if key in KEYWORDS}
    if "device" in args:
        keywords["device"] = resolve_device(args.device)
    keywords |= {"jobs": args.jobs or os.cpu_count() or 1, "progress": False if args.quiet else None}
    training = TrainConfig(steps=args.steps, precision=args.precision, compile=args.compile, progress=False)

    def run(directory: Path, **more):
        """The experiment into `directory`; with --cluster, its runs on the cluster's workers, their files written here."""
        with nullcontext() if args.cluster is None else on_cluster(args.cluster, directory):
            return getattr(module, f"reproduce_{name}")(directory, training, **keywords, **more)

    if sweep:
        # MNIST is found, checked or downloaded before anything is written
        data_dir = None if getattr(args, "dataset", None) == "toy" else mnist_directory(args.data_dir)
        remove_stale(args.out)  # what killed --overwrite runs were staging
        if args.overwrite and args.out.exists():  # a new sweep beside the old one, which it replaces only when it is done
            if (args.out / "sweep.json").is_file():
                lock_sweep(args.out)  # not while another process resumes it
            with staged_directory(args.out, overwrite=True) as stage:
                try:
                    rows = run(stage, data_dir=data_dir)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(f"{args.out} was left as it was") from None
        else:
            try:
                rows = run(args.out, data_dir=data_dir)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(f"the finished runs are kept in {args.out}: add --resume to continue") from None
    else:
        with staged_directory(args.out, overwrite=args.overwrite) as stage:
            rows = run(stage)
    print(module.report(rows) if hasattr(module, "report") else markdown_table(rows, module.COLUMNS) + module.summary(rows))
    print(f"-> {args.out}")
    return 0
