"""`ipae plot`: the information plane and the loss curves of runs, from their training logs, into a .png."""

from __future__ import annotations


def plot(args) -> int:
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
