"""The mixture estimators of I(x; z): known answers, then time and peak memory at scale.

    python benchmarks/mixture.py [--n 100000] [--dim 16] [--out docs/estimators_benchmark.md]

Known answers (float64): the Gaussian channel x ~ N(0, I_2), z = x + 0.5 noise, N = 2000
(I = log 5 = 1.609 nats), 50 components 1000 sigma apart (I = log 50 = 3.912), 50 identical ones (I = 0).
At scale (float32, N x D codes): each deterministic method runs in a fresh process; the table shows its
peak resident memory above the resident memory once the inputs were made (Linux: /proc/self/status,
with the peak reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ipae.mixture import mutual_information
from ipae.results import markdown_table, write_atomic

METHODS = ("jensen", "pairwise-kl", "bhattacharyya")
ALL_METHODS = ("bhattacharyya", "mc", "pairwise-kl", "jensen")


def known_answers() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    channel = torch.randn(2000, 2, generator=generator, dtype=torch.float64)
    cases = {
        "Gaussian channel, N = 2000, D = 2, sigma = 0.5": (channel, torch.full_like(channel, math.log(0.25)), math.log(5)),
        "50 components 1000 sigma apart, D = 3": (
            1000.0 * torch.arange(50.0, dtype=torch.float64)[:, None].repeat(1, 3),
            None,
            math.log(50),
        ),
        "50 identical components, D = 3": (torch.full((50, 3), 2.5, dtype=torch.float64), None, 0.0),
    }
    rows = []
    for case, (mu, logvar, truth) in cases.items():
        logvar = torch.zeros_like(mu) if logvar is None else logvar
        row = {"case": case, "truth": truth}
        for method in ALL_METHODS:
            row[method] = float(mutual_information(mu, logvar, method=method, generator=generator, n_samples=16))
        row["mc error %"] = 100 * abs(row["mc"] - truth) / truth if truth else None
        rows.append(row)
    return rows


def _memory_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now), VmHWM (the peak since the last reset)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def _measure(method: str, n: int, dim: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    mu = 3 * torch.randn(n, dim, generator=generator)
    logvar = 0.5 * torch.randn(n, dim, generator=generator)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident size to the current one
    baseline = _memory_kib("VmRSS")
    start = time.perf_counter()
    value = float(mutual_information(mu, logvar, method=method))
    seconds = time.perf_counter() - start
    peak = _memory_kib("VmHWM")
    return {
        "method": method,
        "N": n,
        "D": dim,
        "I (nats)": value,
        "seconds": seconds,
        "peak memory above baseline (MiB)": (peak - baseline) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args()
    answers = known_answers()
    print(markdown_table(answers, list(answers[0])), flush=True)
    rows = []
    for method in METHODS:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(_measure, method, args.n, args.dim).result())
        print(markdown_table(rows[-1:], list(rows[0])), end="", flush=True)
    command = f"python benchmarks/mixture.py --n {args.n} --dim {args.dim}"
    text = f"Command: `{command}`, torch {torch.__version__}, {torch.get_num_threads()} threads.\n\n"
    text += "## Known answers (nats; MC with 16 draws per component)\n\n" + markdown_table(answers, list(answers[0]))
    text += f"\n## At scale: N = {args.n}, D = {args.dim}, float32\n\n" + markdown_table(rows, list(rows[0]))
    print(text)
    if args.out:
        write_atomic(args.out, lambda tmp: tmp.write_text("# Estimators of I(x; z): known answers and scale\n\n" + text))
        print(f"-> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
