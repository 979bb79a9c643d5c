"""Training speed of ipae against a plain eager PyTorch loop of the same model, in one process.

    python benchmarks/training.py                      # prints the tables
    python benchmarks/training.py --out docs/performance.md

For the paper's toy and MNIST models it measures ms per training step of
- a plain eager loop written here (nn.Linear, default Adam, fp32; for MNIST also with bf16 autocast),
- `ipae.train` at precision fp32 and bf16, eager and with `compile=True`,
interleaved, `--repeats` times, and reports the median, the spread (min..max) and the median of the
per-repeat ratios plain / ipae (interleaving keeps a drifting machine from favouring either side).
It also times compiling (with inductor's on-disk cache empty and full), the rate terms alone (as a
fraction of an MNIST step), the all-pairs rate at a batch size whose (B, B, D) tensor could not
exist, encoding throughput, and independent runs side by side as a sweep runs them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ipae import AutoEncoder, draw_partners, gaussian_kl, information_potential, train
from ipae.data import gaussian_grid
from ipae.experiments.parallel import map_runs
from ipae.results import markdown_table, write_atomic

ACTIVATION = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def plain_eager_loop(preset: str, data: torch.Tensor, *, steps: int, bf16: bool = False, seed: int = 0) -> float:
    """ms per step of the model written the usual way: nn.Sequential, torch.optim.Adam, eq. 10 with N_j = 1."""
    config = AutoEncoder.from_preset(preset).config
    torch.manual_seed(seed)
    width, latent, act = config.hidden[0], config.n_latent, ACTIVATION[config.activation]
    encoder = nn.Sequential(nn.Linear(config.n_inputs, width), act(), nn.Linear(width, 2 * latent))
    decoder = nn.Sequential(nn.Linear(latent, width), act(), nn.Linear(width, config.n_inputs))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    batches = torch.randint(len(data), (steps + 5, 512))

    def step(x: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mu, logvar = encoder(x).float().chunk(2, dim=1)
            eps = torch.randn_like(mu)
            z = mu + (0.5 * logvar).exp() * eps
            output = decoder(z).float()
        if config.distortion == "bernoulli":
            distortion = nn.functional.binary_cross_entropy_with_logits(output, x, reduction="none").sum(1).mean()
        else:
            distortion = (output - x).square().sum(1).mean()
        partner = torch.randint(len(x), (len(x),))
        rate = 0.5 * ((mu[partner] - z).square() / logvar[partner].exp()).sum(1).mean()
        loss = distortion + config.beta * rate
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(5):
        step(data[batches[i]])
    start = time.perf_counter()
    for i in range(5, steps + 5):
        step(data[batches[i]])
    return (time.perf_counter() - start) / steps * 1000


def ipae_loop(preset: str, data: torch.Tensor, *, steps: int, precision: str, compile: bool = False) -> float:
    """ms per step of `ipae.train` (IPAE, N_j = 1), after a short warm-up run (which compiles)."""
    model = AutoEncoder.from_preset(preset, rate="ip")
    train(model, data, steps=5, precision=precision, progress=False, compile=compile)
    return train(model, data, steps=steps, precision=precision, progress=False, compile=compile).seconds / steps * 1000


def compile_seconds(preset: str, precision: str, *, cache: str | None) -> float:
    """Seconds of a 1-step compiled `ipae.train` in a new interpreter, minus those of the same step eager;
    `cache`: inductor's cache directory (a new, empty one measures compiling from scratch)."""
    environment = {"TORCHINDUCTOR_CACHE_DIR": cache} if cache else {}
    with ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_set_environment, initargs=(environment,)
    ) as pool:
        return pool.submit(_first_step_seconds, preset, precision).result()


def _set_environment(environment: dict[str, str]) -> None:
    os.environ.update(environment)


def _first_step_seconds(preset: str, precision: str) -> float:
    data = make_data(preset)
    seconds = {}
    for compile in (False, True):
        start = time.perf_counter()
        train(AutoEncoder.from_preset(preset, rate="ip"), data, steps=1, precision=precision, progress=False, compile=compile)
        seconds[compile] = time.perf_counter() - start
    return seconds[True] - seconds[False]


def make_data(preset: str) -> torch.Tensor:
    """The toy mixture, or uniform [0, 1] pixels of MNIST's training-subset shape (timing needs no digits)."""
    if preset == "toy":
        return gaussian_grid().x
    return torch.rand(18000, 784, generator=torch.Generator().manual_seed(0))


def plain_in_fresh_process(preset: str, *, steps: int, bf16: bool = False) -> float:
    """`plain_eager_loop` in a new interpreter, i.e. with glibc's default allocator settings."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_plain_on, preset, steps, bf16).result()


def _plain_on(preset: str, steps: int, bf16: bool) -> float:
    return plain_eager_loop(preset, make_data(preset), steps=steps, bf16=bf16)


def _ipae_single_thread(preset: str, steps: int, precision: str, compile: bool, _: int) -> float:
    torch.set_num_threads(1)
    return ipae_loop(preset, make_data(preset), steps=steps, precision=precision, compile=compile)


def sweep_table(preset: str, steps: int, precision: str) -> list[dict]:
    """Throughput of independent runs: one at a time with all threads, or one single-threaded process per
    core, each eager and compiled."""
    cores = os.cpu_count() or 1
    rows = []
    for compile in (False, True):
        how = " + compile" if compile else ""
        one_at_a_time = ipae_loop(preset, make_data(preset), steps=steps, precision=precision, compile=compile)
        runs = partial(_ipae_single_thread, preset, steps, precision, compile)
        side_by_side = map_runs(runs, range(cores), jobs=cores, progress=False)
        rows.append(
            {
                "runs": f"1 process x {torch.get_num_threads()} threads{how}",
                "ms/step of each run": one_at_a_time,
                "steps/s in all": 1000 / one_at_a_time,
            }
        )
        rows.append(
            {
                "runs": f"{cores} processes x 1 thread{how}",
                "ms/step of each run": statistics.median(side_by_side),
                "steps/s in all": sum(1000 / ms for ms in side_by_side),
            }
        )
    for row in rows:
        row["Figure-2 sweep (100 runs x 5000 steps), training alone, minutes"] = 100 * 5000 / row["steps/s in all"] / 60
    return rows


def compile_table(toy_times: dict[str, list[float]], mnist_times: dict[str, list[float]]) -> list[dict]:
    """Seconds to compile each model and precision, from an empty and from a full inductor cache, and
    the steps after which the compiled loop has made up for compiling."""
    rows = []
    for preset, times in (("toy", toy_times), ("mnist", mnist_times)):
        for precision in ("fp32", "bf16"):
            with tempfile.TemporaryDirectory() as cache:
                cold = compile_seconds(preset, precision, cache=cache)
                warm = compile_seconds(preset, precision, cache=cache)
            saved_ms = statistics.median(times[f"ipae {precision}"]) - statistics.median(times[f"ipae {precision} + compile"])
            rows.append(
                {
                    "model": preset,
                    "precision": precision,
                    "compile s, empty cache": cold,
                    "compile s, full cache": warm,
                    "ms saved per step": saved_ms,
                    "pays after (steps, empty cache)": round(cold * 1000 / saved_ms) if saved_ms > 0 else "never",
                    "pays after (steps, full cache)": round(warm * 1000 / saved_ms) if saved_ms > 0 else "never",
                }
            )
    return rows


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
    return times


def step_table(times: dict[str, list[float]], baseline: str) -> list[dict]:
    rows = []
    for name, values in times.items():
        ratios = [base / value for base, value in zip(times[baseline], values, strict=True)]
        rows.append(
            {
                "loop": name,
                "ms/step (median)": statistics.median(values),
                "min..max": f"{min(values):.2f}..{max(values):.2f}",
                f"speed-up vs {baseline}": statistics.median(ratios),
            }
        )
    return rows


def time_call(function: Callable[[], object], repeats: int) -> float:
    """Median ms of `function()` over `repeats` calls, after one warm-up call."""
    function()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        values.append((time.perf_counter() - start) * 1000)
    return statistics.median(values)


def rate_table(step_ms: dict[str, float], repeats: int) -> list[dict]:
    """Forward + backward of each rate term alone on an MNIST-sized batch (B = 512, D = 8), and as a
    percentage of each MNIST step in `step_ms` (loop name -> ms)."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(512, 8, generator=generator, requires_grad=True)
    logvar = (0.1 * torch.randn(512, 8, generator=generator)).requires_grad_()
    eps = torch.randn(512, 8, generator=generator)
    terms = {
        "ip, N_j = 1": lambda: information_potential(mu, logvar, eps, draw_partners(512, 1, generator)),
        "ip, N_j = 8": lambda: information_potential(mu, logvar, eps, draw_partners(512, 8, generator)),
        "ip, all 512 pairs": lambda: information_potential(mu, logvar, eps),
        "vae (KL to N(0, I))": lambda: gaussian_kl(mu, logvar),
    }
    rows = []
    for name, term in terms.items():
        ms = time_call(lambda term=term: term().mean().backward(), repeats * 20)
        rows.append(
            {"rate term": name, "ms (fwd + bwd)": ms} | {f"% of an {loop} MNIST step": 100 * ms / step for loop, step in step_ms.items()}
        )
    return rows


def all_pairs_at_scale(batch: int, dim: int) -> dict:
    """The all-pairs rate at a batch whose (B, B, D) float32 tensor would need batch^2 * dim * 4 bytes."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(batch, dim, generator=generator, requires_grad=True)
    logvar = torch.zeros(batch, dim, requires_grad=True)
    eps = torch.randn(batch, dim, generator=generator)
    ms = time_call(lambda: information_potential(mu, logvar, eps).mean().backward(), 3)
    return {"batch": batch, "dim": dim, "ms (fwd + bwd)": ms, "a (B, B, D) tensor would need (GiB)": batch * batch * dim * 4 / 2**30}


def encode_table(preset: str, data: torch.Tensor) -> list[dict]:
    model = AutoEncoder.from_preset(preset).eval()
    rows = []
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):

        def encode(dtype: torch.dtype | None = dtype) -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                for start in range(0, len(data), 4096):
                    model.encode(data[start : start + 4096])

        ms = time_call(encode, 3)
        rows.append({"model": preset, "precision": precision, "samples/s": len(data) / ms * 1000})
    return rows


def matmul_floor(preset: str, repeats: int) -> list[dict]:
    """The step's matmul work (forward, input and weight gradients; none for the data's own gradient)
    at the matmul rate this machine reaches on the model's largest layer, in fp32 and bf16."""
    config = AutoEncoder.from_preset(preset).config
    layers = [(config.n_inputs, config.hidden[0]), (config.hidden[0], 2 * config.n_latent)]
    layers += [(config.n_latent, config.hidden[0]), (config.hidden[0], config.n_inputs)]
    batch = 512
    flops = sum(2 * batch * n_in * n_out * (2 if index == 0 else 3) for index, (n_in, n_out) in enumerate(layers))
    n_in, n_out = max(layers, key=lambda layer: layer[0] * layer[1])
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.rand(batch, n_in, dtype=dtype), torch.rand(n_in, n_out, dtype=dtype)
        ms = time_call(lambda a=a, b=b: a @ b, repeats * 20)
        rate = 2 * batch * n_in * n_out / ms / 1e6  # GFLOP/s
        rows.append(
            {
                "model": preset,
                "dtype": name,
                "GFLOP per step": flops / 1e9,
                "GFLOP/s (largest layer)": rate,
                "floor ms/step": flops / rate / 1e6,
            }
        )
    return rows


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{name}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every loop")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = parser.parse_args()

    toy, mnist_like = make_data("toy"), make_data("mnist")
    sections = [f"Machine: {machine()}.", f"Command: `python benchmarks/training.py --steps {args.steps} --repeats {args.repeats}`."]

    def report(title: str, rows: list[dict], note: str = "") -> None:
        text = f"## {title}\n\n{note}{markdown_table(rows, list(rows[0]))}"
        print(text, flush=True)
        sections.append(text)

    print(sections[0], flush=True)
    baseline_note = (
        "`plain eager` is the same model written the usual way (nn.Sequential, torch.optim.Adam) in this process; `plain eager, "
        "fresh process` runs it in a new interpreter. They differ because ipae's training raises glibc's mmap/trim thresholds "
        "(`ipae.train.keep_freed_memory`), which is process-wide and so speeds up the in-process baseline too once ipae has run.\n\n"
    )
    steps = args.steps
    toy_times = interleaved(
        {
            "plain eager fp32, fresh process": lambda: plain_in_fresh_process("toy", steps=steps),
            "plain eager fp32": lambda: plain_eager_loop("toy", toy, steps=steps),
            "ipae fp32": lambda: ipae_loop("toy", toy, steps=steps, precision="fp32"),
            "ipae bf16": lambda: ipae_loop("toy", toy, steps=steps, precision="bf16"),
            "ipae fp32 + compile": lambda: ipae_loop("toy", toy, steps=steps, precision="fp32", compile=True),
            "ipae bf16 + compile": lambda: ipae_loop("toy", toy, steps=steps, precision="bf16", compile=True),
        },
        args.repeats,
    )
    title = "Toy model (2-2048-16/16-2048-2, relu, batch 512): one training step"
    report(title, step_table(toy_times, "plain eager fp32, fresh process"), baseline_note)
    mnist_times = interleaved(
        {
            "plain eager fp32, fresh process": lambda: plain_in_fresh_process("mnist", steps=steps),
            "plain eager fp32": lambda: plain_eager_loop("mnist", mnist_like, steps=steps),
            "plain eager bf16 autocast": lambda: plain_eager_loop("mnist", mnist_like, steps=steps, bf16=True),
            "ipae fp32": lambda: ipae_loop("mnist", mnist_like, steps=steps, precision="fp32"),
            "ipae bf16": lambda: ipae_loop("mnist", mnist_like, steps=steps, precision="bf16"),
            "ipae fp32 + compile": lambda: ipae_loop("mnist", mnist_like, steps=steps, precision="fp32", compile=True),
            "ipae bf16 + compile": lambda: ipae_loop("mnist", mnist_like, steps=steps, precision="bf16", compile=True),
        },
        args.repeats,
    )
    title = "MNIST model (784-1024-8/8-1024-784, sigmoid, Bernoulli, batch 512): one training step"
    report(title, step_table(mnist_times, "plain eager fp32, fresh process"), baseline_note)
    report("Compiling (`compile=True`): its cost, and the run length from which it pays", compile_table(toy_times, mnist_times))
    report(
        "Matmul floor: the step's matmuls alone at this machine's matmul rate",
        matmul_floor("toy", args.repeats) + matmul_floor("mnist", args.repeats),
    )
    loops = ("ipae fp32", "ipae bf16 + compile")
    report("Rate terms alone (B = 512, D = 8)", rate_table({loop: statistics.median(mnist_times[loop]) for loop in loops}, args.repeats))
    report("All-pairs rate at scale (O(B * D) memory)", [all_pairs_at_scale(100_000, 16)])
    report("Encoding throughput (no grad, batches of 4096)", encode_table("toy", toy) + encode_table("mnist", mnist_like))
    report(f"Independent runs side by side (MNIST model, bf16, {steps} steps each)", sweep_table("mnist", steps, "bf16"))

    if args.out:
        text = (
            "# Performance\n\nGenerated by `benchmarks/training.py`; every number below was measured by it.\n\n"
            + "\n".join(sections)
            + "\n"
        )
        write_atomic(args.out, lambda tmp: tmp.write_text(text))
        print(f"-> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
