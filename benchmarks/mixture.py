"""The mixture estimators of I(x; z): known answers, then time and peak memory at scale, or against an older revision.

    python benchmarks/mixture.py [--n 100000] [--dim 16] [--out FILE]
    python benchmarks/mixture.py --baseline REV [--n 20000] [--dim 16] [--repeats 3] [--write]

Known answers (float64): the Gaussian channel x ~ N(0, I_2), z = x + 0.5 noise, N = 2000
(I = log 5 = 1.609 nats), 50 components 1000 sigma apart (I = log 50 = 3.912), 50 identical ones (I = 0).
At scale (float32, N x D codes): each deterministic method runs in a fresh process; the table shows its
peak resident memory above the resident memory once the inputs were made (Linux: /proc/self/status,
with the peak reset through /proc/self/clear_refs).

Against a baseline (--baseline REV): src/ipae/mixture.py of git revision REV is imported beside the
checked-out one, and each round times, in this order, every method by the old code, by the new code, and
the floor of its elementwise work alone: the exps of its pairs (S N^2 for Monte Carlo with S draws), or
for Bhattacharyya one log per pair and dimension, each computed out of place between two tiles of the size
the new code uses, so that the floor pays no memory traffic (and, where N x N fits in --floor-memory, the
N^2 exps in place on the whole matrix, as a second, memory-bound floor). The table shows each one's
fastest round, the ratios, and the relative difference between the two codes' values. Then `estimates`,
the per-run diagnostic (N = 5000, 16 draws, float64), old and new. --write puts the known answers and
this table in docs/estimators_benchmark.md (or in the FILE it names), the CPU and its capability named.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import ipae.mixture
from ipae._files import write_atomic
from ipae.mixture import _tile_rows, mutual_information
from ipae.reporting import cpu_name, markdown_table, provenance

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "estimators_benchmark.md"
COMPARED = ("pairwise-kl", "bhattacharyya", "mc", "loo")

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


def load_revision(revision: str):
    """src/ipae/mixture.py as it was at git `revision`, imported as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:src/ipae/mixture.py"], capture_output=True, text=True, check=True
    ).stdout
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", revision], capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mixture_baseline.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("mixture_baseline", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module, commit.strip()


def _seconds(run) -> tuple[float, object]:
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def _floor(operation: str, count: int, dtype: torch.dtype, chunk_size: int) -> float:
    """Seconds for `count` exps (or logs) alone, out of place between two tiles of the new code's size."""
    generator = torch.Generator().manual_seed(0)
    source = -20 * torch.rand(_tile_rows(chunk_size, dtype), chunk_size, generator=generator, dtype=dtype)
    if operation == "log":
        source = source.neg_().add_(0.5)
    target, function = torch.empty_like(source), getattr(torch, operation)
    full, rest = divmod(count, source.numel())
    start = time.perf_counter()
    for _ in range(full):
        function(source, out=target)
    function(source.view(-1)[:rest], out=target.view(-1)[:rest])
    return time.perf_counter() - start


def _floor_in_memory(n: int, dtype: torch.dtype) -> float:
    """Seconds for the N^2 exps in place on a whole N x N matrix (made beforehand, not timed)."""
    matrix = torch.full((n, n), -1.0, dtype=dtype)
    start = time.perf_counter()
    matrix.exp_()
    return time.perf_counter() - start


def compare(baseline, n: int, dim: int, dtype: torch.dtype, n_samples: int, repeats: int, floor_memory: float) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    mu = 3 * torch.randn(n, dim, generator=generator, dtype=dtype)
    logvar = 0.5 * torch.randn(n, dim, generator=generator, dtype=dtype)
    eps = ipae.mixture.draw_mc_noise(mu, n_samples, generator)
    chunk_size = ipae.mixture.CHUNK_SIZE
    in_memory = n * n * torch.finfo(dtype).bits / 8 <= floor_memory * 2**30
    best: dict[tuple[str, str], float] = {}
    values: dict[tuple[str, str], float] = {}
    for round_ in range(repeats):
        for method in COMPARED:
            draws = eps if method in ipae.mixture.DRAWING else None
            for code, module in (("old", baseline), ("new", ipae.mixture)):
                seconds, value = _seconds(
                    lambda module=module, method=method, draws=draws: module.METHODS[method](mu, logvar, draws, chunk_size)
                )
                best[method, code] = min(seconds, best.get((method, code), math.inf))
                values[method, code] = float(value)
            pairs = n * n * (n_samples if draws is not None else 1)
            floor = _floor("log", pairs * dim, dtype, chunk_size) if method == "bhattacharyya" else _floor("exp", pairs, dtype, chunk_size)
            best[method, "floor"] = min(floor, best.get((method, "floor"), math.inf))
        if in_memory:
            best["exp", "memory"] = min(_floor_in_memory(n, dtype), best.get(("exp", "memory"), math.inf))
        print(f"round {round_ + 1} of {repeats} done", file=sys.stderr, flush=True)
    rows = []
    for method in COMPARED:
        draws = n_samples if method in ipae.mixture.DRAWING else None
        old, new, floor = best[method, "old"], best[method, "new"], best[method, "floor"]
        row = {
            "method": method,
            "N": n,
            "D": dim,
            "draws": draws,
            "precision": str(dtype).removeprefix("torch."),
            "old (s)": old,
            "new (s)": new,
            "floor (s)": floor,
            "floor": f"{'N^2 D logs' if method == 'bhattacharyya' else ('S N^2' if draws else 'N^2') + ' exps'}, in cache",
            "old / new": old / new,
            "new / floor": new / floor,
            "new / N x N exps in memory": None,
            "relative difference": abs(values[method, "new"] - values[method, "old"]) / max(abs(values[method, "old"]), 1e-300),
        }
        if in_memory and method != "bhattacharyya":
            row["new / N x N exps in memory"] = new / (best["exp", "memory"] * (draws or 1))
        rows.append(row)
    return rows


def compare_diagnostic(baseline, repeats: int, n: int = 5000, dim: int = 16, n_samples: int = 16) -> dict:
    """`estimates` as the per-run diagnostic calls it: N codes, 16 draws, float64."""
    generator = torch.Generator().manual_seed(1)
    mu = 3 * torch.randn(n, dim, generator=generator, dtype=torch.float64)
    logvar = 0.5 * torch.randn(n, dim, generator=generator, dtype=torch.float64)
    best, found = {}, {}
    for _ in range(repeats):
        for code, module in (("old", baseline), ("new", ipae.mixture)):
            seconds, found[code] = _seconds(
                lambda module=module: module.estimates(mu, logvar, generator=torch.Generator().manual_seed(2), n_samples=n_samples)
            )
            best[code] = min(seconds, best.get(code, math.inf))
    difference = max(abs(found["new"][key] - found["old"][key]) / max(abs(found["old"][key]), 1e-300) for key in found["old"])
    return {
        "method": "estimates (all five)",
        "N": n,
        "D": dim,
        "draws": n_samples,
        "precision": "float64",
        "old (s)": best["old"],
        "new (s)": best["new"],
        "old / new": best["old"] / best["new"],
        "relative difference": difference,
    }


COLUMNS = ["method", "N", "D", "draws", "precision", "old (s)", "new (s)", "floor (s)", "floor", "old / new", "new / floor"]
COLUMNS += ["new / N x N exps in memory", "relative difference"]


def run_comparison(args: argparse.Namespace) -> None:
    baseline, commit = load_revision(args.baseline)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows = []
    for name in args.dtypes.split(","):
        rows += compare(baseline, args.n, args.dim, getattr(torch, name), args.draws, args.repeats, args.floor_memory)
    rows.append(compare_diagnostic(baseline, args.repeats))
    table = markdown_table(rows, COLUMNS)
    text = (
        f"Old: `src/ipae/mixture.py` at {commit} (`--baseline {args.baseline}`); new: the checked-out code. "
        f"CPU: {cpu_name()}, torch capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}. Each time is the fastest of {args.repeats} interleaved rounds; the relative difference is "
        "between the old and the new code's values.\n\n" + table
    )
    print(text)
    if args.write:
        answers = known_answers()
        document = "# Estimators of I(x; z): known answers, and the new code against the old\n\n"
        document += "## Known answers (nats; MC with 16 draws per component)\n\n" + markdown_table(answers, list(answers[0]))
        document += f"\n## Speed: N = {args.n}, D = {args.dim}\n\n" + text + f"\n{provenance(rows)}\n"
        write_atomic(args.write, lambda tmp: tmp.write_text(document))
        print(f"-> {args.write}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, help="codes (default 100000, or 20000 against a baseline)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    parser.add_argument("--baseline", metavar="REV", help="time this git revision's src/ipae/mixture.py against the checked-out one")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds against the baseline; the fastest counts")
    parser.add_argument("--draws", type=int, default=1, help="Monte Carlo draws per code against the baseline")
    parser.add_argument("--dtypes", default="float32,float64", help="precisions against the baseline, comma-separated")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--floor-memory", type=float, default=2.0, help="GiB up to which the N x N in-memory exp floor runs")
    parser.add_argument(
        "--write", nargs="?", type=Path, const=DOC, metavar="FILE", help=f"write the comparison there (default {DOC.relative_to(ROOT)})"
    )
    args = parser.parse_args()
    if args.baseline:
        args.n = args.n or 20_000
        run_comparison(args)
        return
    args.n = args.n or 100_000
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
