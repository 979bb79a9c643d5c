"""What monitoring I(x; z) while training costs: the MNIST preset trained with and without `train(monitor=...)`.

    python benchmarks/monitor.py                       # 1000 steps, 5000 held-out points every 500 steps
    python benchmarks/monitor.py --preset toy --points 2500   # the toy preset, as the rate-matched study monitors it
    python benchmarks/monitor.py --steps 5000          # the whole preset run, measured end to end
    python benchmarks/monitor.py --steps 40 --every 20 --points 500 --repeats 1   # a quick check that it runs

The MNIST preset (784-1024-8, Bernoulli distortion, IPAE with N_j = 1, batch 512) trains on the paper's
digits 1, 3, 4 (PAPER_N_TRAIN images drawn from the training split); the monitor measures the first
`--points` test images of all ten digits (digits 1, 3, 4 have 3127; a measurement's cost depends on the
number of points and the code's size only) every `--every` steps and at the end, with `--samples` Monte
Carlo draws per point. `--repeats` pairs of runs follow one warm-up run of each, in this process, in the
order plain, monitored, monitored, plain, plain, ... (a pair's first run alternates, so that a drift over the
session, or whatever a run leaves to the next, falls on both sides alike). Printed: the training seconds of
each run, the seconds the measurements took (`monitor_seconds` of the records), the measured overhead
(all monitored seconds / all plain seconds - 1, with the spread of the per-pair ratios), and the overhead the
paper's 5000-step run would have at `--every`: its number of measurements times the median measurement
over 5000 plain steps. The weights of the paired runs are checked to be equal bit for bit.
`--preset toy`: the toy preset (2-2048-16, squared error) on the paper's 25-Gaussian mixture (seed 0),
monitoring `--points` of a second draw of 5000 (seed 1), evenly spaced over its components, as
`ipae.experiments.toy.run_toy(monitor_points=...)` picks them.

On a machine where other jobs share the cores the times vary from run to run: read the spread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from ipae.data.mnist import PAPER_DIGITS, PAPER_N_TRAIN, load_mnist
from ipae.data.toy import gaussian_grid
from ipae.models import AutoEncoder
from ipae.reporting import cpu_name
from ipae.runtime import keep_freed_memory
from ipae.training import TrainConfig, train

BUDGET = 0.05  # the monitor may add at most 5 % to the MNIST preset's training time at the defaults
PAPER_STEPS = 5000


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("mnist", "toy"), default="mnist", help="the model and its data (default mnist)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (default 1000)")
    parser.add_argument("--every", type=int, default=TrainConfig.monitor_every, help="steps between measurements (default 500)")
    parser.add_argument("--points", type=int, default=5000, help="held-out points measured (default 5000)")
    parser.add_argument("--samples", type=int, default=TrainConfig.monitor_samples, help="Monte Carlo draws per point (default 1)")
    parser.add_argument("--repeats", type=int, default=4, help="pairs of runs (default 4)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    parser.add_argument("--data-dir", type=Path, help="the four MNIST files (default: ipae's cache, downloading)")
    args = parser.parse_args(argv)
    if min(args.steps, args.every, args.points, args.samples, args.repeats, args.threads) < 1 or args.points < 2:
        parser.error("--steps, --every, --samples, --repeats and --threads must be >= 1, --points >= 2")
    return args


def _run(preset: str, x: torch.Tensor, held_out: torch.Tensor | None, config: TrainConfig) -> tuple[float, list[dict], dict]:
    model = AutoEncoder.from_preset(preset, seed=0)
    result = train(model, x, config, monitor=held_out)
    return result.seconds, result.monitor, {name: tensor.clone() for name, tensor in model.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    keep_freed_memory()  # as the `ipae` command does
    torch.set_num_threads(args.threads)
    if args.preset == "toy":
        x, pool = gaussian_grid(seed=0).x, gaussian_grid(seed=1).x
        held_out = pool[np.linspace(0, len(pool) - 1, min(args.points, len(pool))).round().astype(np.int64)]
        what = f"toy preset on {len(x)} points"
    else:
        splits = load_mnist(args.data_dir, digits=PAPER_DIGITS, n_train=PAPER_N_TRAIN, seed=0)
        x = torch.from_numpy(splits.x_train)
        held_out = torch.from_numpy(load_mnist(args.data_dir).x_test[: args.points])
        what = f"MNIST preset on {len(x)} images"
    config = TrainConfig(
        steps=args.steps, log_every=math.gcd(TrainConfig.log_every, args.every), monitor_every=args.every, monitor_samples=args.samples
    )
    print(f"CPU: {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), {args.threads} torch threads; torch {torch.__version__}")
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"{what}, {args.steps} steps; monitor: {len(held_out)} held-out points every {args.every} steps")
    warm = TrainConfig(steps=min(args.steps, 20), log_every=min(args.steps, 20), monitor_every=min(args.steps, 20))
    _run(args.preset, x, None, warm)
    _run(args.preset, x, held_out[:100], warm)
    plain_seconds, monitored_seconds, measurement_seconds = [], [], []
    for repeat in range(args.repeats):
        if repeat % 2 == 0:
            plain, _, plain_weights = _run(args.preset, x, None, config)
            monitored, records, monitored_weights = _run(args.preset, x, held_out, config)
        else:
            monitored, records, monitored_weights = _run(args.preset, x, held_out, config)
            plain, _, plain_weights = _run(args.preset, x, None, config)
        if any(not torch.equal(plain_weights[name], monitored_weights[name]) for name in plain_weights):
            print("FAIL: the monitored run's weights differ from the plain run's")
            return 1
        measurements = [record["monitor_seconds"] for record in records]
        plain_seconds.append(plain)
        monitored_seconds.append(monitored)
        measurement_seconds += measurements
        print(
            f"repeat {repeat}: plain {plain:.2f} s, monitored {monitored:.2f} s ({len(measurements)} measurements: "
            f"{', '.join(f'{m:.2f}' for m in measurements)} s); overhead {monitored / plain - 1:+.1%}"
        )
    ratios = [monitored / plain - 1 for plain, monitored in zip(plain_seconds, monitored_seconds, strict=True)]
    step = statistics.median(plain_seconds) / args.steps
    measurement = statistics.median(measurement_seconds)
    count = len(range(args.every, PAPER_STEPS + 1, args.every)) + (PAPER_STEPS % args.every != 0)
    projected = count * measurement / (PAPER_STEPS * step)
    print(f"plain training: {1e3 * step:.2f} ms/step (median); one measurement: {measurement:.2f} s (median)")
    spread = f"per pair: median {statistics.median(ratios):+.1%}, min {min(ratios):+.1%}, max {max(ratios):+.1%}"
    total = sum(monitored_seconds) / sum(plain_seconds) - 1
    print(f"measured overhead over {args.repeats} x {args.steps} steps: {total:+.1%} ({spread})")
    print(f"of which the measurements: {sum(measurement_seconds) / sum(plain_seconds):+.1%} of the plain runs' time")
    verdict = "PASS" if projected <= BUDGET else "FAIL"
    run = f"the {PAPER_STEPS}-step preset run"
    print(f"projected for {run}: {count} measurements, {projected:.1%} of training (budget {BUDGET:.0%}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
