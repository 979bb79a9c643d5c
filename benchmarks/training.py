"""Training speed of ipae: against a baseline revision of ipae, and against a plain eager PyTorch loop.

    python benchmarks/training.py --baseline 9297494                  # every table
    python benchmarks/training.py --baseline 9297494 --baseline-only  # the baseline comparison alone
    python benchmarks/training.py --baseline 9297494 --out docs/performance.md
    python benchmarks/training.py --baseline 9297494 --steps 20 --repeats 1   # a quick check that it runs
    python benchmarks/training.py --baseline 9297494 --baseline-only --model toy --precision fp32 --repeats 15

`--baseline REV` checks REV out into a temporary `git worktree` (removed at the end). For the toy and
MNIST presets, the baseline's code and this checkout's code each train the same model (IPAE with
N_j = 1, batch 512, the same seed, a 5-step warm-up then `--steps` timed steps) in a fresh
interpreter whose PYTHONPATH is that code's src/, alternately (baseline, current, baseline, ...)
`--repeats` times. The table gives the median ms/step of each, its spread (min..max), and their ratio
current / baseline with PASS where that is <= 1.03. A fresh process can land at one of two speeds at
either revision (the toy model: about 8 or 12 ms/step on a 2-core AMD EPYC), so one pair's ratio
swings from 0.6 to 1.6 (its range is printed) and the median of those per-pair ratios depends on how
the slow processes happen to pair up; the ratio of the two medians does not. Use 15 repeats or more.

The other tables, all measured in this process or in processes it starts, interleaved `--repeats`
times where they compare loops: ms per training step of a plain eager loop written here (nn.Linear,
default Adam) against `ipae.train`, eager and with `compile=True`; the cost of compiling (inductor's
on-disk cache empty and full); the step's matmuls at this machine's matmul rate; every rate term
alone (as a fraction of an MNIST step); the all-pairs rate at a batch whose (B, B, D) tensor could not
exist; encoding throughput; and independent runs side by side as a sweep runs them.

Training in bf16 is timed only where the CPU computes bfloat16 natively (`ipae.runtime.native_bf16`):
elsewhere its matmuls are emulated, several times slower than fp32, and no one should train that way.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ipae import AutoEncoder, TrainConfig, reparameterise, train
from ipae._files import write_atomic
from ipae.data import gaussian_grid
from ipae.experiments.parallel import map_runs
from ipae.models import PRESETS
from ipae.rates import Bhattacharyya, InformationPotential, Jensen, MonteCarlo, PairwiseKL, PriorKL, spec
from ipae.reporting import markdown_table
from ipae.runtime import keep_freed_memory, native_bf16

REPOSITORY = Path(__file__).resolve().parents[1]
TIMED_PRESETS = {"toy": "Toy model", "mnist": "MNIST model"}  # the paper's two MLPs
BATCH_SIZE = 512  # section 4.1
WARMUP_STEPS = 5  # untimed steps first: the first steps pay for allocations and one-off dispatch
TOLERANCE = 1.03  # the acceptance line of issue 21: current within 3% of the baseline
ACTIVATION = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}
NATIVE_BF16 = native_bf16(torch.device("cpu"))
CAPABILITY = torch.backends.cpu.get_cpu_capability()
BF16 = "native on this CPU" if NATIVE_BF16 else f"emulated on this CPU: capability {CAPABILITY}, no AVX512-BF16 or AMX"
PRECISIONS = ("fp32", "bf16") if NATIVE_BF16 else ("fp32",)
BF16_SKIPPED = (
    ""
    if NATIVE_BF16
    else (
        f"bf16 training is not timed: this CPU (torch capability {CAPABILITY}) has no AVX512-BF16 or AMX, so "
        "`ipae.runtime.native_bf16` is False and bf16 matmuls are emulated, several times slower than fp32.\n\n"
    )
)


def precision_label(precision: str) -> str:
    """A precision as the tables print it: every bf16 number carries this CPU's bf16 capability."""
    return f"bf16 ({BF16})" if precision == "bf16" else precision


# The baseline comparison: the same training in a fresh interpreter, once with the baseline's code and
# once with this checkout's, told apart by PYTHONPATH alone. The child knows both APIs: train(model,
# data, TrainConfig) since issue 12, train(model, data, steps=..., n_pairs=...) before it.
_STEP_TIMER = """
import json, sys
from pathlib import Path
import torch
job = json.loads(sys.argv[1])
import ipae
from ipae import AutoEncoder, train
where = Path(ipae.__file__).resolve()
if Path(job["src"]).resolve() not in where.parents:
    sys.exit(f"imported ipae from {where}, not from {job['src']}")
data = torch.load(job["data"])
if hasattr(ipae, "TrainConfig"):
    # train leaves the allocator alone; the ipae command and the experiment workers opt in first
    from ipae.rates import InformationPotential
    try:
        from ipae.runtime import keep_freed_memory
    except ImportError:  # before issue 21 it lived in ipae.train
        from ipae.train import keep_freed_memory
    keep_freed_memory()
    model = AutoEncoder.from_preset(job["preset"], seed=job["seed"], rate=InformationPotential(n_partners=1))
    def run(steps):
        config = ipae.TrainConfig(steps=steps, batch_size=job["batch_size"], seed=job["seed"], precision=job["precision"], progress=False)
        return train(model, data, config).seconds
    api = "TrainConfig; keep_freed_memory() called first"
else:
    # before issue 12 train called keep_freed_memory() itself
    model = AutoEncoder.from_preset(job["preset"], seed=job["seed"], rate="ip")
    def run(steps):
        return train(model, data, steps=steps, batch_size=job["batch_size"], n_pairs=1, seed=job["seed"],
                     precision=job["precision"], progress=False).seconds
    api = "train(..., n_pairs=1), which calls keep_freed_memory() itself"
run(job["warmup"])
seconds = run(job["steps"])
print(json.dumps({"ms": 1000 * seconds / job["steps"], "api": api, "threads": torch.get_num_threads(), "torch": torch.__version__}))
"""


def _git(*arguments: str) -> str:
    done = subprocess.run(["git", "-C", str(REPOSITORY), *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(arguments)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _time_in_fresh_process(src: Path, job: dict, scratch: Path) -> dict:
    """ms/step of `job` in a new interpreter that imports ipae from `src` (and from nowhere else)."""
    environment = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", _STEP_TIMER, json.dumps({**job, "src": str(src)})],
        env=environment,
        cwd=scratch,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"timing {job} with the code in {src} failed:\n{done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_comparison(revision: str, steps: int, repeats: int, models: list[str], precisions: list[str]) -> tuple[list[dict], str]:
    """Rows of ms/step, baseline revision against this checkout, and a note saying what ran."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    head = _git("rev-parse", "--short", "HEAD")
    current = f"this checkout (HEAD {head}{' + uncommitted changes in src/' if _git('status', '--porcelain', '--', 'src') else ''})"
    scratch = Path(tempfile.mkdtemp(prefix="ipae-baseline-"))
    tree = scratch / "baseline"
    _git("worktree", "add", "--detach", str(tree), commit)
    sides = {"baseline": tree / "src", "current": REPOSITORY / "src"}
    times: dict[tuple[str, str, str], list[float]] = {}
    apis: dict[str, str] = {}
    try:
        for preset in models:
            torch.save(make_data(preset), scratch / f"{preset}.pt")  # both sides train on these very tensors
        for preset in models:
            for precision in precisions:
                job = {"preset": preset, "precision": precision, "steps": steps, "warmup": WARMUP_STEPS, "seed": 0}
                job |= {"batch_size": BATCH_SIZE, "data": str(scratch / f"{preset}.pt")}
                for repeat in range(repeats):
                    for side, src in sides.items():
                        measured = _time_in_fresh_process(src, job, scratch)
                        times.setdefault((preset, precision, side), []).append(measured["ms"])
                        apis[side] = f"{measured['api']}; torch {measured['torch']}, {measured['threads']} threads"
                        print(f"  {preset} {precision} repeat {repeat + 1}/{repeats} {side}: {measured['ms']:.3f} ms/step", file=sys.stderr)
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for preset in models:
        for precision in precisions:
            base, new = times[(preset, precision, "baseline")], times[(preset, precision, "current")]
            ratios = [now / then for then, now in zip(base, new, strict=True)]
            ratio = statistics.median(new) / statistics.median(base)
            rows.append(
                {
                    "model": preset,
                    "precision": precision_label(precision),
                    f"baseline {commit[:7]} ms/step": statistics.median(base),
                    "baseline min..max": f"{min(base):.2f}..{max(base):.2f}",
                    "current ms/step": statistics.median(new),
                    "current min..max": f"{min(new):.2f}..{max(new):.2f}",
                    "current / baseline (ratio of medians)": ratio,
                    "per-pair ratios min..max": f"{min(ratios):.3f}..{max(ratios):.3f}",
                    f"<= {TOLERANCE}": "PASS" if ratio <= TOLERANCE else "FAIL",
                }
            )
    note = (
        f"Baseline: {revision} = {commit}, checked out into a temporary git worktree. Current: {current}.\n"
        f"Each measurement is a fresh interpreter (`{Path(sys.executable).name} -c`, PYTHONPATH = that code's src/), "
        f"in the order baseline, current, baseline, current, ... ({repeats} of each per row). Both sides do the same: "
        f"`AutoEncoder.from_preset(model, seed=0)` with the IPAE rate and N_j = 1, batch {BATCH_SIZE}, seed 0, the same "
        f"data tensor; {WARMUP_STEPS} warm-up steps, then {steps} timed steps (ms/step = `TrainResult.seconds` / steps). "
        "The current side calls `ipae.runtime.keep_freed_memory()` first, as the `ipae` command and the experiment "
        "workers do (its `train` never changes the allocator); the baseline's `train` makes the same glibc "
        "`mallopt` calls itself.\n"
        f"Baseline ran: {apis['baseline']}. Current ran: {apis['current']}.\n\n"
    )
    return rows, note + BF16_SKIPPED


# Loops timed in this process


def make_data(preset: str) -> torch.Tensor:
    """The toy mixture, or uniform [0, 1] pixels of MNIST's training-subset shape (timing needs no digits)."""
    if preset == "toy":
        return gaussian_grid().x
    return torch.rand(18000, 784, generator=torch.Generator().manual_seed(0))


def describe(preset: str) -> str:
    """e.g. 'Toy model (2-2048-16/16-2048-2, relu, mse, batch 512)'."""
    architecture, distortion = PRESETS[preset].architecture, PRESETS[preset].distortion
    n_inputs, hidden, latent = math.prod(architecture.input_shape), "-".join(map(str, architecture.hidden)), architecture.n_latent
    shape = f"{n_inputs}-{hidden}-{latent}/{latent}-{hidden}-{n_inputs}"
    return f"{TIMED_PRESETS[preset]} ({shape}, {architecture.activation}, {distortion}, batch {BATCH_SIZE})"


def plain_eager_loop(preset: str, data: torch.Tensor, *, steps: int, bf16: bool = False, seed: int = 0) -> float:
    """ms per step of the model written the usual way: nn.Sequential, torch.optim.Adam, eq. 10 with N_j = 1."""
    architecture, distortion, beta = PRESETS[preset].architecture, PRESETS[preset].distortion, PRESETS[preset].beta
    n_inputs, width, latent = math.prod(architecture.input_shape), architecture.hidden[0], architecture.n_latent
    act = ACTIVATION[architecture.activation]
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(n_inputs, width), act(), nn.Linear(width, 2 * latent))
    decoder = nn.Sequential(nn.Linear(latent, width), act(), nn.Linear(width, n_inputs))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    batches = torch.randint(len(data), (steps + WARMUP_STEPS, BATCH_SIZE))

    def step(x: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mu, logvar = encoder(x).float().chunk(2, dim=1)  # (B, D) each
            eps = torch.randn_like(mu)
            z = mu + (0.5 * logvar).exp() * eps
            output = decoder(z).float()  # (B, n_inputs)
        if distortion == "bernoulli":
            loss_d = nn.functional.binary_cross_entropy_with_logits(output, x, reduction="none").sum(1).mean()
        else:
            loss_d = (output - x).square().sum(1).mean()
        partner = torch.randint(len(x), (len(x),))
        rate = 0.5 * ((mu[partner] - z).square() / logvar[partner].exp()).sum(1).mean()
        loss = loss_d + beta * rate
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(WARMUP_STEPS):
        step(data[batches[i]])
    start = time.perf_counter()
    for i in range(WARMUP_STEPS, steps + WARMUP_STEPS):
        step(data[batches[i]])
    return (time.perf_counter() - start) / steps * 1000


def ipae_loop(preset: str, data: torch.Tensor, *, steps: int, precision: str, compile: bool = False) -> float:
    """ms per step of `ipae.train` (IPAE, N_j = 1), after a short warm-up run (which compiles)."""
    model = AutoEncoder.from_preset(preset, rate=InformationPotential(n_partners=1))
    config = TrainConfig(steps=WARMUP_STEPS, batch_size=BATCH_SIZE, precision=precision, compile=compile, progress=False)
    train(model, data, config)
    config = TrainConfig(steps=steps, batch_size=BATCH_SIZE, precision=precision, compile=compile, progress=False)
    return train(model, data, config).seconds / steps * 1000


def in_fresh_process(function: Callable, *arguments) -> float:
    """function(*arguments) in a new interpreter, i.e. with glibc's default allocator settings."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *arguments).result()


def _plain_on(preset: str, steps: int) -> float:
    return plain_eager_loop(preset, make_data(preset), steps=steps)


def _ipae_on(preset: str, steps: int) -> float:
    return ipae_loop(preset, make_data(preset), steps=steps, precision="fp32")


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
    return times


def step_variants(preset: str, data: torch.Tensor, steps: int) -> dict[str, Callable[[], float]]:
    variants = {
        "plain eager fp32, fresh process (glibc defaults)": lambda: in_fresh_process(_plain_on, preset, steps),
        "plain eager fp32": lambda: plain_eager_loop(preset, data, steps=steps),
    }
    if NATIVE_BF16 and preset == "mnist":
        variants[f"plain eager bf16 autocast ({BF16})"] = lambda: plain_eager_loop(preset, data, steps=steps, bf16=True)
    variants["ipae fp32, fresh process (glibc defaults)"] = lambda: in_fresh_process(_ipae_on, preset, steps)
    for compile in (False, True):
        for precision in PRECISIONS:
            name = f"ipae {precision_label(precision)}{' + compile' if compile else ''}"
            variants[name] = partial(ipae_loop, preset, data, steps=steps, precision=precision, compile=compile)
    return variants


def step_table(times: dict[str, list[float]], baseline: str) -> list[dict]:
    rows = []
    for name, values in times.items():
        ratios = [base / value for base, value in zip(times[baseline], values, strict=True)]
        rows.append(
            {
                "loop": name,
                "ms/step (median)": statistics.median(values),
                "min..max": f"{min(values):.2f}..{max(values):.2f}",
                "speed-up vs the first row": statistics.median(ratios),
            }
        )
    return rows


# Compiling


def compile_seconds(preset: str, precision: str, *, cache: str) -> float:
    """Seconds of a 1-step compiled `ipae.train` in a new interpreter, minus those of the same step
    eager; `cache`: inductor's cache directory (a new, empty one measures compiling from scratch)."""
    with ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_set_environment, initargs=({"TORCHINDUCTOR_CACHE_DIR": cache},)
    ) as pool:
        return pool.submit(_first_step_seconds, preset, precision).result()


def _set_environment(environment: dict[str, str]) -> None:
    os.environ.update(environment)


def _first_step_seconds(preset: str, precision: str) -> float:
    data = make_data(preset)
    seconds = {}
    for compile in (False, True):
        config = TrainConfig(steps=1, batch_size=BATCH_SIZE, precision=precision, compile=compile, progress=False)
        start = time.perf_counter()
        train(AutoEncoder.from_preset(preset, rate=InformationPotential(n_partners=1)), data, config)
        seconds[compile] = time.perf_counter() - start
    return seconds[True] - seconds[False]


def compile_table(step_times: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Seconds to compile each model and precision, from an empty and from a full inductor cache, and
    the steps after which the compiled loop has made up for compiling."""
    rows = []
    for preset, times in step_times.items():
        for precision in PRECISIONS:
            with tempfile.TemporaryDirectory() as cache:
                cold = compile_seconds(preset, precision, cache=cache)
                warm = compile_seconds(preset, precision, cache=cache)
            eager, compiled = f"ipae {precision_label(precision)}", f"ipae {precision_label(precision)} + compile"
            saved_ms = statistics.median(times[eager]) - statistics.median(times[compiled])
            rows.append(
                {
                    "model": preset,
                    "precision": precision_label(precision),
                    "compile s, empty cache": cold,
                    "compile s, full cache": warm,
                    "ms saved per step": saved_ms,
                    "pays after (steps, empty cache)": round(cold * 1000 / saved_ms) if saved_ms > 0 else "never",
                    "pays after (steps, full cache)": round(warm * 1000 / saved_ms) if saved_ms > 0 else "never",
                }
            )
    return rows


# Parts of a step


def time_call(function: Callable[[], object], calls: int, budget_s: float = 3.0) -> float:
    """Median ms of `function()` over `calls` calls (fewer, but at least 3, once `budget_s` is spent),
    after one warm-up call."""
    function()
    values = []
    deadline = time.perf_counter() + budget_s
    while len(values) < calls and (len(values) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        function()
        values.append((time.perf_counter() - start) * 1000)
    return statistics.median(values)


def rate_table(step_ms: dict[str, float], repeats: int) -> list[dict]:
    """Forward + backward of each rate term alone (the reparameterisation included) on an MNIST-sized
    batch (B = 512, D = 8), and as a percentage of each MNIST step in `step_ms` (loop name -> ms)."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(512, 8, generator=generator, requires_grad=True)
    logvar = (0.1 * torch.randn(512, 8, generator=generator)).requires_grad_()
    eps = torch.randn(512, 8, generator=generator)
    rates = [InformationPotential(1), InformationPotential(8), InformationPotential(None), PriorKL()]
    rates += [Jensen(), PairwiseKL(), Bhattacharyya(), MonteCarlo(1)]
    rows = []
    for rate in rates:
        ms = time_call(lambda rate=rate: rate(mu, logvar, reparameterise(mu, logvar, eps), generator=generator).backward(), repeats * 20)
        name = ", ".join(f"{key}={value}" for key, value in spec(rate).items() if key != "name")
        rows.append(
            {"rate": rate.name, "options": name, "ms (fwd + bwd)": ms}
            | {f"% of an {loop} MNIST step": 100 * ms / step for loop, step in step_ms.items()}
        )
    return rows


def all_pairs_at_scale(batch: int, dim: int) -> dict:
    """The all-pairs IPAE rate at a batch whose (B, B, D) float32 tensor would need batch^2 * dim * 4 bytes."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(batch, dim, generator=generator, requires_grad=True)
    logvar = torch.zeros(batch, dim, requires_grad=True)
    eps = torch.randn(batch, dim, generator=generator)
    rate = InformationPotential(n_partners=None)
    ms = time_call(lambda: rate(mu, logvar, reparameterise(mu, logvar, eps)).backward(), 3)
    return {"batch": batch, "dim": dim, "ms (fwd + bwd)": ms, "a (B, B, D) tensor would need (GiB)": batch * batch * dim * 4 / 2**30}


def encode_table(preset: str, data: torch.Tensor) -> list[dict]:
    model = AutoEncoder.from_preset(preset).eval()
    rows = []
    for precision in ("fp32", "bf16"):

        def encode(bf16: bool = precision == "bf16") -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for start in range(0, len(data), 4096):
                    model.encode(data[start : start + 4096])

        ms = time_call(encode, 3)
        rows.append({"model": preset, "precision": precision_label(precision), "samples/s": len(data) / ms * 1000})
    return rows


def matmul_floor(preset: str, repeats: int) -> list[dict]:
    """The step's matmul work (forward, input and weight gradients; none for the data's own gradient)
    at the matmul rate this machine reaches on the model's largest layer, in fp32 and bf16."""
    architecture = PRESETS[preset].architecture
    n_inputs, width, latent = math.prod(architecture.input_shape), architecture.hidden[0], architecture.n_latent
    layers = [(n_inputs, width), (width, 2 * latent), (latent, width), (width, n_inputs)]
    flops = sum(2 * BATCH_SIZE * n_in * n_out * (2 if index == 0 else 3) for index, (n_in, n_out) in enumerate(layers))
    n_in, n_out = max(layers, key=lambda layer: layer[0] * layer[1])
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.rand(BATCH_SIZE, n_in, dtype=dtype), torch.rand(n_in, n_out, dtype=dtype)
        ms = time_call(lambda a=a, b=b: a @ b, repeats * 20)
        rate = 2 * BATCH_SIZE * n_in * n_out / ms / 1e6  # GFLOP/s
        rows.append(
            {
                "model": preset,
                "dtype": precision_label(name),
                "GFLOP per step": flops / 1e9,
                "GFLOP/s (largest layer)": rate,
                "floor ms/step": flops / rate / 1e6,
            }
        )
    return rows


# Sweeps


def _ipae_single_thread(preset: str, steps: int, precision: str, compile: bool, _: int) -> float:
    torch.set_num_threads(1)
    return ipae_loop(preset, make_data(preset), steps=steps, precision=precision, compile=compile)


def sweep_table(preset: str, steps: int, precision: str) -> list[dict]:
    """Throughput of independent runs: one at a time with all threads, or one single-threaded process per
    core (`ipae.experiments.parallel.map_runs`, whose workers call keep_freed_memory), eager and compiled."""
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


def machine(command: str) -> str:
    """The line every table carries: what it was measured on, and how."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    native = "yes" if NATIVE_BF16 else "no (no AVX512-BF16 or AMX)"
    return (
        f"CPU: {name}, {os.cpu_count()} cores; torch CPU capability {CAPABILITY}; native bf16: {native}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; Python {platform.python_version()}. Command: `{command}`."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REV", help="also time this git revision's training against this checkout's (default: none)")
    parser.add_argument("--baseline-only", action="store_true", help="only the baseline comparison (needs --baseline)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement (default: 200)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every measurement (default: 5)")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here, atomically")
    parser.add_argument("--model", action="append", choices=list(TIMED_PRESETS), help="the baseline comparison's models (default: all)")
    parser.add_argument("--precision", action="append", choices=PRECISIONS, help="the baseline comparison's precisions (default: all)")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    if args.baseline_only and not args.baseline:
        parser.error("--baseline-only needs --baseline REV")

    command = shlex.join(["python", *sys.argv])
    header = machine(command)
    sections: list[str] = []

    def report(title: str, rows: list[dict], note: str = "") -> None:
        text = f"## {title}\n\n{header}\n\n{note}{markdown_table(rows, list(rows[0]))}"
        print(text, flush=True)
        sections.append(text)

    steps = args.steps
    if args.baseline:
        models, precisions = args.model or list(TIMED_PRESETS), args.precision or list(PRECISIONS)
        rows, note = baseline_comparison(args.baseline, steps, args.repeats, models, precisions)
        report(f"Against the baseline {args.baseline}: ms per training step, same run, same machine", rows, note)
    else:
        print("No --baseline REV: the comparison against a baseline revision is skipped.\n", flush=True)

    if not args.baseline_only:
        # as the ipae command does: every in-process row below runs with glibc keeping freed memory
        keep_freed_memory()
        loop_note = (
            "`plain eager` is the same model written the usual way (nn.Sequential, torch.optim.Adam). This process "
            "called `ipae.runtime.keep_freed_memory()` first, as the `ipae` command does, so its rows run with glibc "
            "keeping freed blocks; the `fresh process (glibc defaults)` rows run in a new interpreter that does not: "
            "the `ipae fp32` one is what calling `ipae.train` from a script gives without that opt-in.\n\n"
        ) + BF16_SKIPPED
        step_times = {}
        for preset in TIMED_PRESETS:
            data = make_data(preset)
            step_times[preset] = times = interleaved(step_variants(preset, data, steps), args.repeats)
            report(f"{describe(preset)}: one training step", step_table(times, next(iter(times))), loop_note)
        report("Compiling (`compile=True`): its cost, and the run length from which it pays", compile_table(step_times))
        report(
            "Matmul floor: the step's matmuls alone at this machine's matmul rate",
            matmul_floor("toy", args.repeats) + matmul_floor("mnist", args.repeats),
        )
        in_process = [name for name in step_times["mnist"] if name.startswith("ipae") and "fresh process" not in name]
        fastest = min(in_process, key=lambda n: statistics.median(step_times["mnist"][n]))
        loops = dict.fromkeys(("ipae fp32", fastest))
        report(
            "Rate terms alone (B = 512, D = 8; the reparameterisation included)",
            rate_table({loop: statistics.median(step_times["mnist"][loop]) for loop in loops}, args.repeats),
        )
        report("All-pairs IPAE rate at scale (O(B * D) memory)", [all_pairs_at_scale(100_000, 16)])
        report(
            "Encoding throughput (no grad, batches of 4096)",
            encode_table("toy", make_data("toy")) + encode_table("mnist", make_data("mnist")),
        )
        precision = "bf16" if NATIVE_BF16 else "fp32"
        report(
            f"Independent runs side by side (MNIST model, {precision_label(precision)}, {steps} steps each)",
            sweep_table("mnist", steps, precision),
        )

    if args.out:
        text = "# Performance\n\nGenerated by `benchmarks/training.py`; every number below was measured by it.\n\n" + "\n".join(sections)
        write_atomic(args.out, lambda tmp: tmp.write_text(text))
        print(f"-> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
