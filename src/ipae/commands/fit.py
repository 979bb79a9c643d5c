"""`ipae fit`: a model trained on the user's own data, into a model directory; continued with --resume."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace

import torch

from ipae.commands import Failed, output_directory, report, training_device
from ipae.distributed import is_main_process

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


def fit(args) -> int:
    """The run that the command line, --config and --resume name (in this order of precedence), into --out."""
    from ipae import fitting
    from ipae._files import json_lines, remove_stale
    from ipae.checkpoint import has_state
    from ipae.data.arrays import load_array
    from ipae.distributed import world_size
    from ipae.reporting import tensorboard_writer
    from ipae.training import TrainConfig, TrainingDiverged

    given = {name: value for name, value in vars(args).items() if name in fitting.OPTIONS and value is not None}  # the options given
    if args.resume is not None and not args.resume.is_dir():
        raise FileNotFoundError(f"--resume {args.resume}: no such model directory")
    options = fitting.completed_options(fitting.merged_options(given, resume=args.resume, config=args.config))
    spec, config = fitting.from_options(options)
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
    checkpoint = args.out.with_name(args.out.name + ".checkpoint")
    resume_command = f"ipae fit --resume {checkpoint} --out {args.out}"
    if has_state(checkpoint) and not (args.resume is not None and checkpoint.resolve() == args.resume.resolve()):
        raise FileExistsError(  # a new run would replace it, or remove it when it ends
            f"{checkpoint} holds a stopped run of this fit; continue it with `{resume_command}`, or remove {checkpoint} to start again"
        )
    device = training_device(args.device)
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
    try:
        with output_directory(args) as out, json_lines(out / "metrics.jsonl", args.log if is_main_process() else None) as log:

            def write_log(record: dict) -> None:
                log(record)
                if tensorboard is None:
                    return
                for name in ("loss", "distortion", "rate"):
                    tensorboard.add_scalar(f"train/{name}", record[name], record["step"])
                for name, tag in HELDOUT_SCALARS.items():
                    if record.get(name) is not None:
                        tensorboard.add_scalar(f"heldout/{tag}", float(record[name]), record["step"])

            model, result = fitting.fit(
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
            fitting.save_fit(out, model, result, options)
            if is_main_process():
                from ipae.plotting import plot_runs

                plot_runs([out], out / "training.png", labels=[args.out.name])
    except TrainingDiverged as diverged:
        kept = f"; the run up to its last checkpoint is in {checkpoint}" if checkpoint.exists() else ""
        raise Failed(f"{diverged}; try a larger --beta or a smaller --lr (no model was written{kept})") from None
    except KeyboardInterrupt:
        if has_state(checkpoint):
            raise KeyboardInterrupt(f"the run so far is in {checkpoint}; continue it with `{resume_command}`") from None
        when = "--checkpoint-every N saves one" if config.checkpoint_every is None else f"the first is at step {config.checkpoint_every}"
        raise KeyboardInterrupt(f"no checkpoint of this run exists yet ({when}), so nothing was kept") from None
    if tensorboard is not None:
        tensorboard.close()
    if is_main_process():
        shutil.rmtree(checkpoint, ignore_errors=True)
        remove_stale(checkpoint)  # the checkpoints that killed runs were staging
    if note is not None:  # after the run: bad input found later is still one line
        report(note, file=sys.stderr)
    report(
        f"{len(result.loss)} steps: loss {result.loss[-1]:.4g} (distortion {result.distortion[-1]:.4g}, rate {result.rate[-1]:.4g}), "
        f"{result.seconds:.1f} s -> {args.out}"
    )
    return 0
