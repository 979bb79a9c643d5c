"""`ipae toy` and `ipae mnist`: one configuration of the paper's experiments."""

from __future__ import annotations

import os

from ipae.commands import Failed, output_directory, report, training_device


def run_of(args):
    """The run of `toy` and `mnist`: the rate, its beta and the training config, from their options."""
    from ipae.experiments.runs import Run
    from ipae.fitting import from_options
    from ipae.rates import create
    from ipae.training import TrainConfig

    names = ("rate", "beta", "n_partners", "mc_samples", "steps", "batch_size", "lr", "precision", "compile")
    names += ("monitor_every", "monitor_samples")  # toy only
    spec, config = from_options({name: getattr(args, name) for name in names if getattr(args, name, None) not in (None, False)})
    rate = create(spec.rate, **spec.rate_options)
    training = TrainConfig(**{**config.to_dict(), "progress": False if args.quiet else None})
    seed = 0 if args.seed is None else args.seed
    return Run(rate, rate.default_beta if spec.beta is None else spec.beta, seed, training, args.paper_exact)


def toy(args) -> int:
    from ipae.experiments.toy import run_toy

    if not args.monitor and (args.monitor_every is not None or args.monitor_samples is not None):
        raise ValueError("--monitor-every and --monitor-samples apply with --monitor")
    run, device = run_of(args), training_device(args.device)
    if args.monitor:
        run.training.check_monitor()
    with output_directory(args) as stage:
        metrics = run_toy(run, stage, device=device, progress=run.training.progress, monitor=args.monitor).metrics
    if metrics["status"] != "ok":
        raise Failed(f"{metrics['error']}; recorded in {args.out / 'metrics.json'}")
    report(
        f"E = {metrics['E']:.4f}  E_sampled = {metrics['E_sampled']:.4f}  E_identity = {metrics['E_identity']:.4f}  "
        f"train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0


def mnist(args) -> int:
    from ipae.data.mnist import mnist_directory
    from ipae.distributed import world_size
    from ipae.experiments.mnist import run_mnist

    run, device = run_of(args), training_device(args.device)
    data_dir = mnist_directory(args.data_dir)  # found, checked or downloaded before anything is written
    with output_directory(args) as stage:
        metrics = run_mnist(
            run,
            stage,
            repeats=args.repeats,
            data_dir=data_dir,
            jobs=(args.jobs or os.cpu_count() or 1) if world_size() == 1 else 1,
            device=str(device),
            progress=run.training.progress,
        )
    if metrics["svm_error"] is None:
        raise Failed(f"all {args.repeats} repeats diverged; recorded in {args.out / 'metrics.json'}")
    report(
        f"linear-SVM test error {metrics['svm_error']:.2f} +- {metrics['svm_error_std']:.2f} % over {len(metrics['svm_errors'])} "
        f"repeats ({metrics['failed_repeats']} failed), train_seconds = {metrics['train_seconds']:.1f}  -> {args.out}"
    )
    return 0
