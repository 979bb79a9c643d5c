"""Does torch.compile pay for ipae's training step on this machine?

    python benchmarks/compile.py [--steps 200]

For the toy and MNIST models, in fp32 and bf16, it times one training step (ipae's model and loss,
fused Adam) run eagerly and compiled as a whole with torch.compile, and prints the time to compile
(the first 50 steps) and the run length from which compiling would pay off.
"""

from __future__ import annotations

import argparse
import time

import torch

from ipae import AutoEncoder
from ipae.results import markdown_table
from ipae.train import keep_freed_memory

WARM_UP = 50  # steps before timing; they include the compilation


def step_time(preset: str, precision: str, *, compiled: bool, steps: int) -> tuple[float, float]:
    """(ms per step after warm-up, seconds of the warm-up) for one model and precision."""
    n_inputs = 784 if preset == "mnist" else 2
    generator = torch.Generator().manual_seed(0)
    data = torch.rand(18000, n_inputs, generator=generator) if preset == "mnist" else torch.randn(5000, 2, generator=generator)
    indices = torch.randint(0, len(data), (WARM_UP + steps, 512), generator=generator)
    model = AutoEncoder.from_preset(preset)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            terms = model.loss(batch, generator=generator, n_pairs=1)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        return terms.loss.detach()

    run = torch.compile(step) if compiled else step
    start = time.perf_counter()
    for i in range(WARM_UP):
        run(data[indices[i]])
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(WARM_UP, WARM_UP + steps):
        run(data[indices[i]])
    return (time.perf_counter() - start) / steps * 1e3, warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed steps after the warm-up")
    args = parser.parse_args()
    keep_freed_memory()
    rows = []
    for preset in ("toy", "mnist"):
        for precision in ("fp32", "bf16"):
            eager, eager_warm_up = step_time(preset, precision, compiled=False, steps=args.steps)
            compiled, compiled_warm_up = step_time(preset, precision, compiled=True, steps=args.steps)
            saved = (eager - compiled) / 1e3  # seconds per step
            cost = compiled_warm_up - eager_warm_up
            rows.append(
                {
                    "model": preset,
                    "precision": precision,
                    "eager ms/step": eager,
                    "compiled ms/step": compiled,
                    "speed-up": eager / compiled,
                    "compile s": cost,
                    "steps to break even": cost / saved if saved > 0 else None,
                }
            )
            print(markdown_table(rows[-1:], list(rows[0])), end="", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
